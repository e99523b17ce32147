//! Signed requests and replay protection through a real Envoy.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::harness::{fresh_nonce, now, Envoy, Options, Signed, SECRET};

#[test]
fn valid_signed_post_reaches_the_upstream_byte_for_byte() {
    let envoy = Envoy::start(Options::default());
    // Not UTF-8, with CR/LF and NUL: the signature covers raw bytes.
    let body: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 256) as u8).collect();
    let r = envoy.signed("POST", "/api/orders?x=1", &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let echo = r.json();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/api/orders?x=1");
    assert_eq!(echo["body_length"], 5000);
    assert_eq!(echo["body_sha256"], hex::encode(Sha256::digest(&body)));
    assert_eq!(echo["headers"]["x-edge-warden-key-id"], "primary");
}

#[test]
fn get_with_empty_body_signs_timestamp_and_nonce() {
    let envoy = Envoy::start(Options::default());
    let r = envoy.signed("GET", "/api/items", b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_length"], 0);
}

#[test]
fn client_copies_of_the_identity_header_never_reach_the_upstream() {
    let envoy = Envoy::start(Options::default());
    let s = Signed::new(SECRET, b"{}");
    let mut headers = s.headers();
    headers.push(("x-edge-warden-key-id", "admin"));
    let r = envoy.request("POST", "/api", &headers, b"{}");
    assert_eq!(r.json()["headers"]["x-edge-warden-key-id"], "primary");
    // On a public route the header is removed, not passed on.
    let r = envoy.request("GET", "/health", &[("x-edge-warden-key-id", "admin")], b"");
    assert_eq!(r.status, 200);
    assert!(r.json()["headers"].get("x-edge-warden-key-id").is_none());
}

#[test]
fn tampering_with_body_timestamp_nonce_or_signature_is_refused() {
    let envoy = Envoy::start(Options::default());
    let body = br#"{"amount": 10}"#;
    let good = Signed::new(SECRET, body);

    let r = envoy.request("POST", "/api", &good.headers(), br#"{"amount": 99}"#);
    assert_eq!((r.status, r.code()), (401, "invalid_signature".into()));
    assert!(r
        .header("www-authenticate")
        .is_some_and(|v| v.starts_with("HMAC-SHA256")));

    let mut s = good.clone();
    s.timestamp = (now() - 1).to_string();
    let r = envoy.request("POST", "/api", &s.headers(), body);
    assert_eq!((r.status, r.code()), (401, "invalid_signature".into()));

    let mut s = good.clone();
    s.nonce = fresh_nonce();
    let r = envoy.request("POST", "/api", &s.headers(), body);
    assert_eq!((r.status, r.code()), (401, "invalid_signature".into()));

    let mut s = good.clone();
    s.signature = Signed::new("another-secret-that-is-long-enough-000", body).signature;
    let r = envoy.request("POST", "/api", &s.headers(), body);
    assert_eq!((r.status, r.code()), (401, "invalid_signature".into()));

    // The untouched request still passes: the failures above did not burn its nonce.
    let r = envoy.request("POST", "/api", &good.headers(), body);
    assert_eq!(r.status, 200);
}

#[test]
fn timestamp_window_boundary_holds_on_both_sides() {
    let envoy = Envoy::start(Options::default());
    // 299 s is inside ±300 even if a second ticks between signing and checking; 302 is outside.
    for offset in [-299i64, 299] {
        let ts = (now() as i64 + offset) as u64;
        let s = Signed::at(SECRET, b"x", ts, &fresh_nonce());
        let r = envoy.request("POST", "/api", &s.headers(), b"x");
        assert_eq!(r.status, 200, "offset {offset}");
    }
    for (offset, words) in [(-302i64, "s old"), (302, "s in the future")] {
        let ts = (now() as i64 + offset) as u64;
        let s = Signed::at(SECRET, b"x", ts, &fresh_nonce());
        let r = envoy.request("POST", "/api", &s.headers(), b"x");
        assert_eq!(
            (r.status, r.code()),
            (401, "timestamp_out_of_window".into())
        );
        let detail = r.json()["detail"].as_str().unwrap_or_default().to_string();
        assert!(detail.contains(words), "{detail}");
    }
}

#[test]
fn a_replayed_request_is_refused() {
    let envoy = Envoy::start(Options::default());
    let s = Signed::new(SECRET, b"pay");
    assert_eq!(
        envoy.request("POST", "/api", &s.headers(), b"pay").status,
        200
    );
    let r = envoy.request("POST", "/api", &s.headers(), b"pay");
    assert_eq!((r.status, r.code()), (401, "nonce_replayed".into()));
    // A retry of the same operation signs again with a fresh nonce, and passes.
    assert_eq!(envoy.signed("POST", "/api", b"pay").status, 200);
}

#[test]
fn concurrent_replays_across_workers_let_exactly_one_through() {
    let envoy = Arc::new(Envoy::start(Options {
        concurrency: 2,
        ..Options::default()
    }));
    for round in 0..10 {
        let s = Signed::new(SECRET, b"transfer");
        let n = 32;
        let barrier = Arc::new(Barrier::new(n));
        let threads: Vec<_> = (0..n)
            .map(|_| {
                let (envoy, s, barrier) = (Arc::clone(&envoy), s.clone(), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    let r = envoy.request("POST", "/api", &s.headers(), b"transfer");
                    if r.status == 200 {
                        "ok".to_string()
                    } else {
                        r.code()
                    }
                })
            })
            .collect();
        let results: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let passed = results.iter().filter(|r| *r == "ok").count();
        let replayed = results.iter().filter(|r| *r == "nonce_replayed").count();
        assert_eq!((passed, replayed), (1, n - 1), "round {round}: {results:?}");
    }
    let per_worker = envoy.connections_per_worker();
    assert!(
        per_worker.len() == 2 && per_worker.iter().all(|n| *n > 0),
        "{per_worker:?}"
    );
}

#[test]
fn rotation_accepts_both_secrets_and_names_the_one_that_matched() {
    let old = "old-secret-old-secret-old-secret-0000";
    let config = r#"{
      "signature": {"secrets": [
        {"id": "2026-11", "env": "HMAC_SHARED_SECRET"},
        {"id": "2026-08", "env": "HMAC_PREVIOUS_SECRET"}
      ]},
      "policies": [{"name": "signed"}]
    }"#;
    let mut opts = Options::with_config(config);
    opts.env.push(("HMAC_PREVIOUS_SECRET".into(), old.into()));
    opts.host_env_keys.push("HMAC_PREVIOUS_SECRET".into());
    let envoy = Envoy::start(opts);

    let r = envoy.signed("POST", "/api", b"new");
    assert_eq!(r.json()["headers"]["x-edge-warden-key-id"], "2026-11");
    let s = Signed::new(old, b"old");
    let r = envoy.request("POST", "/api", &s.headers(), b"old");
    assert_eq!(r.json()["headers"]["x-edge-warden-key-id"], "2026-08");
    let s = Signed::new("retired-secret-retired-secret-0000000", b"x");
    let r = envoy.request("POST", "/api", &s.headers(), b"x");
    assert_eq!(r.code(), "invalid_signature");
}

