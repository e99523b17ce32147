//! Who is calling: API keys, roles, client IP rules and the brute-force lockout, through a real
//! Envoy.

use std::process::Command;
use std::time::Duration;

use edge_warden::checks::api_key::hash_key;

use crate::harness::{Envoy, Options, Signed, SECRET};

const CLIENT_KEY: &str = "ew_client_key_0123456789abcdefghijklmnopqrstuv";
const ADMIN_KEY: &str = "ew_admin_key_0123456789abcdefghijklmnopqrstuvw";
const EXPIRED_KEY: &str = "ew_expired_key_0123456789abcdefghijklmnopqrst";
const FUTURE_KEY: &str = "ew_future_key_0123456789abcdefghijklmnopqrstu";

fn config(lockout_window: u64) -> String {
    format!(
        r#"{{
      "signature": {{"secrets": [{{"id": "primary", "env": "HMAC_SHARED_SECRET"}}]}},
      "api_keys": {{"allow_bearer": true, "keys": [
        {{"id": "ci-bot", "sha256": "{client}", "role": "client"}},
        {{"id": "ops", "sha256": "{admin}", "role": "admin"}},
        {{"id": "old", "sha256": "{expired}", "role": "client", "expires_at": "2020-01-01T00:00:00Z"}},
        {{"id": "next", "sha256": "{future}", "role": "client", "not_before": "2099-01-01T00:00:00Z"}}
      ]}},
      "lockout": {{"max_failures": 3, "window_seconds": {lockout_window}}},
      "policies": [
        {{"name": "admin", "match": {{"path_prefix": "/admin"}}, "signature": false, "api_key": {{"roles": ["admin"]}}}},
        {{"name": "both", "match": {{"path_prefix": "/both"}}, "api_key": {{}}}},
        {{"name": "loopback-v4", "match": {{"path_prefix": "/v4"}}, "signature": false, "ip": {{"allow": ["127.0.0.0/8"]}}}},
        {{"name": "mapped", "match": {{"path_prefix": "/mapped"}}, "signature": false, "ip": {{"allow": ["::ffff:127.0.0.0/104"]}}}},
        {{"name": "v6", "match": {{"path_prefix": "/v6"}}, "signature": false, "ip": {{"allow": ["::1/128"]}}}},
        {{"name": "deny-local", "match": {{"path_prefix": "/denied"}}, "signature": false, "ip": {{"allow": ["0.0.0.0/0", "::/0"], "deny": ["127.0.0.1", "::1"]}}}},
        {{"name": "keyed", "signature": false, "api_key": {{}}}}
      ]
    }}"#,
        client = hash_key(CLIENT_KEY),
        admin = hash_key(ADMIN_KEY),
        expired = hash_key(EXPIRED_KEY),
        future = hash_key(FUTURE_KEY),
    )
}

fn envoy() -> Envoy {
    Envoy::start(Options::with_config(&config(300)))
}

#[test]
fn valid_invalid_expired_and_not_yet_valid_keys() {
    let envoy = envoy();
    let r = envoy.request("GET", "/data", &[("x-api-key", CLIENT_KEY)], b"");
    assert_eq!(r.status, 200);
    let cases = [
        (vec![], 401, "missing_api_key"),
        (vec![("x-api-key", "ew_guess")], 401, "invalid_api_key"),
        (vec![("x-api-key", EXPIRED_KEY)], 401, "expired_api_key"),
        (
            vec![("x-api-key", FUTURE_KEY)],
            401,
            "api_key_not_yet_valid",
        ),
    ];
    for (headers, status, code) in cases {
        let r = envoy.request("GET", "/data", &headers, b"");
        assert_eq!((r.status, r.code()), (status, code.to_string()));
        assert_eq!(
            r.header("www-authenticate"),
            Some("ApiKey realm=\"edge-warden\"")
        );
    }
    // Bearer works when allowed.
    let bearer = format!("Bearer {CLIENT_KEY}");
    let r = envoy.request("GET", "/data", &[("authorization", &bearer)], b"");
    assert_eq!(r.status, 200);
    assert!(
        r.json()["headers"].get("authorization").is_none(),
        "the bearer key went upstream"
    );
}

