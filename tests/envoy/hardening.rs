//! Regression tests for the holes an adversarial review found (issue #16), each reproduced
//! through a real Envoy running the shipped configuration.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use edge_warden::checks::api_key::hash_key;
use edge_warden::checks::signature::sign;

use crate::harness::{fresh_nonce, now, Envoy, Options, Signed, SECRET};

const KEY: &str = "ew_hardening_key_0123456789abcdefghijklmnopqr";

/// Policies for the address tests: an allowlist, keyed routes (required and optional), and an
/// open one whose rate-limit identity is the client address.
fn config() -> String {
    format!(
        r#"{{
      "signature": {{"secrets": [{{"id": "primary", "env": "HMAC_SHARED_SECRET"}}]}},
      "api_keys": {{"keys": [{{"id": "ci-bot", "sha256": "{}", "role": "client"}}]}},
      "lockout": {{"max_failures": 3, "window_seconds": 300}},
      "policies": [
        {{"name": "internal", "match": {{"path_prefix": "/internal"}}, "signature": false, "ip": {{"allow": ["10.0.0.0/8"]}}}},
        {{"name": "login", "match": {{"path_prefix": "/auth"}}, "signature": false}},
        {{"name": "optional", "match": {{"path_prefix": "/optional"}}, "signature": false, "api_key": {{"required": false}}}},
        {{"name": "open", "match": {{"path_prefix": "/open"}}, "signature": false}},
        {{"name": "keyed", "signature": false, "api_key": {{}}}}
      ]
    }}"#,
        hash_key(KEY)
    )
}

fn envoy_with(opts: Options) -> Envoy {
    Envoy::start(Options {
        plugin_config: Some(config()),
        ..opts
    })
}

fn key(value: &str) -> (&'static str, &str) {
    ("x-api-key", value)
}

#[test]
fn x_forwarded_for_does_not_pass_an_ip_allowlist() {
    let envoy = envoy_with(Options::default());
    let r = envoy.request("GET", "/internal", &[("x-forwarded-for", "10.1.2.3")], b"");
    assert_eq!((r.status, r.code()), (403, "ip_not_allowed".into()));
    // What the upstream is told is the peer's address, whatever the header said.
    let r = envoy.request("GET", "/open", &[("x-forwarded-for", "10.1.2.3")], b"");
    assert_eq!(r.json()["headers"]["x-edge-warden-client"], "ip:127.0.0.1");
}

#[test]
fn x_forwarded_for_neither_escapes_a_lockout_nor_locks_out_a_victim() {
    let envoy = envoy_with(Options {
        dual_stack: true,
        ..Options::default()
    });
    // Wrong keys "from" the victim (the IPv6 loopback), really sent over IPv4.
    for _ in 0..3 {
        let r = envoy.request(
            "GET",
            "/data",
            &[key("ew_guess"), ("x-forwarded-for", "::1")],
            b"",
        );
        assert_eq!(r.code(), "invalid_api_key");
    }
    // The sender is locked out, with or without a fresh X-Forwarded-For each time.
    for i in 0..4 {
        let xff = format!("198.51.100.{i}");
        let r = envoy.request("GET", "/data", &[key(KEY), ("x-forwarded-for", &xff)], b"");
        assert_eq!((r.status, r.code()), (429, "too_many_auth_failures".into()));
    }
    // The victim is not.
    assert_eq!(envoy.request_v6("GET", "/data", &[key(KEY)]).status, 200);
}

#[test]
fn a_rotating_x_forwarded_for_does_not_multiply_the_auth_rate_limit() {
    let envoy = envoy_with(Options::default());
    // The /auth/ tier allows 5 per minute per caller; the caller is `ip:<peer>`.
    let statuses: Vec<u16> = (0..7)
        .map(|i| {
            let xff = format!("203.0.113.{i}");
            envoy
                .request("GET", "/auth/login", &[("x-forwarded-for", &xff)], b"")
                .status
        })
        .collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
}

