//! What a request asks of the host. Host calls are the filter's main cost (bench/results.md), so
//! the calls a passing request makes are pinned here, counted exactly by `bench/hostcalls.mjs`:
//! a mock proxy-wasm host in Node that drives the built .wasm through signed 1 KiB POSTs the way
//! Envoy does. (Envoy itself cannot count them; the behaviour through Envoy is tested elsewhere.)

use std::process::Command;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::harness::{repo, wasm, SECRET};

const API_KEY: &str = "ew_test_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";
const ORIGIN: &str = "https://app.example.com";

/// Runs `requests` signed requests through the filter under `policy`; the counts per request.
fn count(policy: Value, requests: u32) -> Value {
    let config = json!({
        "signature": {"secrets": [{"id": "test", "env": "BENCH_SECRET"}]},
        "api_keys": {"keys": [{"id": "client-1", "role": "client",
                               "sha256": hex::encode(Sha256::digest(API_KEY))}]},
        "lockout": {"enabled": true},
        "policies": [policy],
        "security_headers": {"preset": "owasp"},
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let out = Command::new("node")
        .arg("--no-warnings")
        .arg(repo().join("bench/hostcalls.mjs"))
        .arg(wasm())
        .arg(&path)
        .arg(requests.to_string())
        .env("BENCH_SECRET", SECRET)
        .env("BENCH_API_KEY", API_KEY)
        .env("BENCH_ORIGIN", ORIGIN)
        .output()
        .expect("node");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        counts["statuses"],
        json!({"200": requests}),
        "every request must pass: {counts}"
    );
    counts
}

#[test]
fn a_signed_api_key_request_makes_ten_host_calls_and_never_reads_the_address() {
    let counts = count(
        json!({"name": "api", "signature": true, "api_key": {},
               "cors": {"allow_origins": [ORIGIN], "allow_credentials": true}}),
        300,
    );
    // Headers in and out, response headers in and out, the body, the lockout summary, and the
    // nonce's read + compare-and-swap write. Two clock reads: one for the header-time checks,
    // one when the body ends, since a body held open must not outlast its timestamp's window.
    // Metrics go out on the tick.
    assert_eq!(
        counts["host_call_counts"],
        json!({
            "proxy_get_buffer_bytes": 1,
            "proxy_get_current_time_nanoseconds": 2,
            "proxy_get_header_map_pairs": 2,
            "proxy_get_shared_data": 2,
            "proxy_set_header_map_pairs": 2,
            "proxy_set_shared_data": 1,
        }),
        "{counts}"
    );
    // And the calls did their job: identity headers set, the raw key gone.
    let upstream = &counts["upstream_headers"];
    assert_eq!(
        upstream["x-edge-warden-client"], "key:client-1",
        "{upstream}"
    );
    assert_eq!(upstream["x-edge-warden-key-id"], "test", "{upstream}");
    assert!(upstream.get("x-api-key").is_none(), "{upstream}");
}

#[test]
fn a_keyless_signed_request_reads_the_address_once_for_its_client_header() {
    // Without an API key the rate limiters key on `ip:<address>`, so the address is needed.
    let counts = count(json!({"name": "signed", "signature": true}), 300);
    assert_eq!(
        counts["host_call_counts"]["proxy_get_property"],
        json!(1),
        "{counts}"
    );
    assert_eq!(
        counts["upstream_headers"]["x-edge-warden-client"], "ip:127.0.0.1",
        "{counts}"
    );
}
