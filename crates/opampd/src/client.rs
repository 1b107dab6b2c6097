//! `opampd agents list|show` and `opampd stats`: the fleet API of a running server's admin
//! listener, for terminals (tables) and scripts (`--json`). A plain HTTP/1.1 client (the admin
//! listener speaks nothing else), one request at a time, every answer bounded in size and time.
//! It reads no store and shares no state with the server: what it shows is what the API says.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use opamp_store::Secret;
use serde_json::Value;
use tokio::net::TcpStream;
use url::Url;

use crate::config::Cli;

/// opampd's command line: the server's flags (no command, or `serve`), or a command that asks
/// a running server's admin API.
#[derive(Debug, Parser)]
#[command(name = "opampd", version, about = "OpAMP server", args_conflicts_with_subcommands = true)]
pub struct CommandLine {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: Cli,
}

/// The command line of a client command alone: parsed instead of [`CommandLine`] when the first
/// argument names one ([`is_client_command`]), so the server's flags, and the `OPAMPD_*`
/// variables that set them, are not read (a server's environment may hold values only the
/// server takes).
#[derive(Debug, Parser)]
#[command(name = "opampd", version)]
pub struct ClientLine {
    #[command(subcommand)]
    pub command: ClientCommand,
}

/// Whether `first`, the first argument, names a client command.
pub fn is_client_command(first: Option<&std::ffi::OsStr>) -> bool {
    use clap::CommandFactory;
    let Some(first) = first.and_then(|f| f.to_str()) else { return false };
    ClientLine::command().get_subcommands().any(|c| c.get_name() == first)
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (what `opampd` without a command does).
    Serve(Box<Cli>),
    #[command(flatten)]
    Client(ClientCommand),
}

/// The commands that talk to a running server.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// The agents a server knows: list them (filtered, paged) or show one.
    Agents {
        #[command(subcommand)]
        command: AgentsCommand,
    },
    /// Fleet counts: by status, service, version, remote-config state, and the ReportFullState
    /// requests the server made since it started.
    Stats {
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// A table of agents (uid order); `--json` prints one JSON object per line.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Agents per page (the server caps it at 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Start after this cursor (the `next_cursor` a previous page printed).
        #[arg(long)]
        cursor: Option<String>,
        /// Follow the pages to the end instead of printing one.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// One agent: description, health, remote config, effective config.
    Show {
        /// The agent's instance uid.
        uid: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// The filters of the fleet API.
#[derive(Debug, Clone, Default, Args)]
pub struct FilterArgs {
    /// online, degraded, error, disconnected or offline (silent for --offline-after).
    #[arg(long)]
    pub status: Option<String>,
    /// The agents' `service.name`.
    #[arg(long)]
    pub service_name: Option<String>,
    /// The agents' `service.version`.
    #[arg(long = "version")]
    pub service_version: Option<String>,
    /// Text found in the host name or the uid (any case).
    #[arg(long)]
    pub q: Option<String>,
}

/// Where the admin API is and how to call it.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// The admin listener's URL (plain HTTP).
    #[arg(long, env = "OPAMPD_ADMIN_URL", default_value = "http://127.0.0.1:4321")]
    pub admin_url: String,
    /// The server's admin token (prefer the environment variable or --admin-token-file).
    #[arg(long, env = "OPAMPD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,
    /// File holding the admin token.
    #[arg(long, env = "OPAMPD_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Exit codes: 1 when the server could not be asked or refused, 64 for a bad invocation.
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 64;

/// Why a command failed; the message is for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}

impl ClientError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => EXIT_USAGE,
            Self::Failed(_) => EXIT_FAILED,
        }
    }
}

