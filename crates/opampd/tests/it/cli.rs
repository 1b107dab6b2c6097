//! The built binary: a bad configuration exits 64 before binding anything; SIGTERM stops a
//! running server cleanly with exit code 0.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_opampd");

fn run_with(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).env_remove("RUST_LOG").output().expect("binary runs")
}

#[test]
fn bad_flags_exit_64_with_a_clear_message() {
    for (args, expect) in [
        (&["--max-in-flight", "0"][..], "--max-in-flight"),
        (&["--listen", "not-an-address"][..], "--listen"),
        (&["--store", "postgres"][..], "postgres"),
        (&["--store", "elasticsearch"][..], "--es-url"),
        (&["--idle-timeout", "30s"][..], "--idle-timeout"),
        (&["--no-such-flag"][..], "--no-such-flag"),
    ] {
        let out = run_with(args);
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
    }
}

#[test]
fn bad_auth_and_elasticsearch_tls_settings_exit_64_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let bad_pem = dir.path().join("ca.pem");
    std::fs::write(&bad_pem, "-----BEGIN CERTIFICATE-----\nbm9wZQ==\n-----END CERTIFICATE-----\n")
        .unwrap();
    let bad_pem = bad_pem.to_str().unwrap();
    let es = ["--store", "elasticsearch", "--es-url", "https://127.0.0.1:9"];
    for (args, expect) in [
        (vec!["--auth", "elasticsearch"], "--auth"),
        (vec!["--auth", "sometimes"], "sometimes"),
        ([&es[..], &["--es-ca-cert", "/nonexistent/ca.pem"]].concat(), "--es-ca-cert"),
        ([&es[..], &["--es-ca-cert", bad_pem]].concat(), "--es-ca-cert"),
        ([&es[..], &["--es-service-token", "t", "--es-api-key", "k"]].concat(), "service token"),
        ([&es[..], &["--auth-cache-ttl", "0s"]].concat(), "--auth-cache-ttl"),
    ] {
        let out = run_with(&args);
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
    }
    let help = run_with(&["--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in ["--es-service-token", "--es-service-token-file", "--es-ca-cert", "--auth"] {
        assert!(help.contains(flag), "{flag} in --help");
    }
    assert!(help.contains("--auth-cache-ttl") && help.contains("--es-enrollment-index"));
}

#[test]
fn bad_env_var_exits_64() {
    let out = Command::new(BIN).env("OPAMPD_MAX_MESSAGE_BYTES", "lots").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn help_exits_0() {
    let out = run_with(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--es-api-key-file"));
}

#[test]
fn sigterm_stops_the_server_with_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let serving = std::iter::from_fn(|| rx.recv_timeout(Duration::from_secs(20)).ok())
        .any(|line| line.contains("opampd serving"));
    assert!(serving, "server came up");
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        assert!(std::time::Instant::now() < deadline, "exits in time");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(0));
}