#[test]
fn missing_headers_are_named_in_the_rejection() {
    let envoy = Envoy::start(Options::default());
    let s = Signed::new(SECRET, b"x");
    for (i, name) in [
        "X-Request-Signature",
        "X-Request-Timestamp",
        "X-Request-Nonce",
    ]
    .iter()
    .enumerate()
    {
        let mut headers = s.headers();
        headers.remove(i);
        let r = envoy.request("POST", "/api", &headers, b"x");
        assert_eq!((r.status, r.code()), (401, "missing_signature".into()));
        let detail = r.json()["detail"].as_str().unwrap_or_default().to_string();
        assert!(
            detail.starts_with(&format!("The {name} header")),
            "{detail}"
        );
    }
}

#[test]
fn malformed_headers_are_400() {
    let envoy = Envoy::start(Options::default());
    let cases = [
        ("x-request-signature", "not-hex".repeat(9) + "0"),
        ("x-request-signature", "ab".repeat(31)),
        ("x-request-timestamp", "12.5".to_string()),
        ("x-request-timestamp", "yesterday".to_string()),
        ("x-request-nonce", "short".to_string()),
        ("x-request-nonce", "n".repeat(129)),
        ("x-request-nonce", "has.dots.and/slashes".to_string()),
    ];
    for (name, value) in cases {
        let s = Signed::new(SECRET, b"x");
        let mut headers = s.headers();
        headers.retain(|(n, _)| *n != name);
        headers.push((name, value.as_str()));
        let r = envoy.request("POST", "/api", &headers, b"x");
        assert_eq!(
            (r.status, r.code()),
            (400, "malformed_header".into()),
            "{name}: {value}"
        );
    }
}