/// Longest an answer may be, and how long one request may take.
const MAX_ANSWER_BYTES: usize = 64 << 20;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `command`, printing to stdout.
pub async fn run(command: ClientCommand) -> Result<(), ClientError> {
    let mut out = std::io::stdout().lock();
    match command {
        ClientCommand::Stats { filter, admin } => {
            let api = Api::new(&admin)?;
            let stats = api.get("/api/stats", &filter.params()).await?;
            let text = if admin.json { pretty(&stats) } else { stats_table(&stats) };
            write(&mut out, &text)
        }
        ClientCommand::Agents { command: AgentsCommand::Show { uid, admin } } => {
            let api = Api::new(&admin)?;
            let path = format!("/api/agents/{}", percent_encode(&uid));
            let agent = api.get(&path, &[]).await?;
            let text = if admin.json { pretty(&agent) } else { agent_details(&agent, now_ms()) };
            write(&mut out, &text)
        }
        ClientCommand::Agents {
            command: AgentsCommand::List { filter, limit, cursor, all, admin },
        } => {
            let api = Api::new(&admin)?;
            let mut cursor = cursor;
            let mut first = true;
            loop {
                let mut params = filter.params();
                params.push(("limit", limit.to_string()));
                if let Some(c) = &cursor {
                    params.push(("cursor", c.clone()));
                }
                let page = api.get("/api/agents", &params).await?;
                let agents = page.get("agents").and_then(Value::as_array).cloned();
                let agents = agents.unwrap_or_default();
                let text = if admin.json {
                    agents.iter().map(|a| format!("{a}\n")).collect()
                } else {
                    agents_table(&agents, now_ms(), first)
                };
                write(&mut out, &text)?;
                first = false;
                cursor = page.get("next_cursor").and_then(Value::as_str).map(str::to_owned);
                match &cursor {
                    Some(_) if all => {}
                    Some(next) => {
                        eprintln!("more agents: --cursor {next} (or --all)");
                        return Ok(());
                    }
                    None => return Ok(()),
                }
            }
        }
    }
}

fn write(out: &mut impl std::io::Write, text: &str) -> Result<(), ClientError> {
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| ClientError::Failed(format!("writing the output: {e}")))
}

impl FilterArgs {
    fn params(&self) -> Vec<(&'static str, String)> {
        [
            ("status", &self.status),
            ("service_name", &self.service_name),
            ("version", &self.service_version),
            ("q", &self.q),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
        .collect()
    }
}

/// The admin API of one server.
struct Api {
    /// `host:port` to connect to and to name in `Host`.
    authority: String,
    /// The URL's path, without a trailing slash: the API lives under it (behind a proxy).
    base_path: String,
    authorization: Option<HeaderValue>,
}

impl Api {
    fn new(args: &AdminArgs) -> Result<Self, ClientError> {
        let usage = |m: String| ClientError::Usage(m);
        let url = Url::parse(&args.admin_url)
            .map_err(|e| usage(format!("--admin-url {}: {e}", args.admin_url)))?;
        if url.scheme() != "http" {
            return Err(usage(format!(
                "--admin-url {}: the admin listener speaks plain http",
                args.admin_url
            )));
        }
        let host = url.host_str().ok_or_else(|| usage("--admin-url has no host".into()))?;
        let port = url.port_or_known_default().unwrap_or(80);
        let token = match (&args.admin_token, &args.admin_token_file) {
            (Some(_), Some(_)) => {
                return Err(usage("give only one of --admin-token and --admin-token-file".into()));
            }
            (Some(token), None) => Some(token.expose().trim().to_owned()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| usage(format!("--admin-token-file {}: {e}", path.display())))?;
                Some(text.trim().to_owned())
            }
            (None, None) => None,
        };
        let authorization = match token {
            None => None,
            Some(t) if t.is_empty() => return Err(usage("the admin token is empty".into())),
            Some(t) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                    usage("the admin token holds characters a header cannot carry".into())
                })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(Self {
            authority: format!("{host}:{port}"),
            base_path: url.path().trim_end_matches('/').to_owned(),
            authorization,
        })
    }

    /// GETs `path?params` and returns the JSON answer; anything but a 2xx JSON answer is a
    /// failure that says what the server said.
    async fn get(&self, path: &str, params: &[(&str, String)]) -> Result<Value, ClientError> {
        let mut target = format!("{}{path}", self.base_path);
        if !params.is_empty() {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in params {
                query.append_pair(k, v);
            }
            target.push('?');
            target.push_str(&query.finish());
        }
        let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, self.send(&target))
            .await
            .map_err(|_| self.failed(format!("no answer within {REQUEST_TIMEOUT:?}")))??;
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        if status.is_success() {
            return json.ok_or_else(|| self.failed(format!("{target}: the answer is not JSON")));
        }
        let reason =
            json.as_ref().and_then(|j| j.get("error")).and_then(Value::as_str).map_or_else(
                || String::from_utf8_lossy(&body[..body.len().min(200)]).into(),
                str::to_owned,
            );
        let hint = match status {
            StatusCode::UNAUTHORIZED if self.authorization.is_none() => {
                " (the server wants its admin token: --admin-token, --admin-token-file or \
                 OPAMPD_ADMIN_TOKEN)"
            }
            StatusCode::UNAUTHORIZED => " (check the admin token)",
            _ => "",
        };
        Err(self.failed(format!("{status}: {reason}{hint}")))
    }

    async fn send(&self, target: &str) -> Result<(StatusCode, Bytes), ClientError> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| self.failed(format!("cannot connect: {e}")))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.failed(format!("http: {e}")))?;
        tokio::spawn(connection);
        let mut request = Request::get(target)
            .header(header::HOST, &self.authority)
            .header(header::ACCEPT, "application/json");
        if let Some(auth) = &self.authorization {
            request = request.header(header::AUTHORIZATION, auth.clone());
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| ClientError::Usage(format!("bad request target {target}: {e}")))?;
        let response =
            sender.send_request(request).await.map_err(|e| self.failed(format!("http: {e}")))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| self.failed(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok((status, body))
    }

    fn failed(&self, what: String) -> ClientError {
        ClientError::Failed(format!("admin api at {}: {what}", self.authority))
    }
}