#[test]
fn behind_a_trusted_load_balancer_ipv6_clients_are_locked_out_by_their_64() {
    // One trusted hop: Envoy takes the client from the last X-Forwarded-For entry, the one the
    // load balancer appended (README "Client addresses and lockout").
    let envoy = envoy_with(Options {
        edits: vec![("xff_num_trusted_hops: 0", "xff_num_trusted_hops: 1".into())],
        ..Options::default()
    });
    let from = |addr: &str, k: &str| {
        envoy.request(
            "GET",
            "/data",
            &[key(k), ("x-forwarded-for", &format!("192.0.2.1, {addr}"))],
            b"",
        )
    };
    let r = from("2001:db8:1:2::1", KEY);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["x-edge-warden-client"], "key:ci-bot");
    // Three guesses from three addresses of one /64.
    for host in ["a", "b", "c"] {
        assert_eq!(
            from(&format!("2001:db8:1:2::{host}"), "ew_guess").code(),
            "invalid_api_key"
        );
    }
    let r = from("2001:db8:1:2:ffff:ffff:ffff:ffff", KEY);
    assert_eq!((r.status, r.code()), (429, "too_many_auth_failures".into()));
    // The neighbouring /64 and IPv4 clients are unaffected.
    assert_eq!(from("2001:db8:1:3::1", KEY).status, 200);
    assert_eq!(from("192.0.2.44", KEY).status, 200);
}

#[test]
fn a_locked_out_address_is_refused_on_routes_where_the_key_is_optional() {
    let envoy = envoy_with(Options::default());
    for _ in 0..3 {
        let r = envoy.request("GET", "/optional", &[key("ew_guess")], b"");
        assert_eq!(r.code(), "invalid_api_key");
    }
    let r = envoy.request("GET", "/optional", &[key(KEY)], b"");
    assert_eq!((r.status, r.code()), (429, "too_many_auth_failures".into()));
    // Without a credential there is nothing to guess: the optional route still serves.
    assert_eq!(envoy.request("GET", "/optional", &[], b"").status, 200);
}

#[test]
fn the_raw_api_key_never_reaches_the_upstream_even_on_routes_without_a_key_policy() {
    let envoy = envoy_with(Options::default());
    let r = envoy.request("GET", "/open", &[key(KEY)], b"");
    assert_eq!(r.status, 200);
    assert!(
        r.json()["headers"].get("x-api-key").is_none(),
        "{}",
        r.json()
    );
}

#[test]
fn identity_headers_spelled_with_underscores_never_reach_the_upstream() {
    // The shipped configuration refuses such header names outright.
    let envoy = envoy_with(Options::default());
    let r = envoy.request("GET", "/open", &[("x_edge_warden_role", "admin")], b"");
    assert_eq!(r.status, 400);
    // A configuration that lets them through still gets them removed by edge-warden.
    let envoy = envoy_with(Options {
        edits: vec![(
            "headers_with_underscores_action: REJECT_REQUEST",
            "headers_with_underscores_action: ALLOW".into(),
        )],
        ..Options::default()
    });
    let r = envoy.request(
        "GET",
        "/data",
        &[
            key(KEY),
            ("x_edge_warden_role", "admin"),
            ("X_Edge_Warden_Client", "key:ops"),
            ("x_other_header", "kept"),
        ],
        b"",
    );
    assert_eq!(r.status, 200);
    let headers = r.json()["headers"].clone();
    assert_eq!(headers["x-edge-warden-role"], "client", "{headers}");
    assert_eq!(headers["x-edge-warden-client"], "key:ci-bot", "{headers}");
    assert!(headers.get("x_edge_warden_role").is_none(), "{headers}");
    assert!(headers.get("x_edge_warden_client").is_none(), "{headers}");
    assert_eq!(headers["x_other_header"], "kept", "{headers}");
}

/// Sends `head` and the first part of the body now, the rest after `hold`; what came back.
fn held_request(
    envoy: &Envoy,
    head: &str,
    body: &[u8],
    hold: Duration,
    meanwhile: impl FnOnce(),
) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", envoy.port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let (first, rest) = body.split_at(body.len() / 2);
    stream.write_all(head.as_bytes()).expect("head");
    stream.write_all(first).expect("first half");
    std::thread::sleep(hold / 2);
    meanwhile();
    std::thread::sleep(hold / 2);
    // Envoy may have answered already; then this write fails and the answer is read below.
    let _ = stream.write_all(rest);
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn signed_head(path: &str, s: &Signed, length: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: edge\r\nConnection: close\r\nContent-Length: {length}\r\n\
         X-Request-Signature: {}\r\nX-Request-Timestamp: {}\r\nX-Request-Nonce: {}\r\n\r\n",
        s.signature, s.timestamp, s.nonce
    )
}