#[test]
fn roles_gate_admin_routes() {
    let envoy = envoy();
    let r = envoy.request("GET", "/admin/users", &[("x-api-key", CLIENT_KEY)], b"");
    assert_eq!((r.status, r.code()), (403, "insufficient_role".into()));
    let r = envoy.request("GET", "/admin/users", &[("x-api-key", ADMIN_KEY)], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["x-edge-warden-role"], "admin");
}

#[test]
fn a_route_can_require_key_and_signature_together() {
    let envoy = envoy();
    let s = Signed::new(SECRET, b"{}");
    let r = envoy.request("POST", "/both", &s.headers(), b"{}");
    assert_eq!(r.code(), "missing_api_key");
    let r = envoy.request("POST", "/both", &[("x-api-key", CLIENT_KEY)], b"{}");
    assert_eq!(r.code(), "missing_signature");
    let s = Signed::new(SECRET, b"{}");
    let mut headers = s.headers();
    headers.push(("x-api-key", CLIENT_KEY));
    let r = envoy.request("POST", "/both", &headers, b"{}");
    assert_eq!(r.status, 200);
    let echo = r.json();
    assert_eq!(echo["headers"]["x-edge-warden-api-key-id"], "ci-bot");
    assert_eq!(echo["headers"]["x-edge-warden-key-id"], "primary");
}

#[test]
fn the_raw_key_is_stripped_and_identity_headers_cannot_be_spoofed() {
    let envoy = envoy();
    let headers = [
        ("x-api-key", CLIENT_KEY),
        ("x-edge-warden-api-key-id", "ops"),
        ("x-edge-warden-role", "admin"),
        ("x-edge-warden-client", "key:ops"),
    ];
    let r = envoy.request("GET", "/data", &headers, b"");
    assert_eq!(r.status, 200);
    let h = &r.json()["headers"];
    assert!(
        h.get("x-api-key").is_none(),
        "the raw key reached the upstream"
    );
    assert_eq!(h["x-edge-warden-api-key-id"], "ci-bot");
    assert_eq!(h["x-edge-warden-role"], "client");
    assert_eq!(h["x-edge-warden-client"], "key:ci-bot");
    // Without a key the client header names the address Envoy saw; spoofed copies are gone.
    let r = envoy.request("GET", "/v4", &headers[1..], b"");
    let h = &r.json()["headers"];
    assert_eq!(h["x-edge-warden-client"], "ip:127.0.0.1");
    assert!(h.get("x-edge-warden-role").is_none());
    // The key never appears in Envoy's log; its id may.
    std::thread::sleep(Duration::from_millis(100));
    assert!(!envoy.log().contains(CLIENT_KEY));
}

#[test]
fn ipv4_ipv6_and_mapped_addresses_are_allowed_and_denied() {
    let envoy = Envoy::start(Options {
        dual_stack: true,
        ..Options::with_config(&config(300))
    });
    // Over IPv4 (seen by Envoy as IPv4 or as ::ffff:127.0.0.1 on the dual-stack listener).
    assert_eq!(envoy.request("GET", "/v4", &[], b"").status, 200);
    assert_eq!(envoy.request("GET", "/mapped", &[], b"").status, 200);
    let r = envoy.request("GET", "/v6", &[], b"");
    assert_eq!((r.status, r.code()), (403, "ip_not_allowed".into()));
    let r = envoy.request("GET", "/denied", &[], b"");
    assert_eq!((r.status, r.code()), (403, "ip_not_allowed".into()));
    // Over IPv6.
    assert_eq!(envoy.request_v6("GET", "/v6", &[]).status, 200);
    let r = envoy.request_v6("GET", "/v4", &[]);
    assert_eq!((r.status, r.code()), (403, "ip_not_allowed".into()));
    let r = envoy.request_v6("GET", "/denied", &[]);
    assert_eq!((r.status, r.code()), (403, "ip_not_allowed".into()));
}

