//! The operator console (`/` on the admin listener) in a real browser: the opampd binary with
//! `--admin-token`, a fleet from the load generator binary (services, versions, degraded and
//! failing agents, a remote config rolled out), and headless Chromium driven over WebDriver
//! (`chromedriver`). The page must ask for the token, show the counts `/api/stats` gives, narrow
//! the agent table by status and by service as `/api/agents` does, page with cursors, show one
//! agent in detail, and render hostile agent input as text.
//!
//! Needs Debian's `chromium` and `chromium-driver` (scripts/test.sh installs them): skipped with a
//! message when they are missing, failed under `CI=true`. `OPAMPD_UPDATE_SCREENSHOTS=1` writes
//! docs/console-overview.png and docs/console-agent.png from the run.

mod webdriver;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail, ensure};
use opamp_proto::v1::{
    AgentConfigFile, AgentConfigMap, AgentDescription, AgentDisconnect, AgentToServer, AnyValue,
    ComponentHealth, EffectiveConfig, KeyValue, any_value,
};
use opamp_proto::{InstanceUid, agent_caps};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::common::{client, send};
use webdriver::{Driver, Session};

const TOKEN: &str = "console-test-token-3f9a1c";
/// How long any one thing the page does may take to show.
const SHOWS_WITHIN: Duration = Duration::from_secs(10);

/// An opampd binary on 127.0.0.1 ports it picked itself, over the embedded store.
struct Opampd {
    child: tokio::process::Child,
    opamp_url: String,
    admin_url: String,
    _data: tempfile::TempDir,
}

impl Opampd {
    async fn start(token: &str) -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_opampd"))
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--log-format", "json", "--admin-token", token, "--data-dir"])
            .arg(data.path().join("data"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("opampd starts")?;
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let serving = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = lines.next_line().await? {
                let Ok(event) = serde_json::from_str::<Value>(&line) else { continue };
                if event["message"] == "opampd serving" {
                    return Ok(event);
                }
            }
            anyhow::Ok(Value::Null)
        })
        .await;
        let event = match serving {
            Ok(Ok(e)) if !e.is_null() => e,
            other => {
                let _ = child.start_kill();
                let out = child.wait_with_output().await?;
                bail!(
                    "opampd did not come up ({other:?}): {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        };
        // the log keeps flowing: read it so the pipe never fills
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let field = |k: &str| event[k].as_str().map(str::to_owned).context(k.to_owned());
        Ok(Self {
            child,
            opamp_url: format!("http://{}/v1/opamp", field("listen")?),
            admin_url: format!("http://{}", field("admin_listen")?),
            _data: data,
        })
    }

    /// SIGTERM, and the exit code 0 of a clean shutdown.
    async fn stop(mut self) -> anyhow::Result<()> {
        let pid = self.child.id().context("running")?;
        std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await??;
        ensure!(status.success(), "opampd exited with {status}");
        Ok(())
    }
}

/// `GET {admin}{path}` with the bearer token, as JSON.
async fn api(admin: &str, path: &str) -> anyhow::Result<Value> {
    let resp = client().get(format!("{admin}{path}")).bearer_auth(TOKEN).send().await?;
    ensure!(resp.status() == 200, "{path}: {}", resp.status());
    Ok(serde_json::from_slice(&resp.bytes().await?)?)
}

/// Chromium and chromedriver, or `None` when either is missing (a skip; a panic under CI).
fn browser() -> Option<(PathBuf, PathBuf)> {
    if let Some(found) = webdriver::tools() {
        return Some(found);
    }
    let why = "chromium and chromedriver are required (apt-get install chromium chromium-driver; \
               scripts/test.sh installs them)";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("console browser test cannot run: {why}");
    }
    eprintln!("SKIPPING console browser test: {why}");
    None
}

/// The load generator's binary, built if it is missing or older than its sources (the test
/// binary of `cargo test -p opampd` does not build it; `cargo test --workspace` does).
/// `OPAMPD_LOADTEST_BIN` names another one.
fn loadtest_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("OPAMPD_LOADTEST_BIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/it-<hash> -> target/<profile>/opampd-loadtest
    let bin = exe.parent().and_then(Path::parent).context("target dir")?.join("opampd-loadtest");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let sources =
        ["loadtest/src", "loadtest/Cargo.toml", "crates/opamp-proto", "proto", "Cargo.lock"]
            .map(|p| root.join(p));
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    if built.is_some_and(|b| sources.iter().all(|s| newest(s) <= b)) {
        return Ok(bin);
    }
    eprintln!("console test: building opampd-loadtest (missing or older than its sources)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "--quiet", "--locked", "-p", "opampd-loadtest", "--bin", "opampd-loadtest"])
        .current_dir(&root)
        .status()
        .context("cargo build -p opampd-loadtest")?;
    ensure!(status.success(), "cargo build -p opampd-loadtest failed");
    ensure!(bin.is_file(), "no {} after the build", bin.display());
    Ok(bin)
}

/// The newest modification time under `path` (a file or a directory, not following links).
fn newest(path: &Path) -> SystemTime {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return SystemTime::UNIX_EPOCH };
    let own = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    if !meta.is_dir() {
        return own;
    }
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name() != "target" && e.file_name() != "node_modules")
        .map(|e| newest(&e.path()))
        .fold(own, SystemTime::max)
}

