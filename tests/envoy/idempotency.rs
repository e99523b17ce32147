//! Idempotency keys through a real Envoy: the demo upstream numbers what it receives
//! (`receipt`), and Envoy counts the requests it sent upstream, so "the upstream saw one" is
//! measured, not assumed. Each test runs on the runtime `EDGE_WARDEN_RUNTIME` names; the fleet
//! test starts Redis and edge-warden-state too.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use crate::fleet::{fleet_envoy_with, Redis, StateService};
use crate::harness::{fresh_nonce, now, Envoy, Options, Resp, Signed, SECRET};

fn policies() -> &'static str {
    r#"
    {"name": "orders", "match": {"path_prefix": "/orders"}, "signature": false,
     "idempotency": {"max_response_bytes": 4096}},
    {"name": "large", "match": {"path_prefix": "/large"}, "signature": false,
     "idempotency": {"max_response_bytes": 1048576}},
    {"name": "small", "match": {"path_prefix": "/small"}, "signature": false,
     "idempotency": {"max_response_bytes": 64}},
    {"name": "brief", "match": {"path_prefix": "/brief"}, "signature": false,
     "idempotency": {"ttl_seconds": 2}},
    {"name": "optional", "match": {"path_prefix": "/optional"}, "signature": false,
     "idempotency": {"required": false}},
    {"name": "signed-orders", "match": {"path_prefix": "/signed-orders"}, "idempotency": {}}"#
}

fn config() -> String {
    format!(
        r#"{{
      "signature": {{"secrets": [{{"id": "primary", "env": "HMAC_SHARED_SECRET"}}]}},
      "policies": [{}]
    }}"#,
        policies()
    )
}

fn envoy() -> Envoy {
    Envoy::start(Options::with_config(&config()))
}

/// Requests Envoy sent to the upstream (its own count).
fn upstream_requests(envoy: &Envoy) -> i64 {
    envoy.cluster_stat("demo_upstream", "upstream_rq_total")
}

fn post(envoy: &Envoy, path: &str, key: &str, body: &[u8], extra: &[(&str, &str)]) -> Resp {
    let mut headers = vec![
        ("idempotency-key", key),
        ("content-type", "application/json"),
    ];
    headers.extend_from_slice(extra);
    envoy.request("POST", path, &headers, body)
}

#[test]
fn a_sequential_duplicate_is_replayed_and_the_upstream_sees_one() {
    let envoy = envoy();
    let first = post(&envoy, "/orders", "\"order-1\"", b"{\"qty\":1}", &[]);
    assert_eq!(first.status, 200);
    assert_eq!(first.header("idempotent-replayed"), None);
    let receipt = first.json()["receipt"].clone();
    let sent = upstream_requests(&envoy);
    assert_eq!(sent, 1);
    for key in ["\"order-1\"", "order-1"] {
        let again = post(&envoy, "/orders", key, b"{\"qty\":1}", &[]);
        assert_eq!(again.status, 200);
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
        assert_eq!(again.header("content-type"), Some("application/json"));
        assert_eq!(again.body, first.body, "the stored body, byte for byte");
        assert_eq!(again.json()["receipt"], receipt);
        // Every reply gets the security headers, a replay too.
        assert_eq!(again.header("x-content-type-options"), Some("nosniff"));
    }
    // The reference services' header names the same key.
    let legacy = envoy.request(
        "POST",
        "/orders",
        &[("x-idempotency-key", "order-1")],
        b"{\"qty\":1}",
    );
    assert_eq!(legacy.header("idempotent-replayed"), Some("true"));
    assert_eq!(
        upstream_requests(&envoy),
        sent,
        "no replay reached the upstream"
    );
    assert_eq!(
        envoy.settled_total("edge_warden_idempotent_replays_total"),
        Some(3)
    );
}

#[test]
fn a_response_of_many_chunks_is_stored_whole() {
    let envoy = envoy();
    let first = post(
        &envoy,
        "/large",
        "big-2",
        b"{}",
        &[("x-demo-pad-bytes", "600000")],
    );
    assert_eq!(first.status, 200);
    assert!(first.body.len() > 600_000);
    let again = post(&envoy, "/large", "big-2", b"{}", &[]);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body.len(), first.body.len());
    assert!(again.body == first.body, "the stored body, byte for byte");
}