#[test]
fn duplicated_signature_headers_are_refused() {
    let envoy = Envoy::start(Options::default());
    let s = Signed::new(SECRET, b"");
    let request = format!(
        "GET /api HTTP/1.1\r\nhost: x\r\nx-request-signature: {sig}\r\n\
         x-request-timestamp: {ts}\r\nx-request-nonce: {n}\r\nx-request-nonce: {n}\r\n\
         connection: close\r\n\r\n",
        sig = s.signature,
        ts = s.timestamp,
        n = s.nonce
    );
    let answer = envoy.raw(&[request.as_bytes()], Duration::ZERO);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("\"code\":\"malformed_header\""), "{answer}");
}

#[test]
fn chunked_body_arriving_in_pieces_is_verified() {
    let envoy = Envoy::start(Options::default());
    let body = b"first piece|second piece|third piece".to_vec();
    let s = Signed::new(SECRET, &body);
    let pieces: Vec<&[u8]> = body.split_inclusive(|b| *b == b'|').collect();
    let parts = chunked_request("/api/upload", &s, &pieces, true);
    let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    let answer = envoy.raw(&parts, Duration::from_millis(50));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains(&hex::encode(Sha256::digest(&body))),
        "upstream saw a different body: {answer}"
    );
}

#[test]
fn oversize_bodies_get_413_without_waiting() {
    let config = r#"{
      "signature": {"secrets": [{"id": "primary", "env": "HMAC_SHARED_SECRET"}]},
      "max_body_bytes": 1024,
      "policies": [{"name": "big", "match": {"path_prefix": "/big"}, "max_body_bytes": 8388608},
                   {"name": "signed"}]
    }"#;
    let mut opts = Options::with_config(config);
    opts.buffer_limit = Some(1_048_576);
    let envoy = Envoy::start(opts);

    // Declared length over the limit: refused from the headers alone.
    let body = vec![b'a'; 1025];
    let r = envoy.signed("POST", "/api", &body);
    assert_eq!((r.status, r.code()), (413, "body_too_large".into()));
    assert!(r.json()["detail"]
        .as_str()
        .unwrap_or_default()
        .contains("1024 bytes"));

    // Exactly at the limit passes.
    assert_eq!(envoy.signed("POST", "/api", &vec![b'a'; 1024]).status, 200);

    // Chunked, no length: refused as the bytes arrive.
    let s = Signed::new(SECRET, &[b'a'; 4000]);
    let piece = [b'a'; 1000];
    let parts = chunked_request("/api", &s, &[&piece, &piece, &piece], false);
    let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    let answer = envoy.raw(&parts, Duration::from_millis(20));
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");

    // Past Envoy's own buffer limit (1 MiB here) on a route that allows 8 MiB: Envoy's 413.
    let big = vec![b'b'; 3 * 1024 * 1024];
    let s = Signed::new(SECRET, &big);
    let pieces: Vec<&[u8]> = big.chunks(256 * 1024).collect();
    let parts = chunked_request("/big", &s, &pieces, true);
    let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    let answer = envoy.raw(&parts, Duration::ZERO);
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "{}",
        &answer[..answer.len().min(300)]
    );
    // Envoy's own 413 still passes through edge-warden's response path.
    assert!(
        answer.contains("x-frame-options: DENY"),
        "{}",
        &answer[..answer.len().min(600)]
    );
}

/// A signed chunked POST as raw HTTP/1.1: the head, one chunk per piece, then (if `terminate`)
/// the last chunk. `terminate: false` leaves the stream open, as a client still uploading would.
fn chunked_request(path: &str, s: &Signed, pieces: &[&[u8]], terminate: bool) -> Vec<Vec<u8>> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\
         x-request-signature: {}\r\nx-request-timestamp: {}\r\nx-request-nonce: {}\r\n\
         connection: close\r\n\r\n",
        s.signature, s.timestamp, s.nonce
    );
    let mut parts = vec![head.into_bytes()];
    for piece in pieces {
        let mut chunk = format!("{:x}\r\n", piece.len()).into_bytes();
        chunk.extend_from_slice(piece);
        chunk.extend_from_slice(b"\r\n");
        parts.push(chunk);
    }
    if terminate {
        parts.push(b"0\r\n\r\n".to_vec());
    }
    parts
}