#[test]
fn an_admin_listener_off_loopback_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    for admin in ["0.0.0.0:0", "[::]:0"] {
        let out =
            run_with(&["--listen", "127.0.0.1:0", "--admin-listen", admin, "--data-dir", data]);
        assert_eq!(out.status.code(), Some(64), "{admin}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--admin-token") && stderr.contains("not a loopback"), "{stderr}");
    }
    assert!(!std::path::Path::new(data).exists(), "refused before the store is opened");
    let token = dir.path().join("token");
    std::fs::write(&token, "\n").unwrap();
    let out = run_with(&["--admin-token-file", token.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--admin-token-file"));
}

/// `opampd agents list|show` and `opampd stats` against a real server with an admin token.
mod commands {
    use opamp_proto::InstanceUid;
    use opamp_proto::v1::{AgentDescription, AgentToServer, AnyValue, ComponentHealth, KeyValue};
    use serde_json::Value;

    use crate::common::{TestServer, full, send, uid};

    const TOKEN: &str = "cli-test-token-77c2";

    fn kv(key: &str, value: &str) -> KeyValue {
        use opamp_proto::v1::any_value::Value as V;
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(V::StringValue(value.into())) }),
        }
    }

    fn agent(
        uid: InstanceUid,
        service: &str,
        host: &str,
        health: ComponentHealth,
    ) -> AgentToServer {
        AgentToServer {
            agent_description: Some(AgentDescription {
                identifying_attributes: vec![
                    kv("service.name", service),
                    kv("service.version", "1.4.2"),
                ],
                non_identifying_attributes: vec![kv("host.name", host)],
            }),
            health: Some(health),
            ..full(uid, 0)
        }
    }

    /// Runs the binary with `args`; (exit code, stdout, stderr).
    async fn opampd(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
        let out = tokio::process::Command::new(super::BIN)
            .args(args)
            .env_remove("OPAMPD_ADMIN_TOKEN")
            .env_remove("OPAMPD_ADMIN_URL")
            .envs(env.iter().copied())
            .output()
            .await
            .expect("binary runs");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn agents_and_stats_commands_read_a_running_server() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = opampd::config::Config::embedded(dir.path());
        config.admin_token =
            Some(opampd::config::AdminToken::new(&opamp_store::Secret::new(TOKEN)));
        let server = TestServer::start_with(config).await;
        let url = server.admin_url.as_str();
        let broken = uid();
        let ok: Vec<InstanceUid> = (0..4).map(|_| uid()).collect();
        for (i, a) in ok.iter().enumerate() {
            let health = ComponentHealth { healthy: true, ..Default::default() };
            send(&server.opamp_url, &agent(*a, "otelcol", &format!("web-{i}"), health)).await;
        }
        let failing = ComponentHealth {
            healthy: false,
            last_error: "exporter elasticsearch: 401 unauthorized".into(),
            component_health_map: [(
                "pipeline:logs".to_owned(),
                ComponentHealth {
                    healthy: false,
                    status: "StatusPermanentError".into(),
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        };
        send(&server.opamp_url, &agent(broken, "otelcol-contrib", "db-1", failing)).await;
        let auth = ["--admin-url", url, "--admin-token", TOKEN];

        // a table of the unhealthy ones, with why
        let (code, out, err) =
            opampd(&[&["agents", "list", "--status", "error"][..], &auth].concat(), &[]).await;
        assert_eq!(code, Some(0), "{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[0].starts_with("UID") && lines[0].contains("HEALTH"), "{out}");
        for expected in [
            &broken.to_string()[..],
            "error",
            "otelcol-contrib",
            "1.4.2",
            "db-1",
            "401 unauthorized",
        ] {
            assert!(lines[1].contains(expected), "{expected} in {out}");
        }

        // every agent, one JSON object per line, a page of one at a time; the token from the
        // environment
        let (code, out, err) = opampd(
            &["agents", "list", "--all", "--limit", "1", "--json", "--admin-url", url],
            &[("OPAMPD_ADMIN_TOKEN", TOKEN)],
        )
        .await;
        assert_eq!(code, Some(0), "{err}");
        let listed: Vec<String> = out
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["instance_uid"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        let mut all: Vec<String> = ok.iter().chain([&broken]).map(ToString::to_string).collect();
        all.sort();
        assert_eq!(listed, all);

        // one page says how to get the next
        let (code, out, err) =
            opampd(&[&["agents", "list", "--limit", "2", "--q", "WEB"][..], &auth].concat(), &[])
                .await;
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(out.lines().count(), 3, "{out}");
        assert!(err.contains("--cursor "), "{err}");

        // one agent in detail: its health tree
        let (code, out, err) =
            opampd(&[&["agents", "show", &broken.to_string()][..], &auth].concat(), &[]).await;
        assert_eq!(code, Some(0), "{err}");
        for expected in [
            "status          error",
            "otelcol-contrib",
            "UNHEALTHY: exporter elasticsearch",
            "pipeline:logs: UNHEALTHY StatusPermanentError",
        ] {
            assert!(out.contains(expected), "{expected} in {out}");
        }
        let (code, out, _) =
            opampd(&[&["agents", "show", &broken.to_string(), "--json"][..], &auth].concat(), &[])
                .await;
        assert_eq!(code, Some(0));
        let shown: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(shown["status"], "error");

        // the counts, as the API gives them and as a table
        let (code, out, err) = opampd(&[&["stats", "--json"][..], &auth].concat(), &[]).await;
        assert_eq!(code, Some(0), "{err}");
        let stats: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(stats["total"], 5);
        assert_eq!(stats["by_status"]["error"], 1);
        assert_eq!(stats["by_service"]["otelcol"], 4);
        let (code, out, _) =
            opampd(&[&["stats", "--service-name", "otelcol"][..], &auth].concat(), &[]).await;
        assert_eq!(code, Some(0));
        assert!(out.contains("agents            4"), "{out}");
        assert!(out.contains("online 4, degraded 0, error 0"), "{out}");

        // refusals: no token, a wrong one, a bad filter, an unknown agent, no server
        let (code, _, err) = opampd(&["stats", "--admin-url", url], &[]).await;
        assert_eq!(code, Some(1));
        assert!(err.contains("401") && err.contains("--admin-token"), "{err}");
        let (code, _, err) =
            opampd(&["stats", "--admin-url", url, "--admin-token", "nope"], &[]).await;
        assert_eq!(code, Some(1));
        assert!(err.contains("admin token refused"), "{err}");
        let (code, _, err) =
            opampd(&[&["agents", "list", "--status", "sleepy"][..], &auth].concat(), &[]).await;
        assert_eq!(code, Some(1));
        assert!(err.contains("unknown status"), "{err}");
        let (code, _, err) =
            opampd(&[&["agents", "show", &uid().to_string()][..], &auth].concat(), &[]).await;
        assert_eq!(code, Some(1));
        assert!(err.contains("404"), "{err}");
        let (code, _, err) = opampd(&["stats", "--admin-url", "http://127.0.0.1:1"], &[]).await;
        assert_eq!(code, Some(1));
        assert!(err.contains("cannot connect"), "{err}");
        let (code, _, err) = opampd(&["stats", "--admin-url", "https://127.0.0.1:1"], &[]).await;
        assert_eq!(code, Some(64), "{err}");
        server.stop().await.unwrap();
    }
}