#[test]
fn a_client_that_goes_away_does_not_hold_its_key() {
    use std::io::Write;
    let envoy = envoy();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", envoy.port)).unwrap();
    stream
        .write_all(
            b"POST /orders HTTP/1.1\r\nhost: localhost\r\nidempotency-key: gone-1\r\n\
              x-demo-delay-ms: 3000\r\ncontent-length: 2\r\n\r\n{}",
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    drop(stream);
    std::thread::sleep(Duration::from_millis(300));
    let r = post(&envoy, "/orders", "gone-1", b"{}", &[]);
    assert_eq!((r.status, r.header("idempotent-replayed")), (200, None));
}

#[test]
fn keys_are_required_where_configured_and_checked() {
    let envoy = envoy();
    let r = envoy.request("POST", "/orders", &[], b"{}");
    assert_eq!(
        (r.status, r.code()),
        (400, "idempotency_key_missing".into())
    );
    let r = envoy.request("DELETE", "/orders/7", &[], b"");
    assert_eq!(
        (r.status, r.code()),
        (400, "idempotency_key_missing".into())
    );
    for bad in ["two words", "\"unterminated", &"k".repeat(256)] {
        let r = post(&envoy, "/orders", bad, b"{}", &[]);
        assert_eq!(
            (r.status, r.code()),
            (400, "idempotency_key_invalid".into())
        );
        assert!(
            !String::from_utf8_lossy(&r.body).contains(bad),
            "never echoed"
        );
    }
    let r = envoy.request(
        "POST",
        "/orders",
        &[("idempotency-key", "a"), ("x-idempotency-key", "b")],
        b"{}",
    );
    assert_eq!(r.code(), "idempotency_key_invalid");
    // GET is not covered; an optional policy takes requests without a key.
    assert_eq!(envoy.request("GET", "/orders", &[], b"").status, 200);
    assert_eq!(envoy.request("POST", "/optional", &[], b"{}").status, 200);
    let first = post(&envoy, "/optional", "opt-1", b"{}", &[]);
    let again = post(&envoy, "/optional", "opt-1", b"{}", &[]);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body);
}