/// `s` with everything but unreserved characters percent-encoded (one path segment).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn pretty(v: &Value) -> String {
    let mut text = serde_json::to_string_pretty(v).unwrap_or_default();
    text.push('\n');
    text
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The string value of attribute `key` in an agent's JSON (identifying first).
fn attribute<'a>(agent: &'a Value, key: &str) -> Option<&'a str> {
    let d = agent.get("agent_description")?;
    ["identifying_attributes", "non_identifying_attributes"]
        .iter()
        .find_map(|kind| d.get(kind)?.get(key)?.as_str())
}

/// Why an agent is not healthy, in a few words: its health's last error or status.
fn health_note(agent: &Value) -> String {
    let Some(h) = agent.get("health").filter(|h| !h.is_null()) else { return String::new() };
    let text = |k: &str| h.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    text("last_error").or_else(|| text("status")).unwrap_or_default().to_owned()
}

/// "12s ago", "5m ago", "3h ago", "2d ago" (or "-" for no time).
fn ago(ms: Option<u64>, now: u64) -> String {
    let Some(ms) = ms.filter(|ms| *ms > 0) else { return "-".into() };
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..60 => format!("{s}s ago"),
        60..3_600 => format!("{}m ago", s / 60),
        3_600..86_400 => format!("{}h ago", s / 3_600),
        _ => format!("{}d ago", s / 86_400),
    }
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Cells longer than this are cut with an ellipsis.
const MAX_CELL: usize = 48;

fn cell(s: &str) -> String {
    let s: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if s.chars().count() <= MAX_CELL {
        return s;
    }
    let mut cut: String = s.chars().take(MAX_CELL - 1).collect();
    cut.push('…');
    cut
}

/// Rows under a header, columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>], with_header: bool) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (c, w) in cells.zip(&widths) {
            let _ = write!(text, "{c:<w$}  ");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    if with_header {
        line(&mut header.iter().copied());
    }
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// A page of agents as a table (the header on the first page only).
pub fn agents_table(agents: &[Value], now: u64, with_header: bool) -> String {
    let text = |a: &Value, k: &str| a.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            vec![
                text(a, "instance_uid"),
                text(a, "status"),
                cell(attribute(a, "service.name").unwrap_or("-")),
                cell(attribute(a, "service.version").unwrap_or("-")),
                cell(attribute(a, "host.name").unwrap_or("-")),
                ago(a.get("last_checkin_ms").and_then(Value::as_u64), now),
                cell(&health_note(a)),
            ]
        })
        .collect();
    let header = ["UID", "STATUS", "SERVICE", "VERSION", "HOST", "LAST CHECK-IN", "HEALTH"];
    table(&header, &rows, with_header)
}

