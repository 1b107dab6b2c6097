//! Secrets out of effective configs: what is redacted, what stays readable, what is dropped.

use opamp_core::redact::{REDACTED, is_secret_key, redact_effective_config, redacted_json};
use opamp_core::{AgentStatus, merge};

use crate::support::{NOW, UID, config_file, heartbeat, populated_record};

fn json(body: &str) -> Option<String> {
    redacted_json(body.as_bytes())
}

#[test]
fn yaml_becomes_json_with_secrets_redacted() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "exporter_password_and_api_key",
            "exporters:\n  elasticsearch:\n    endpoint: https://es:9200\n    password: hunter2\n    api_key: abc==\n",
            r#"{"exporters":{"elasticsearch":{"api_key":"REDACTED","endpoint":"https://es:9200","password":"REDACTED"}}}"#,
        ),
        (
            "header_values_under_authorization_any_case",
            "headers:\n  Authorization: Bearer xyz\n  X-Scope: tenant\n",
            r#"{"headers":{"Authorization":"REDACTED","X-Scope":"tenant"}}"#,
        ),
        (
            "numbers_and_booleans_under_a_secret_key_too",
            "token: 12345\nsecret: true\nport: 4317\n",
            r#"{"port":4317,"secret":"REDACTED","token":"REDACTED"}"#,
        ),
        (
            "a_list_under_a_secret_key_loses_its_scalars",
            "tokens: [a, b]\nnames: [a, b]\n",
            r#"{"names":["a","b"],"tokens":["REDACTED","REDACTED"]}"#,
        ),
        (
            "a_mapping_under_a_secret_key_is_walked_not_dropped",
            "auth:\n  endpoint: https://idp\n  client_secret: s3\n",
            r#"{"auth":{"client_secret":"REDACTED","endpoint":"https://idp"}}"#,
        ),
        (
            "name_value_pairs_naming_a_secret",
            "headers:\n  - name: Authorization\n    value: Bearer xyz\n  - name: X-Team\n    value: blue\n",
            r#"{"headers":[{"name":"Authorization","value":"REDACTED"},{"name":"X-Team","value":"blue"}]}"#,
        ),
        (
            "url_user_info_anywhere",
            "endpoints: ['https://elastic:pw@es.example:9200/x', 'http://plain:80']\n",
            r#"{"endpoints":["https://REDACTED:REDACTED@es.example:9200/x","http://plain:80"]}"#,
        ),
        (
            "pem_private_keys_anywhere",
            "tls:\n  cert_pem: \"-----BEGIN RSA PRIVATE KEY-----\\nMIIE\\n-----END RSA PRIVATE KEY-----\"\n",
            r#"{"tls":{"cert_pem":"REDACTED"}}"#,
        ),
        (
            "routekey_is_not_a_secret",
            "routekey: logs\nrouting_key: x\n",
            r#"{"routekey":"logs","routing_key":"REDACTED"}"#,
        ),
        (
            "quoted_scalars_stay_strings_plain_ones_get_types",
            "a: '1'\nb: 1\nc: 1.5\nd: null\ne: ~\nf: yes\ng: 'true'\nh: 0x10\n",
            r#"{"a":"1","b":1,"c":1.5,"d":null,"e":null,"f":"yes","g":"true","h":16}"#,
        ),
        (
            "json_input_is_yaml_too",
            r#"{"receivers": {"otlp": {}}, "password": "p"}"#,
            r#"{"password":"REDACTED","receivers":{"otlp":{}}}"#,
        ),
        ("duplicate_keys_keep_the_last_and_sort", "b: 1\na: 2\nb: 3\n", r#"{"a":2,"b":3}"#),
        (
            "aliases_are_expanded",
            "base: &b {endpoint: x, password: p}\nother: *b\n",
            r#"{"base":{"endpoint":"x","password":"REDACTED"},"other":{"endpoint":"x","password":"REDACTED"}}"#,
        ),
        (
            "a_sequence_root_is_kept",
            "- password: p\n- plain\n",
            r#"[{"password":"REDACTED"},"plain"]"#,
        ),
        (
            "escapes_in_json_output",
            "msg: \"a\\\"b\\\\c\\n\\u0001\"\n",
            r#"{"msg":"a\"b\\c\n\u0001"}"#,
        ),
    ];
    let mut failures = Vec::new();
    for (name, yaml, want) in cases {
        let got = json(yaml);
        if got.as_deref() != Some(*want) {
            failures.push(format!("{name}: got {got:?}\n  want {want}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn what_cannot_be_inspected_is_not_kept() {
    let billion_laughs = {
        let mut y = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            y.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        y
    };
    let deep = format!("{}x{}", "[".repeat(100), "]".repeat(100));
    let huge = format!("k: {}\n", "x".repeat(2 << 20));
    for (name, body) in [
        ("scalar_root", "just text"),
        ("syntax_error", "a: [unclosed\n"),
        ("two_documents", "a: 1\n---\nb: 2\n"),
        ("mapping_key", "? [a, b]\n: c\n"),
        ("undefined_alias", "a: *nope\n"),
        ("billion_laughs", billion_laughs.as_str()),
        ("deep_nesting", deep.as_str()),
        ("over_the_size_bound", huge.as_str()),
    ] {
        assert_eq!(json(body), None, "{name}");
    }
    assert_eq!(redacted_json(&[0xff, 0xfe, b':']), None, "not utf-8");
    assert_eq!(json(""), Some(String::new()), "an empty body stays empty");
}

#[test]
fn a_dropped_body_keeps_the_file_and_its_content_type() {
    let config = redact_effective_config(&config_file("not: [valid"));
    let file = &config.config_map.as_ref().unwrap().config_map[""];
    assert!(file.body.is_empty());
    assert_eq!(file.content_type, "text/yaml");
}

#[test]
fn secret_keys_match_by_substring_ignoring_case() {
    for key in ["password", "API_KEY", "key_file", "Authorization", "bearer_token", "passphrase"] {
        assert!(is_secret_key(key), "{key}");
    }
    for key in ["endpoint", "routekey", "exporters", "timeout", "cert_file"] {
        assert!(!is_secret_key(key), "{key}");
    }
}

#[test]
fn the_merged_record_never_holds_the_raw_body() {
    let mut msg = heartbeat(6);
    msg.effective_config =
        Some(config_file("exporters:\n  otlp:\n    headers:\n      api-key: SECRET-123\n"));
    let merged = merge(Some(populated_record(5, AgentStatus::Online)), UID, &msg, NOW);
    let file =
        &merged.effective_config.as_ref().unwrap().config_map.as_ref().unwrap().config_map[""];
    let body = std::str::from_utf8(&file.body).unwrap();
    assert!(!body.contains("SECRET-123"), "{body}");
    assert!(body.contains(REDACTED), "{body}");
}
