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