#[test]
fn repeated_failures_lock_the_address_out_until_the_window_ends() {
    let envoy = Envoy::start(Options {
        dual_stack: true,
        ..Options::with_config(&config(4))
    });
    // Wrong key, wrong signature, wrong key: three failures, on separate connections (so on
    // either worker at --concurrency 2).
    assert_eq!(
        envoy
            .request("GET", "/data", &[("x-api-key", "ew_guess1")], b"")
            .status,
        401
    );
    let mut bad_sig = Signed::new(SECRET, b"x");
    bad_sig.signature = "0".repeat(64);
    let mut headers = bad_sig.headers();
    headers.push(("x-api-key", CLIENT_KEY));
    assert_eq!(
        envoy.request("POST", "/both", &headers, b"x").code(),
        "invalid_signature"
    );
    assert_eq!(
        envoy
            .request("GET", "/data", &[("x-api-key", "ew_guess2")], b"")
            .status,
        401
    );

    // Now even a valid key is refused, with Retry-After, on whichever worker takes the
    // connection (30 connections: both workers get some, checked below).
    for _ in 0..29 {
        let r = envoy.request("GET", "/data", &[("x-api-key", CLIENT_KEY)], b"");
        assert_eq!((r.status, r.code()), (429, "too_many_auth_failures".into()));
    }
    let r = envoy.request("GET", "/data", &[("x-api-key", CLIENT_KEY)], b"");
    assert_eq!((r.status, r.code()), (429, "too_many_auth_failures".into()));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=4).contains(&retry), "retry-after {retry}");
    // Public routes stay open.
    assert_eq!(envoy.request("GET", "/v4", &[], b"").status, 200);
    // The count is per address: a client on another address (here IPv6 loopback) is unaffected.
    assert_eq!(
        envoy
            .request_v6("GET", "/data", &[("x-api-key", CLIENT_KEY)])
            .status,
        200
    );

    // The failures and the refusals above were spread over both workers: the count is shared.
    let per_worker = envoy.connections_per_worker();
    assert!(
        per_worker.len() == 2 && per_worker.iter().all(|n| *n > 0),
        "{per_worker:?}"
    );

    std::thread::sleep(Duration::from_secs(retry + 1));
    assert_eq!(
        envoy
            .request("GET", "/data", &[("x-api-key", CLIENT_KEY)], b"")
            .status,
        200
    );
}

#[test]
fn keygen_output_pasted_into_a_config_is_accepted_by_the_filter() {
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["keygen", "--admin", "-n", "2", "--valid-days", "90"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let block = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    // The raw keys are on standard error only, once each, as `  id  key`.
    let keys: Vec<(&str, &str)> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("  ")?.split_once("  "))
        .collect();
    assert_eq!(keys.len(), 2, "{stderr}");
    for (id, key) in &keys {
        assert!(key.starts_with("ew_") && key.len() >= 3 + 43, "{stderr}");
        assert!(block.contains(&format!(r#""id": "{id}""#)), "{block}");
        assert!(
            !block.contains(key),
            "a raw key on standard output:\n{block}"
        );
    }
    assert!(block.starts_with("\"api_keys\": {"), "{block}");

    // As the README says: the block pasted into the top-level object, a comma after it.
    let config = format!(
        r#"{{
{block},
"policies": [{{"name": "admin", "signature": false, "api_key": {{"roles": ["admin"]}}}}]
}}"#
    );
    let compiled = edge_warden::config::Config::from_json(config.as_bytes(), &|_| None)
        .unwrap_or_else(|e| panic!("{e}\n{config}"));
    assert_eq!(compiled.api_keys.len(), 2);
    // Or its entry lines copied into an existing list, after an entry that gains a comma.
    let lines: String = block
        .lines()
        .filter(|l| l.trim_start().starts_with("{ \"id\""))
        .collect::<Vec<_>>()
        .join("\n");
    let existing = format!(
        r#"{{"api_keys": {{"keys": [
    {{ "id": "legacy", "role": "client", "sha256": "{}" }},
{lines}
  ]}},
  "policies": [{{"name": "admin", "signature": false, "api_key": {{"roles": ["admin"]}}}}]}}"#,
        hash_key(CLIENT_KEY)
    );
    let compiled = edge_warden::config::Config::from_json(existing.as_bytes(), &|_| None)
        .unwrap_or_else(|e| panic!("{e}\n{existing}"));
    assert_eq!(compiled.api_keys.len(), 3);

    let envoy = Envoy::start(Options::with_config(&config));
    for (id, key) in keys {
        let r = envoy.request("GET", "/ops", &[("x-api-key", key)], b"");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["headers"]["x-edge-warden-api-key-id"], id);
        assert_eq!(r.json()["headers"]["x-edge-warden-role"], "admin");
    }
}

#[test]
fn hash_key_matches_the_filter() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["hash-key", "--id", "ci-bot"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{CLIENT_KEY}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let entry: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(entry["sha256"], hash_key(CLIENT_KEY));
    assert_eq!(entry["role"], "client");
}