#[test]
fn a_replay_whose_body_is_held_past_the_window_is_refused() {
    // A 2 s window and one shard, so any later nonce purges the first one's expired record.
    let envoy = Envoy::start(Options::with_config(
        r#"{"signature": {"secrets": [{"id": "primary", "env": "HMAC_SHARED_SECRET"}],
                          "window_seconds": 2},
            "replay": {"capacity": 64},
            "policies": [{"name": "signed"}]}"#,
    ));
    let body = b"amount=100&to=mallory";
    let captured = Signed::new(SECRET, body);
    assert_eq!(
        envoy
            .request("POST", "/pay", &captured.headers(), body)
            .status,
        200
    );
    // The replay's headers arrive inside the window; its body ends after it, once another
    // client's request has purged the captured nonce's record.
    let answer = held_request(
        &envoy,
        &signed_head("/pay", &captured, body.len()),
        body,
        Duration::from_millis(4000),
        || assert_eq!(envoy.signed("POST", "/pay", b"other").status, 200),
    );
    assert!(
        answer.starts_with("HTTP/1.1 401") && answer.contains("timestamp_out_of_window"),
        "{answer}"
    );
}

#[test]
fn an_unauthenticated_body_dripped_slowly_is_cut_at_the_request_deadline() {
    // The shipped deadline is 60 s; 2 s here keeps the test short. Dripping bytes every 200 ms
    // keeps the stream from ever being idle: only the request deadline ends it.
    let envoy = Envoy::start(Options {
        edits: vec![("request_timeout: 60s", "request_timeout: 2s".into())],
        ..Options::default()
    });
    let mut s = Signed::new(SECRET, b"never verified");
    s.signature = "0".repeat(64);
    let mut stream = TcpStream::connect(("127.0.0.1", envoy.port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    stream
        .write_all(signed_head("/orders", &s, 1_000_000).as_bytes())
        .expect("head");
    let mut answer = Vec::new();
    for _ in 0..100 {
        if stream.write_all(&[b'x'; 100]).is_err() {
            break;
        }
        let mut buf = [0u8; 4096];
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if answer.ends_with(b"stream timeout") || answer.len() > 100 {
            break;
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let (_, stats) = envoy.admin("/stats?filter=^http.edge.downstream_rq_timeout$");
    assert!(
        stats.contains("http.edge.downstream_rq_timeout: 1"),
        "{stats}"
    );
}

#[test]
fn http2_clients_are_held_to_16_streams_and_a_2_mib_window() {
    let envoy = envoy_with(Options::default());
    // HTTP/2 with prior knowledge: the client preface and an empty SETTINGS frame, then read
    // the server's SETTINGS (RFC 9113 section 6.5).
    let mut stream = TcpStream::connect(("127.0.0.1", envoy.port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .expect("preface");
    let mut header = [0u8; 9];
    stream.read_exact(&mut header).expect("frame header");
    assert_eq!(header[3], 0x4, "the first frame is SETTINGS");
    let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload).expect("settings");
    let settings: Vec<(u16, u32)> = payload
        .chunks_exact(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect();
    // 0x3 SETTINGS_MAX_CONCURRENT_STREAMS, 0x4 SETTINGS_INITIAL_WINDOW_SIZE.
    assert!(settings.contains(&(0x3, 16)), "{settings:?}");
    assert!(settings.contains(&(0x4, 2 * 1024 * 1024)), "{settings:?}");
}

#[test]
fn a_timestamp_with_leading_zeros_is_refused() {
    let envoy = Envoy::start(Options::default());
    let nonce = fresh_nonce();
    let ts = now().to_string();
    // Signed over body `amount=10` and timestamp T; sent as body `amount=1` and timestamp 0T.
    let signature = sign(SECRET.as_bytes(), b"amount=10", &ts, &nonce);
    let zero_ts = format!("0{ts}");
    let headers = [
        ("x-request-signature", signature.as_str()),
        ("x-request-timestamp", zero_ts.as_str()),
        ("x-request-nonce", nonce.as_str()),
    ];
    let r = envoy.request("POST", "/orders", &headers, b"amount=1");
    assert_eq!((r.status, r.code()), (400, "malformed_header".into()));
    assert!(r.json()["detail"]
        .as_str()
        .unwrap()
        .contains("X-Request-Timestamp"));
}

#[test]
fn a_forged_request_id_reaches_neither_the_log_nor_the_reply() {
    let envoy = envoy_with(Options::default());
    let forged = "x code=ok status=200 policy=admin";
    let huge = "a".repeat(20_000);
    for id in [forged, huge.as_str()] {
        let r = envoy.request("GET", "/data", &[("x-request-id", id)], b"");
        assert_eq!(r.code(), "missing_api_key");
        let echoed = r.json()["request_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        // Envoy's own id (a UUID) replaces the client's at the edge.
        assert_eq!(echoed.len(), 36, "{echoed}");
        assert_ne!(echoed, id);
    }
    std::thread::sleep(Duration::from_millis(200));
    let log = envoy.log();
    assert!(log.contains(r#""code":"missing_api_key""#), "{log}");
    assert!(!log.contains("code=ok"), "the forged field reached the log");
    assert!(!log.contains(forged), "the forged id reached the log");
    assert!(
        !log.contains(&"a".repeat(200)),
        "the 20 KB id reached the log"
    );
}

#[test]
fn passing_requests_appear_in_the_access_log() {
    let envoy = Envoy::start(Options::default());
    assert_eq!(envoy.request("GET", "/health", &[], b"").status, 200);
    let r = envoy.request("GET", "/orders", &[], b"");
    assert_eq!(r.status, 401);
    std::thread::sleep(Duration::from_millis(300));
    let log = envoy.access_log();
    assert!(log.contains("\"GET /health HTTP/1.1\" 200"), "{log}");
    assert!(log.contains("\"GET /orders HTTP/1.1\" 401"), "{log}");
}

#[test]
fn a_load_time_warning_is_logged_once_not_once_per_vm() {
    // The shipped configuration allows `https://*.workers.dev`, a public suffix.
    let envoy = Envoy::start(Options::default());
    assert_eq!(envoy.request("GET", "/health", &[], b"").status, 200);
    let log = envoy.log_once_it_has("covers a public suffix");
    assert_eq!(log.matches("covers a public suffix").count(), 1, "{log}");
}

/// The native module's test build whose hooks panic on request (`make native-faults`).
fn faulty_native_envoy() -> Envoy {
    let dir = crate::harness::repo().join("target/faults/native");
    assert!(
        dir.join("libedge_warden.so").exists(),
        "no target/faults/native/libedge_warden.so: run `make native-faults`"
    );
    Envoy::start(Options {
        runtime: Some(crate::harness::Runtime::Native),
        module_dir: Some(dir),
        ..Options::default()
    })
}

#[test]
fn a_panic_in_the_native_module_is_a_500_and_envoy_keeps_serving() {
    let envoy = faulty_native_envoy();
    for hook in ["headers", "body"] {
        let signed = Signed::new(SECRET, b"{}");
        let mut headers = signed.headers();
        headers.push(("x-edge-warden-fault", hook));
        let r = envoy.request("POST", "/orders", &headers, b"{}");
        assert_eq!(
            (r.status, r.code()),
            (500, "internal_error".into()),
            "{hook}"
        );
        // Envoy is still up, on every worker, and the next request is judged as usual.
        for _ in 0..4 {
            assert_eq!(envoy.signed("POST", "/orders", b"{}").status, 200);
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let log = envoy.log();
    assert!(
        log.contains("edge-warden: internal error in request_headers; the request was refused"),
        "{log}"
    );
    assert!(log.contains("internal error in request_body"), "{log}");
    // The panic's location is logged, not its message (which could quote the request).
    assert!(
        log.contains("edge-warden: panic at src/native/mod.rs:"),
        "{log}"
    );
    assert!(!log.contains("fault injected"), "{log}");
}