/// Sixty agents from the load generator for 6 s: 3 services x 2 versions, some degraded or
/// failing, half accepting remote config (30 % of them failing it), a config pushed at 1 s, a
/// sequence drift now and then; the run checks its own acknowledged writes in the store.
async fn load_fleet(server: &Opampd) -> anyhow::Result<Value> {
    let bin = loadtest_bin()?;
    let out = tokio::process::Command::new(&bin)
        .args(["--target", &server.opamp_url, "--agents", "60", "--heartbeat", "1"])
        .args(["--duration", "6", "--connections", "8", "--seed", "11", "--progress", "60"])
        .args(["--services", "3", "--versions", "2"])
        .args(["--degraded-agents", "0.15", "--error-agents", "0.15", "--drift-rate", "0.05"])
        .args(["--remote-config-agents", "0.5", "--remote-config-fail-rate", "0.3"])
        .args(["--push-config-at", "1", "--push-config-name", "collectors"])
        .args(["--admin-url", &server.admin_url, "--verify-admin", &server.admin_url])
        .args(["--verify-settle", "0.2"])
        .env("OPAMPD_LOADTEST_ADMIN_TOKEN", TOKEN)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(40), out)
        .await
        .context("the load generator finishes within 40 s")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "{} failed ({}): {stdout}\n{}",
        bin.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout.lines().rev().find_map(|l| serde_json::from_str::<Value>(l).ok());
    summary.context("the load generator's JSON summary")
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
    }
}

/// What an agent may put in any string: markup that runs script if it is ever parsed as HTML.
const HOSTILE_SERVICE: &str = "<img src=x onerror=\"window.__pwned=1\">";
const HOSTILE_HOST: &str = "\"><svg onload=\"window.__pwned=2\"></svg>";
const HOSTILE_ERROR: &str = "</span><script>window.__pwned=3</script>";

/// One agent by hand, with markup in its description, health and config, that then says
/// goodbye (status `disconnected`).
async fn hostile_agent(server: &Opampd) -> InstanceUid {
    let uid = InstanceUid::new_v7();
    let caps = agent_caps::REPORTS_STATUS
        | agent_caps::REPORTS_HEALTH
        | agent_caps::REPORTS_EFFECTIVE_CONFIG;
    let config = format!("receivers:\n  otlp: {{}}\nnote: \"{HOSTILE_ERROR}\"\n");
    let first = AgentToServer {
        instance_uid: uid.as_bytes().to_vec().into(),
        sequence_num: 0,
        capabilities: caps,
        agent_description: Some(AgentDescription {
            identifying_attributes: vec![
                kv("service.name", HOSTILE_SERVICE),
                kv("service.version", "<b>1.0</b>"),
            ],
            non_identifying_attributes: vec![kv("host.name", HOSTILE_HOST)],
        }),
        health: Some(ComponentHealth {
            healthy: true,
            status: "<i>StatusOK</i>".into(),
            last_error: HOSTILE_ERROR.into(),
            ..Default::default()
        }),
        effective_config: Some(EffectiveConfig {
            config_map: Some(AgentConfigMap {
                config_map: [(
                    "<u>collector</u>.yaml".to_owned(),
                    AgentConfigFile {
                        body: config.into_bytes().into(),
                        content_type: "text/yaml".into(),
                        ..Default::default()
                    },
                )]
                .into(),
            }),
        }),
        ..Default::default()
    };
    send(&server.opamp_url, &first).await;
    let goodbye = AgentToServer {
        instance_uid: uid.as_bytes().to_vec().into(),
        sequence_num: 1,
        capabilities: caps,
        agent_disconnect: Some(AgentDisconnect {}),
        ..Default::default()
    };
    send(&server.opamp_url, &goodbye).await;
    uid
}