/// One agent for a terminal: who it is, how it is, what it runs.
pub fn agent_details(agent: &Value, now: u64) -> String {
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
    let mut out = String::new();
    let mut field = |name: &str, value: String| {
        let _ = writeln!(out, "{name:<16}{value}");
    };
    field("instance_uid", text(agent, "instance_uid"));
    let (status, stored) = (text(agent, "status"), text(agent, "stored_status"));
    field("status", if status == stored { status } else { format!("{status} (stored: {stored})") });
    for (name, key) in
        [("service", "service.name"), ("version", "service.version"), ("host", "host.name")]
    {
        field(name, attribute(agent, key).unwrap_or("-").to_owned());
    }
    let checkin = agent.get("last_checkin_ms").and_then(Value::as_u64);
    field(
        "last check-in",
        checkin.map_or("-".into(), |ms| format!("{} ({})", rfc3339(ms), ago(Some(ms), now))),
    );
    let enrolled = agent.get("enrolled_at_ms").and_then(Value::as_u64);
    field("enrolled", enrolled.map_or("-".into(), rfc3339));
    field("sequence_num", agent.get("sequence_num").map_or("-".into(), Value::to_string));
    let caps = agent.get("capability_names").and_then(Value::as_array);
    let caps: Vec<&str> = caps.into_iter().flatten().filter_map(Value::as_str).collect();
    field("capabilities", caps.join(", "));
    let rc = agent.get("remote_config").filter(|r| !r.is_null());
    if let Some(rc) = rc.filter(|rc| !rc["desired_name"].is_null() || !rc["status"].is_null()) {
        let short = |k: &str| {
            rc.get(k).and_then(Value::as_str).map(|h| h.chars().take(12).collect::<String>())
        };
        let mut line = format!(
            "{} desired {}, reported {} {}",
            rc.get("desired_name").and_then(Value::as_str).unwrap_or("(none)"),
            short("desired_hash").unwrap_or_else(|| "-".into()),
            short("reported_hash").unwrap_or_else(|| "-".into()),
            rc.get("status").and_then(Value::as_str).unwrap_or("-"),
        );
        if let Some(e) = rc.get("error_message").and_then(Value::as_str) {
            let _ = write!(line, ": {e}");
        }
        field("remote config", line);
    }
    if let Some(h) = agent.get("health").filter(|h| !h.is_null()) {
        out.push_str("health\n");
        health_tree(&mut out, "agent", h, 1);
    }
    for (title, kind) in
        [("identifying", "identifying_attributes"), ("attributes", "non_identifying_attributes")]
    {
        let attrs = agent.pointer(&format!("/agent_description/{kind}")).and_then(Value::as_object);
        if let Some(attrs) = attrs.filter(|a| !a.is_empty()) {
            let _ = writeln!(out, "{title}");
            for (k, v) in attrs {
                let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                let _ = writeln!(out, "  {k} = {}", cell(&v));
            }
        }
    }
    let files = agent.pointer("/effective_config/config_map").and_then(Value::as_object);
    if let Some(files) = files.filter(|f| !f.is_empty()) {
        out.push_str("effective config (as stored: secrets redacted)\n");
        for (name, file) in files {
            let name = if name.is_empty() { "(unnamed)" } else { name.as_str() };
            let _ = writeln!(out, "  --- {name}");
            // stored bodies are JSON text (redacted): indented, they read like the YAML they were
            let body = text(file, "body");
            let body = serde_json::from_str::<Value>(&body)
                .ok()
                .filter(Value::is_object)
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or(body);
            for line in body.lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
    }
    out
}

fn health_tree(out: &mut String, name: &str, h: &Value, depth: usize) {
    // agents send trees of any depth; a terminal needs a few levels
    const MAX_DEPTH: usize = 8;
    let healthy =
        if h.get("healthy").and_then(Value::as_bool) == Some(true) { "ok" } else { "UNHEALTHY" };
    let status = h.get("status").and_then(Value::as_str).unwrap_or("");
    let error = h.get("last_error").and_then(Value::as_str).unwrap_or("");
    let mut line = format!("{:indent$}{name}: {healthy}", "", indent = depth * 2);
    if !status.is_empty() {
        let _ = write!(line, " {status}");
    }
    if !error.is_empty() {
        let _ = write!(line, ": {error}");
    }
    out.push_str(&line);
    out.push('\n');
    if depth >= MAX_DEPTH {
        return;
    }
    if let Some(children) = h.get("component_health_map").and_then(Value::as_object) {
        for (child, ch) in children {
            health_tree(out, child, ch, depth + 1);
        }
    }
}

/// The fleet counts for a terminal.
pub fn stats_table(stats: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "agents            {}",
        stats.get("total").and_then(Value::as_u64).unwrap_or(0)
    );
    // in the API's order of concern, not alphabetical
    let ordered = |key: &str, names: &[&str]| -> String {
        names
            .iter()
            .map(|n| {
                format!(
                    "{n} {}",
                    stats.pointer(&format!("/{key}/{n}")).and_then(Value::as_u64).unwrap_or(0)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let statuses = ["online", "degraded", "error", "disconnected", "offline"];
    let _ = writeln!(out, "by status         {}", ordered("by_status", &statuses));
    let states = ["applied", "applying", "failed", "pending", "none"];
    let _ = writeln!(out, "remote config     {}", ordered("by_remote_config", &states));
    let reasons = ["new_agent", "reconnect", "sequence_gap", "adopted"];
    let _ = writeln!(
        out,
        "full-state asks   {} (since the server started)",
        ordered("report_full_state", &reasons)
    );
    for (title, key) in [("by service", "by_service"), ("by version", "by_version")] {
        let mut values: Vec<(String, u64)> = stats
            .get(key)
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))).collect())
            .unwrap_or_default();
        values.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        if values.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{title}");
        let rows: Vec<Vec<String>> =
            values.iter().map(|(k, n)| vec![format!("  {}", cell(k)), n.to_string()]).collect();
        out.push_str(&table(&["", ""], &rows, false));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        CommandLine::command().debug_assert();
        let parsed = CommandLine::try_parse_from(["opampd", "--listen", "127.0.0.1:1"]).unwrap();
        assert!(parsed.command.is_none());
        let parsed = CommandLine::try_parse_from(["opampd", "serve", "--listen", "127.0.0.1:1"]);
        assert!(matches!(parsed.unwrap().command, Some(Command::Serve(_))));
        let parsed = CommandLine::try_parse_from(["opampd", "agents", "list", "--all", "--json"]);
        assert!(matches!(parsed.unwrap().command, Some(Command::Client(_))));
        assert!(CommandLine::try_parse_from(["opampd", "--listen", "x:1", "stats"]).is_err());
        for (first, client) in
            [("agents", true), ("stats", true), ("serve", false), ("--listen", false)]
        {
            assert_eq!(is_client_command(Some(first.as_ref())), client, "{first}");
        }
        assert!(!is_client_command(None));
    }

    #[test]
    fn a_table_pads_columns_and_cuts_long_cells() {
        let agent = json!({
            "instance_uid": "0190-a", "status": "degraded", "last_checkin_ms": 1_000,
            "agent_description": {
                "identifying_attributes": {"service.name": "otelcol", "service.version": "1.0"},
                "non_identifying_attributes": {"host.name": "h".repeat(100)},
            },
            "health": {"healthy": false, "last_error": "exporter\nqueue full", "status": "x"},
        });
        let text = agents_table(&[agent], 61_000, true);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("UID     STATUS    SERVICE"), "{text}");
        assert!(lines[1].contains("1m ago") && lines[1].contains("exporter queue full"), "{text}");
        assert!(lines[1].contains(&format!("{}…", "h".repeat(MAX_CELL - 1))), "{text}");
        assert!(!agents_table(&[], 0, false).contains("UID"));
    }

    #[test]
    fn filters_become_query_parameters_only_when_given() {
        let f = FilterArgs {
            status: Some("offline".into()),
            q: Some("web 1".into()),
            ..Default::default()
        };
        assert_eq!(f.params(), [("status", "offline".to_owned()), ("q", "web 1".to_owned())]);
        assert_eq!(percent_encode("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn the_admin_url_must_be_plain_http() {
        let args = |url: &str| AdminArgs {
            admin_url: url.into(),
            admin_token: None,
            admin_token_file: None,
            json: false,
        };
        assert!(matches!(Api::new(&args("https://x:1")), Err(ClientError::Usage(_))));
        assert!(matches!(Api::new(&args("nope")), Err(ClientError::Usage(_))));
        let api = Api::new(&args("http://127.0.0.1:9/prefix/")).unwrap();
        assert_eq!((api.authority.as_str(), api.base_path.as_str()), ("127.0.0.1:9", "/prefix"));
    }
}