#[test]
fn health_is_public_and_everything_else_needs_a_signature() {
    let envoy = Envoy::start(Options::default());
    assert_eq!(envoy.request("GET", "/health", &[], b"").status, 200);
    assert_eq!(envoy.request("GET", "/health/live", &[], b"").status, 200);
    for (method, path) in [
        ("POST", "/health"),
        ("GET", "/healthz"),
        ("GET", "/api"),
        ("GET", "/"),
    ] {
        let r = envoy.request(method, path, &[], b"");
        assert_eq!(
            (r.status, r.code()),
            (401, "missing_signature".into()),
            "{method} {path}"
        );
        assert!(r.json()["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()));
    }
    // Envoy normalises the path before edge-warden matches it: no dot-segment bypass.
    let answer = envoy.raw(
        &[b"GET /health/../admin HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"],
        Duration::ZERO,
    );
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}

#[test]
fn a_flood_of_unique_nonces_stays_within_the_cache_bound() {
    let config = r#"{
      "signature": {"secrets": [{"id": "primary", "env": "HMAC_SHARED_SECRET"}]},
      "replay": {"capacity": 256},
      "policies": [{"name": "signed"}]
    }"#;
    let envoy = Envoy::start(Options::with_config(config));
    // Under /health: the one route envoy.yaml does not rate-limit, so only the cache decides.
    let (mut ok, mut full) = (0, 0);
    for _ in 0..600 {
        let r = envoy.signed("POST", "/health/flood", b"flood");
        match r.status {
            200 => ok += 1,
            429 => {
                assert_eq!(r.code(), "replay_cache_full");
                let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
                // Until the slice of the earliest expiry ends: 300 s and up to 10 s more.
                assert!((1..=311).contains(&retry), "retry-after {retry}");
                full += 1;
            }
            other => panic!("unexpected {other}: {}", String::from_utf8_lossy(&r.body)),
        }
    }
    // One shard of 256: the cache never holds more, whatever the flood.
    assert_eq!(ok, 256);
    assert_eq!(ok + full, 600);
    let entries = envoy
        .settled_stat("edge_warden_replay_cache_entries")
        .expect("gauge");
    assert_eq!(entries, ok as i64);
    assert_eq!(envoy.total("edge_warden_allowed_total"), Some(ok as i64));
    assert_eq!(envoy.total("edge_warden_rejected_total"), Some(full as i64));
}

#[test]
fn the_secret_never_appears_in_logs_or_responses() {
    let envoy = Envoy::start(Options {
        args: vec!["-l".into(), "debug".into()],
        ..Options::default()
    });
    let mut bodies = Vec::new();
    let s = Signed::new(SECRET, b"x");
    bodies.push(
        envoy
            .request("POST", "/api", &s.headers(), b"tampered")
            .body,
    );
    bodies.push(envoy.request("POST", "/api", &s.headers(), b"x").body);
    bodies.push(envoy.request("POST", "/api", &s.headers(), b"x").body);
    bodies.push(envoy.request("POST", "/api", &[], b"x").body);
    let expected_for_tampered =
        Signed::at(SECRET, b"tampered", s.timestamp.parse().unwrap(), &s.nonce);
    for body in &bodies {
        let text = String::from_utf8_lossy(body);
        assert!(!text.contains(SECRET));
        assert!(!text.contains(&expected_for_tampered.signature), "{text}");
    }
    std::thread::sleep(Duration::from_millis(200));
    let log = envoy.log();
    assert!(
        log.contains(r#""event":"request_rejected","code":"invalid_signature""#),
        "no security event logged"
    );
    assert!(!log.contains(SECRET), "the secret is in Envoy's debug log");
    assert!(
        !log.contains(&SECRET[..16]),
        "part of the secret is in Envoy's debug log"
    );
    assert!(!log.contains(&expected_for_tampered.signature));
}