/// The overview as the page shows it.
const OVERVIEW: &str = r#"
    if (document.getElementById('main').hidden) return null;
    const t = (id) => document.getElementById(id).textContent;
    const counts = (id) => [...document.querySelectorAll('#' + id + ' tbody tr[data-key]')]
        .map((r) => [r.dataset.key, r.cells[0].textContent, Number(r.cells[1].textContent)]);
    return {
        dialog: !document.getElementById('token-dialog').hidden,
        total: t('count-total'),
        status: Object.fromEntries(['online', 'degraded', 'error', 'disconnected', 'offline']
            .map((s) => [s, t('count-' + s)])),
        services: counts('by-service'),
        versions: counts('by-version'),
        remote: counts('by-remote-config'),
        full_state: [...document.querySelectorAll('#full-state tbody tr')]
            .map((r) => [r.dataset.key, Number(r.cells[1].textContent)]),
        configs: [...document.querySelectorAll('#config-table tbody tr[data-testid=config-row]')]
            .map((r) => ({name: r.dataset.name,
                paused: r.querySelector('[data-col=state]').dataset.paused,
                counts: Object.fromEntries(['matched', 'applied', 'applying', 'failed', 'pending']
                    .map((k) => [k, r.querySelector('[data-col=' + k + ']').textContent]))})),
    };"#;

/// The agent table as the page shows it.
const TABLE: &str = r#"
    const s = document.getElementById('agents');
    const col = (r, c) => r.querySelector('[data-col=' + c + ']').textContent;
    return {
        state: s.dataset.state,
        query: s.dataset.query || '',
        info: document.getElementById('page-info').textContent,
        prev: !document.getElementById('page-prev').disabled,
        next: !document.getElementById('page-next').disabled,
        rows: [...document.querySelectorAll('#agent-table tbody tr[data-testid=agent-row]')]
            .map((r) => ({uid: r.dataset.uid, status: col(r, 'status'), service: col(r, 'service'),
                version: col(r, 'version'), seq: col(r, 'seq')})),
    };"#;

/// The detail view as the page shows it.
const DETAIL: &str = r#"
    const d = document.getElementById('agent-detail');
    if (d.hidden || d.dataset.state !== 'ready') return null;
    const t = (id) => document.getElementById(id).textContent;
    const kv = (id) => Object.fromEntries([...document.querySelectorAll('#' + id + ' tr[data-key]')]
        .map((r) => [r.dataset.key, r.cells[1].textContent]));
    return {
        uid: t('detail-uid'), status: t('detail-status'), seq: t('detail-seq'),
        last_checkin: t('detail-last-checkin'),
        capabilities: [...document.querySelectorAll('#detail-capabilities [data-testid=capability]')]
            .map((c) => c.textContent),
        identifying: kv('detail-identifying'),
        non_identifying: kv('detail-non-identifying'),
        remote: kv('detail-remote-config'),
        health: [...document.querySelectorAll('#detail-health [data-testid=health-node]')]
            .map((n) => ({name: n.dataset.component, healthy: n.dataset.healthy === 'true',
                error: (n.querySelector(':scope > .herr') || {}).textContent || ''})),
        config_files: [...document.querySelectorAll('#detail-effective-config [data-testid=config-file]')]
            .map((f) => [f.dataset.name, f.querySelector('pre').textContent]),
        markup: document.querySelectorAll('main script, main img, main svg, main b, main i, main u').length,
        pwned: window.__pwned === undefined ? null : window.__pwned,
    };"#;

fn rows(table: &Value) -> &[Value] {
    table["rows"].as_array().map_or(&[], Vec::as_slice)
}