#[test]
fn thirty_two_concurrent_duplicates_reach_the_upstream_once() {
    let envoy = Arc::new(envoy());
    let before = upstream_requests(&envoy);
    let start = Arc::new(Barrier::new(32));
    let threads: Vec<_> = (0..32)
        .map(|_| {
            let (envoy, start) = (envoy.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                // The upstream holds the first one long enough for all to arrive.
                let r = post(
                    &envoy,
                    "/orders",
                    "burst-1",
                    b"{\"qty\":32}",
                    &[("x-demo-delay-ms", "1500")],
                );
                let code = if r.status == 200 {
                    String::new()
                } else {
                    r.code()
                };
                (r.status, code, r.header("retry-after").map(String::from))
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let passed = results.iter().filter(|(s, _, _)| *s == 200).count();
    assert_eq!(passed, 1, "{results:?}");
    for (status, code, retry_after) in &results {
        if *status != 200 {
            assert_eq!(
                (*status, code.as_str()),
                (409, "idempotency_request_in_progress")
            );
            assert_eq!(retry_after.as_deref(), Some("1"));
        }
    }
    assert_eq!(upstream_requests(&envoy) - before, 1);
    // Once it is done, the duplicates get its response.
    let r = post(&envoy, "/orders", "burst-1", b"{\"qty\":32}", &[]);
    assert_eq!(r.header("idempotent-replayed"), Some("true"));
}

#[test]
fn a_key_reused_for_another_request_is_refused() {
    let envoy = envoy();
    assert_eq!(
        post(&envoy, "/orders", "reuse-1", b"{\"qty\":1}", &[]).status,
        200
    );
    let other_body = post(&envoy, "/orders", "reuse-1", b"{\"qty\":2}", &[]);
    assert_eq!(
        (other_body.status, other_body.code()),
        (422, "idempotency_key_reused".into())
    );
    let other_path = post(&envoy, "/orders/2", "reuse-1", b"{\"qty\":1}", &[]);
    assert_eq!(other_path.code(), "idempotency_key_reused");
    let other_method = envoy.request(
        "PUT",
        "/orders",
        &[("idempotency-key", "reuse-1")],
        b"{\"qty\":1}",
    );
    assert_eq!(other_method.code(), "idempotency_key_reused");
}

#[test]
fn a_5xx_is_not_stored_and_the_retry_goes_through() {
    let envoy = envoy();
    let failed = post(
        &envoy,
        "/orders",
        "flaky-1",
        b"{}",
        &[("x-demo-status", "503")],
    );
    assert_eq!(failed.status, 503);
    let retry = post(&envoy, "/orders", "flaky-1", b"{}", &[]);
    assert_eq!(retry.status, 200);
    assert_eq!(retry.header("idempotent-replayed"), None);
    assert_ne!(retry.json()["receipt"], failed.json()["receipt"]);
    // A 4xx is the outcome of the operation: it is stored like a 2xx.
    let refused = post(
        &envoy,
        "/orders",
        "bad-1",
        b"{}",
        &[("x-demo-status", "400")],
    );
    assert_eq!(refused.status, 400);
    let again = post(&envoy, "/orders", "bad-1", b"{}", &[]);
    assert_eq!(
        (again.status, again.header("idempotent-replayed")),
        (400, Some("true"))
    );
}

#[test]
fn an_upstream_that_resets_does_not_poison_the_key() {
    let envoy = Envoy::start(Options {
        dead_upstream: true,
        ..Options::with_config(&config())
    });
    let r = post(&envoy, "/orders", "dead-1", b"{}", &[]);
    assert_eq!(r.status, 503);
    let r = post(&envoy, "/orders", "dead-1", b"{}", &[]);
    assert_eq!(
        r.status, 503,
        "tried again, not refused as in progress or replayed"
    );
    assert_eq!(r.header("idempotent-replayed"), None);
}

#[test]
fn a_response_over_the_cap_completes_the_key_without_keeping_it() {
    let envoy = envoy();
    // The demo upstream's echo is a few hundred bytes: over `small`'s 64.
    assert_eq!(post(&envoy, "/small", "big-1", b"{}", &[]).status, 200);
    let r = post(&envoy, "/small", "big-1", b"{}", &[]);
    assert_eq!(
        (r.status, r.code()),
        (409, "idempotency_response_not_stored".into())
    );
}

#[test]
fn a_stored_response_expires_after_its_ttl() {
    let envoy = envoy();
    let first = post(&envoy, "/brief", "ttl-1", b"{}", &[]);
    let again = post(&envoy, "/brief", "ttl-1", b"{}", &[]);
    assert_eq!(again.json()["receipt"], first.json()["receipt"]);
    std::thread::sleep(Duration::from_millis(3100));
    let later = post(&envoy, "/brief", "ttl-1", b"{}", &[]);
    assert_eq!(later.header("idempotent-replayed"), None);
    assert_ne!(later.json()["receipt"], first.json()["receipt"]);
}

#[test]
fn a_signed_retry_with_a_fresh_nonce_gets_the_stored_response() {
    let envoy = envoy();
    let body = b"{\"amount\":25}";
    let first_nonce = fresh_nonce();
    let signed = Signed::at(SECRET, body, now(), &first_nonce);
    let mut headers = signed.headers();
    headers.push(("idempotency-key", "pay-1"));
    let first = envoy.request("POST", "/signed-orders", &headers, body);
    assert_eq!(first.status, 200);
    assert_eq!(first.json()["headers"]["x-edge-warden-key-id"], "primary");
    // The same transmission again is an attack, refused by its nonce first.
    let replay = envoy.request("POST", "/signed-orders", &headers, body);
    assert_eq!(
        (replay.status, replay.code()),
        (401, "nonce_replayed".into())
    );
    // A legitimate retry signs afresh with the same key.
    let retry = Signed::new(SECRET, body);
    let mut headers = retry.headers();
    headers.push(("idempotency-key", "pay-1"));
    let again = envoy.request("POST", "/signed-orders", &headers, body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body);
}
#[test]
fn with_the_fleet_store_a_duplicate_at_the_second_envoy_is_replayed() {
    let redis = Redis::start();
    let service = StateService::start(redis.port);
    let config = format!(
        r#"{{
      "signature": {{"secrets": [{{"id": "primary", "env": "HMAC_SHARED_SECRET"}}]}},
      "remote_state": {{"cluster": "edge_warden_state", "timeout_ms": 1000}},
      "policies": [{}]
    }}"#,
        policies()
    );
    let with_config = |opts: &mut Options| opts.plugin_config = Some(config.clone());
    let a = fleet_envoy_with(&[service.port], "fail_closed", with_config);
    let a = Arc::new(a);
    let b = fleet_envoy_with(&[service.port], "fail_closed", with_config);
    let first = post(&a, "/orders", "fleet-1", b"{\"qty\":1}", &[]);
    assert_eq!(first.status, 200);
    let at_b = post(&b, "/orders", "fleet-1", b"{\"qty\":1}", &[]);
    assert_eq!(
        at_b.header("idempotent-replayed"),
        Some("true"),
        "{}",
        at_b.status
    );
    assert_eq!(at_b.body, first.body);
    assert_eq!(upstream_requests(&a), 1);
    assert_eq!(upstream_requests(&b), 0, "b never sent it upstream");
    let reused = post(&b, "/orders", "fleet-1", b"{\"qty\":2}", &[]);
    assert_eq!(reused.code(), "idempotency_key_reused");
    // While one Envoy's request is in flight, the other refuses the duplicate.
    let slow = std::thread::spawn({
        let a = a.clone();
        move || {
            post(
                &a,
                "/orders",
                "fleet-2",
                b"{}",
                &[("x-demo-delay-ms", "1500")],
            )
            .status
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let r = post(&b, "/orders", "fleet-2", b"{}", &[]);
    assert_eq!(
        (r.status, r.code()),
        (409, "idempotency_request_in_progress".into())
    );
    assert_eq!(slow.join().unwrap(), 200);
    let r = post(&b, "/orders", "fleet-2", b"{}", &[]);
    assert_eq!(
        r.header("idempotent-replayed"),
        Some("true"),
        "{}",
        r.status
    );
    // A response near the 1 MiB cap crosses the fleet store whole, both ways.
    let big = post(
        &a,
        "/large",
        "fleet-3",
        b"{}",
        &[("x-demo-pad-bytes", "1000000")],
    );
    assert_eq!(big.status, 200);
    let at_b = post(&b, "/large", "fleet-3", b"{}", &[]);
    assert_eq!(at_b.header("idempotent-replayed"), Some("true"));
    assert!(
        at_b.body == big.body,
        "{} bytes replayed of {}",
        at_b.body.len(),
        big.body.len()
    );
    assert!(redis.keys() >= 3, "the records are in Redis");
}