fn uids(rows: &[Value]) -> BTreeSet<String> {
    rows.iter().map(|r| r["uid"].as_str().unwrap_or_default().to_owned()).collect()
}

fn api_uids(page: &Value) -> BTreeSet<String> {
    page["agents"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| a["instance_uid"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Waits until the table shows a page for a query containing `query` that `done` accepts.
async fn table_shows(
    page: &Session,
    what: &str,
    query: &str,
    done: impl Fn(&[Value]) -> bool,
) -> anyhow::Result<Value> {
    page.wait_for(what, SHOWS_WITHIN, TABLE, |t| {
        t["state"] == "ready"
            && t["query"].as_str().is_some_and(|q| q.contains(query))
            && done(rows(t))
    })
    .await
}

fn count_map(stats: &Value, key: &str) -> BTreeMap<String, u64> {
    stats[key]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
        .collect()
}

fn shown_counts(overview: &Value, key: &str) -> BTreeMap<String, u64> {
    overview[key]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| Some((r[0].as_str()?.to_owned(), r[2].as_u64()?)))
        .collect()
}

fn screenshots_wanted() -> Option<PathBuf> {
    std::env::var("OPAMPD_UPDATE_SCREENSHOTS")
        .is_ok_and(|v| v == "1")
        .then(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs"))
}

/// Resizes the window to the page's height (at most `max`) and saves a PNG of it.
async fn screenshot(page: &Session, path: &Path, max: u32) -> anyhow::Result<()> {
    let size = "return [document.documentElement.scrollHeight, \
                window.outerHeight - window.innerHeight];";
    let size = page.js(size, json!([])).await?;
    let content = size[0].as_u64().unwrap_or(1000).clamp(600, u64::from(max));
    let chrome = size[1].as_u64().unwrap_or(0).min(400);
    page.set_window(1400, (content + chrome) as u32).await?;
    page.js("window.scrollTo(0, 0);", json!([])).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(path, page.screenshot().await?)?;
    eprintln!("console test: wrote {} ({size})", path.display());
    page.set_window(1400, 1000).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_page_is_static_and_served_without_the_token_under_a_strict_policy() {
    let server = Opampd::start(TOKEN).await.unwrap();
    let c = client();
    for (path, kind) in [
        ("/", "text/html; charset=utf-8"),
        ("/ui/console.js", "text/javascript; charset=utf-8"),
        ("/ui/console.css", "text/css; charset=utf-8"),
        ("/ui/favicon.svg", "image/svg+xml"),
    ] {
        let resp = c.get(format!("{}{path}", server.admin_url)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path} needs no token");
        let h = resp.headers().clone();
        assert_eq!(h["content-type"], kind, "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["cache-control"], "no-cache", "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        let etag = h["etag"].to_str().unwrap().to_owned();
        assert!(!resp.bytes().await.unwrap().is_empty());
        let again = c
            .get(format!("{}{path}", server.admin_url))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{path} revalidates by its etag");
    }
    let missing = c.get(format!("{}/ui/nope.js", server.admin_url)).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    // the data behind the page is not open: the API wants the token
    let stats = c.get(format!("{}/api/stats", server.admin_url)).send().await.unwrap();
    assert_eq!(stats.status(), 401);
    assert!(api(&server.admin_url, "/api/stats").await.is_ok());
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_real_browser_shows_the_fleet_filters_pages_and_one_agent() {
    let Some((chromium, chromedriver)) = browser() else { return };
    let started = Instant::now();
    let server = Opampd::start(TOKEN).await.unwrap();
    let loadtest = load_fleet(&server).await.unwrap();
    assert_eq!(loadtest["verify"]["acknowledged_lost"], json!(0), "{loadtest}");
    let fleet_ready = started.elapsed();

    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("chromedriver.log");
    let driver = Driver::start(&chromedriver, &log).await.unwrap();
    let profile = scratch.path().join("profile");
    let page = driver.session(&chromium, &profile, (1400, 1000)).await.unwrap();
    let drive = tokio::time::timeout(Duration::from_secs(60), drive(&page, &server)).await;
    let _ = page.close().await;
    drop(driver);
    let failed = match drive {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e:#}")),
        Err(_) => Some("the browser part took over 60 s".to_owned()),
    };
    if let Some(failed) = failed {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        let mut from = log.len().saturating_sub(3000);
        while !log.is_char_boundary(from) {
            from += 1;
        }
        let tail = &log[from..];
        panic!("{failed}\n--- end of the chromedriver log:\n{tail}");
    }
    server.stop().await.unwrap();
    eprintln!(
        "console test: fleet ready in {:.1} s, whole test {:.1} s",
        fleet_ready.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// Waits until the overview shows `stats`' total, then checks that it shows the rest of them
/// too: the counts by status, service, version, remote-config state and full-state reason.
async fn overview_shows(page: &Session, stats: &Value) -> anyhow::Result<Value> {
    let total = stats["total"].to_string();
    let overview = page
        .wait_for("the overview", SHOWS_WITHIN, OVERVIEW, |v| v["total"] == total.as_str())
        .await?;
    ensure!(overview["dialog"] == false, "the prompt is gone: {overview}");
    let by_status = count_map(stats, "by_status");
    for s in ["online", "degraded", "error", "disconnected", "offline"] {
        let want = by_status.get(s).copied().unwrap_or(0).to_string();
        ensure!(overview["status"][s] == want.as_str(), "{s}: {overview} vs {stats}");
    }
    ensure!(shown_counts(&overview, "services") == count_map(stats, "by_service"), "{overview}");
    ensure!(shown_counts(&overview, "versions") == count_map(stats, "by_version"), "{overview}");
    let shown_remote = shown_counts(&overview, "remote");
    ensure!(shown_remote == count_map(stats, "by_remote_config"), "{overview} vs {stats}");
    for row in overview["services"].as_array().into_iter().flatten() {
        // the name as text, whatever it holds
        ensure!(row[0] == row[1] || row[0] == "", "service shown as text: {row}");
    }
    let reasons: BTreeMap<String, u64> = overview["full_state"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| Some((r[0].as_str()?.to_owned(), r[1].as_u64()?)))
        .collect();
    let want_reasons = count_map(stats, "report_full_state");
    ensure!(reasons == want_reasons, "ReportFullState by reason: {reasons:?} vs {want_reasons:?}");
    Ok(overview)
}

async fn drive(page: &Session, server: &Opampd) -> anyhow::Result<()> {
    let admin = server.admin_url.as_str();
    let stats = api(admin, "/api/stats").await?;
    ensure!(stats["total"] == 60, "the load generator's 60 agents: {stats}");
    let by_status = count_map(&stats, "by_status");
    for s in ["online", "degraded", "error"] {
        ensure!(by_status.get(s).copied().unwrap_or(0) > 0, "some agents {s}: {stats}");
    }

    // 1. The page loads without the token, and asks for it; a wrong one is refused.
    page.goto(&format!("{admin}/")).await?;
    let dialog = "return !document.getElementById('token-dialog').hidden \
                  && document.getElementById('main').hidden;";
    page.wait_for("the token prompt", SHOWS_WITHIN, dialog, |v| v == true).await?;
    page.type_into("#token-input", "not-the-token").await?;
    page.click("#token-submit").await?;
    let refused = "const e = document.getElementById('token-error'); \
                   return !document.getElementById('token-dialog').hidden && !e.hidden \
                   ? e.textContent : null;";
    page.wait_for("the refusal", SHOWS_WITHIN, refused, |v| {
        v.as_str().is_some_and(|m| m.contains("refused"))
    })
    .await?;
    page.type_into("#token-input", TOKEN).await?;
    page.click("#token-submit").await?;

    // 2. The overview shows what /api/stats says.
    let overview = overview_shows(page, &stats).await?;
    // the load generator's injected drift, each answered with a request
    let gaps = &stats["report_full_state"]["sequence_gap"];
    ensure!(gaps.as_u64().is_some_and(|n| n > 0), "{stats}");

    // the remote config the load generator pushed, with the counts /api/configs gives
    let configs = api(admin, "/api/configs").await?;
    let config = configs["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == "collectors")
        .context("the pushed config")?;
    // the configs come from their own call, which may render after the stats
    let with_configs = page
        .wait_for("the config row", SHOWS_WITHIN, OVERVIEW, |v| {
            v["configs"].as_array().is_some_and(|c| c.iter().any(|c| c["name"] == "collectors"))
        })
        .await
        .with_context(|| format!("the config row, after the overview {overview}"))?;
    let shown = with_configs["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == "collectors")
        .with_context(|| format!("the config row: {with_configs}"))?;
    for k in ["matched", "applied", "applying", "failed", "pending"] {
        ensure!(
            shown["counts"][k] == config["agents"][k].to_string().as_str(),
            "{k}: {shown} vs {config}"
        );
    }
    ensure!(config["agents"]["failed"].as_u64() > Some(0), "some agents failed it: {config}");
    ensure!(shown["paused"] == config["rollout_state"]["paused"].to_string().as_str(), "{shown}");

    // 3. The token is kept for the session: a reload goes straight to the fleet.
    let kept = page.js("return sessionStorage.getItem('opampd.adminToken');", json!([])).await?;
    ensure!(kept == TOKEN, "token in session storage: {kept}");
    page.goto(&format!("{admin}/")).await?;
    overview_shows(page, &stats).await?;
    if let Some(docs) = screenshots_wanted() {
        // the drift rate needs two polls (10 s apart)
        page.wait_for(
            "the drift rate",
            Duration::from_secs(15),
            "return document.getElementById('drift-rate').textContent;",
            |v| v.as_str().is_some_and(|t| t.parse::<f64>().is_ok()),
        )
        .await?;
        screenshot(page, &docs.join("console-overview.png"), 1500).await?;
    }

    // An agent with markup in everything it reports, that then disconnects: Refresh shows it.
    let hostile = hostile_agent(server).await.to_string();
    let stats = api(admin, "/api/stats").await?;
    ensure!(stats["total"] == 61 && stats["by_status"]["disconnected"] == 1, "{stats}");
    page.click("#refresh").await?;
    overview_shows(page, &stats).await?;
    let by_status = count_map(&stats, "by_status");
    let total = 61;

    // 4. Filtering by status narrows the table to exactly those agents.
    let first_page = table_shows(page, "the first page", "limit=50", |r| r.len() == 50).await?;
    ensure!(first_page["next"] == true && first_page["prev"] == false, "{first_page}");
    page.select("#filter-status", "error").await?;
    let errors = by_status["error"] as usize;
    let table = table_shows(page, "agents in error", "status=error", |r| r.len() == errors).await?;
    ensure!(rows(&table).iter().all(|r| r["status"] == "error"), "{table}");
    let want = api_uids(&api(admin, "/api/agents?status=error&limit=100").await?);
    ensure!(uids(rows(&table)) == want, "status=error: {table} vs {want:?}");

    // ... and by service (status back to any)
    let services = count_map(&stats, "by_service");
    let service = "opampd-loadtest-agent-1";
    let in_service = *services.get(service).context("a load generator service")? as usize;
    ensure!(in_service < total as usize, "a service is a part of the fleet");
    page.select("#filter-status", "").await?;
    page.type_into("#filter-service", service).await?;
    page.click("#filter-apply").await?;
    let table =
        table_shows(page, "one service", "service_name=", |r| r.len() == in_service).await?;
    ensure!(rows(&table).iter().all(|r| r["service"] == service), "{table}");
    let want =
        api_uids(&api(admin, &format!("/api/agents?service_name={service}&limit=100")).await?);
    ensure!(uids(rows(&table)) == want, "service_name: {table} vs {want:?}");

    // 5. Paging with cursors: 25 a page, next gives the API's second page, previous the first.
    page.click("#filter-clear").await?;
    page.select("#page-size", "25").await?;
    let p1 = table_shows(page, "page 1 of 25", "limit=25", |r| r.len() == 25).await?;
    ensure!(!p1["query"].as_str().unwrap_or_default().contains("cursor"), "{p1}");
    page.click("#page-next").await?;
    let p2 = table_shows(page, "page 2", "cursor=", |r| r.len() == 25).await?;
    let api1 = api(admin, "/api/agents?limit=25").await?;
    let cursor = api1["next_cursor"].as_str().context("a second page")?;
    let api2 = api(admin, &format!("/api/agents?limit=25&cursor={cursor}")).await?;
    ensure!(uids(rows(&p1)) == api_uids(&api1), "page 1: {p1}");
    ensure!(uids(rows(&p2)) == api_uids(&api2), "page 2: {p2}");
    ensure!(uids(rows(&p1)).is_disjoint(&uids(rows(&p2))), "pages do not overlap");
    ensure!(p2["prev"] == true && p2["info"].as_str().is_some_and(|i| i.contains("26")), "{p2}");
    page.click("#page-prev").await?;
    let back = page
        .wait_for("page 1 again", SHOWS_WITHIN, TABLE, |t| {
            t["state"] == "ready"
                && !t["query"].as_str().unwrap_or("cursor").contains("cursor")
                && t["rows"].as_array().is_some_and(|r| r.len() == 25)
        })
        .await?;
    ensure!(uids(rows(&back)) == uids(rows(&p1)), "previous gives page 1 back");

    // 6. One agent in detail: an agent in error, from its row (status filter via its card).
    page.click("#status-cards [data-status=error]").await?;
    let table = table_shows(page, "agents in error", "status=error", |r| r.len() == errors).await?;
    let uid = rows(&table)[0]["uid"].as_str().context("a row")?.to_owned();
    page.click(&format!("#agent-table tr[data-uid=\"{uid}\"] a")).await?;
    let shown =
        page.wait_for("the agent", SHOWS_WITHIN, DETAIL, |d| d["uid"] == uid.as_str()).await?;
    let agent = api(admin, &format!("/api/agents/{uid}")).await?;
    ensure!(shown["seq"] == agent["sequence_num"].to_string().as_str(), "{shown} vs {agent}");
    ensure!(shown["status"] == "error", "{shown}");
    ensure!(shown["capabilities"] == agent["capability_names"], "{shown} vs {agent}");
    let health = shown["health"].as_array().context("health tree")?;
    let exporter = health.iter().find(|n| n["name"] == "exporter:otlp").context("component")?;
    ensure!(exporter["healthy"] == false, "{shown}");
    ensure!(exporter["error"].as_str().is_some_and(|e| e.contains("exporter otlp")), "{shown}");
    ensure!(health.iter().any(|n| n["name"] == "pipeline:traces"), "{shown}");
    let description = &agent["agent_description"]["identifying_attributes"];
    ensure!(shown["identifying"]["service.name"] == description["service.name"], "{shown}");
    ensure!(shown["identifying"]["service.instance.id"] == uid.as_str(), "{shown}");
    ensure!(
        shown["config_files"].as_array().is_some_and(|f| !f.is_empty()),
        "the effective config: {shown}"
    );
    ensure!(
        shown["remote"]["desired config"]
            == agent["remote_config"]["desired_name"].as_str().unwrap_or(""),
        "{shown} vs {agent}"
    );
    if let Some(docs) = screenshots_wanted() {
        screenshot(page, &docs.join("console-agent.png"), 2200).await?;
    }

    // back to the fleet, where the filter is as it was
    page.click("#detail-close").await?;
    table_shows(page, "the table again", "status=error", |r| r.len() == errors).await?;

    // 7. Hostile input is text: markup from the agent shows as written and never runs.
    page.goto(&format!("{admin}/#agent/{hostile}")).await?;
    let shown = page
        .wait_for("the hostile agent", SHOWS_WITHIN, DETAIL, |d| d["uid"] == hostile.as_str())
        .await?;
    ensure!(shown["status"] == "disconnected", "{shown}");
    ensure!(shown["identifying"]["service.name"] == HOSTILE_SERVICE, "{shown}");
    ensure!(shown["non_identifying"]["host.name"] == HOSTILE_HOST, "{shown}");
    let root = &shown["health"][0];
    ensure!(root["error"] == HOSTILE_ERROR, "{shown}");
    let files = shown["config_files"].as_array().context("files")?;
    ensure!(files.iter().any(|f| f[0] == "<u>collector</u>.yaml"), "{shown}");
    ensure!(
        files.iter().any(|f| f[1].as_str().is_some_and(|b| b.contains("window.__pwned=3"))),
        "the config body as stored, as text: {shown}"
    );
    ensure!(shown["markup"] == 0 && shown["pwned"].is_null(), "no agent markup parsed: {shown}");
    Ok(())
}
