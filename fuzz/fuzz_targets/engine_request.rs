//! The engine's whole request path, as a runtime drives it: request headers, the body in
//! chunks, trailers or end of stream, then response headers and body (kept for an idempotency
//! key, and replayed to later inputs with the same key), and the response's end or the stream's.
//! The native runtime runs this code in Envoy's process with no sandbox, so nothing a client
//! sends may panic here.
//!
//! Input: three `\n`-separated fields (unix clock, client address, flags), then header lines, an
//! empty line and the body (see `common.rs`). Flags: byte 0 is the body chunk size, byte 1 bit 0
//! ends the body with trailers instead of end of stream, byte 2 picks the response status,
//! byte 5 bit 0 ends the stream without its response ending (the client went away). Policies
//! cover every check, uploads (streamed and signed) and idempotency keys included. Checks,
//! besides "no panic": every local reply is a well-formed 2xx/4xx/5xx with no pseudo-headers
//! and, for an error, a problem+json body (a replayed response excepted); a request is never
//! both answered and passed; header edits never set a pseudo-header.
#![no_main]

mod common;

use std::net::IpAddr;
use std::sync::OnceLock;

use edge_warden::checks::api_key::hash_key;
use edge_warden::config::Config;
use edge_warden::engine::{Action, Engine, Exchange, Host, LocalState, Metric, ResponseAction};
use edge_warden::store::MemoryStore;
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const KEY: &str = "ew_fuzz_key_0123456789abcdefghijklmnop";

/// One engine for the whole run, as in Envoy (its replay cache and lockout fill up as they
/// would under traffic).
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let json = format!(
            r#"{{
          "signature": {{"secrets": [{{"id": "new", "env": "S"}}, {{"id": "old", "env": "S2"}}],
                         "window_seconds": 300}},
          "replay": {{"capacity": 1024}},
          "api_keys": {{"allow_bearer": true, "keys": [
            {{"id": "bot", "sha256": "{}", "role": "client"}},
            {{"id": "old", "sha256": "{}", "role": "admin", "expires_at": "2020-01-01T00:00:00Z"}}]}},
          "lockout": {{"max_failures": 3, "window_seconds": 60, "capacity": 64}},
          "idempotency": {{"capacity": 16}},
          "policies": [
            {{"name": "orders", "match": {{"path_prefix": "/orders"}}, "signature": false,
              "max_body_bytes": 4096, "idempotency": {{"max_response_bytes": 64}}}},
            {{"name": "signed-orders", "match": {{"path_prefix": "/signed-orders"}},
              "idempotency": {{"required": false, "methods": ["POST", "GET"]}}}},
            {{"name": "health", "match": {{"path_prefix": "/health", "methods": ["GET"]}}, "signature": false}},
            {{"name": "internal", "match": {{"path_prefix": "/internal"}}, "signature": false,
              "ip": {{"allow": ["10.0.0.0/8", "2001:db8::/32"], "deny": ["10.9.0.0/16"]}}}},
            {{"name": "admin", "match": {{"route": "admin"}}, "signature": false, "api_key": {{"roles": ["admin"]}}}},
            {{"name": "optional", "match": {{"path_prefix": "/optional"}}, "signature": false, "api_key": {{"required": false}}}},
            {{"name": "browser", "match": {{"path_prefix": "/browser"}}, "max_body_bytes": 4096,
              "trusted_hosts": ["api.example.com", "*.example.com:8443"],
              "cors": {{"allow_origins": ["https://app.example.com", "https://*.example.org", "null"],
                        "allow_methods": ["GET", "POST"], "allow_credentials": true,
                        "expose_headers": ["x-total"]}}}},
            {{"name": "both", "match": {{"path": "/both"}}, "api_key": {{}}}},
            {{"name": "uploads", "match": {{"path_prefix": "/uploads"}}, "signature": false,
              "upload": {{"allowed_extensions": ["mp3", "png", "pdf"], "max_file_bytes": 4096,
                          "max_files": 2, "max_parts": 4, "max_part_header_bytes": 256}}}},
            {{"name": "signed-uploads", "match": {{"path_prefix": "/signed-uploads"}},
              "max_body_bytes": 8192, "upload": {{"allowed_extensions": ["wav"]}}}},
            {{"name": "streamed", "match": {{"path_prefix": "/streamed"}}, "signature": false,
              "request": {{"methods": ["POST", "PUT"], "content_types": ["application/json"],
                          "max_body_bytes": 512,
                          "required_headers": [{{"name": "x-device-id", "pattern": "^[A-Za-z0-9_-]{{1,64}}$"}}]}}}},
            {{"name": "shaped-signed", "match": {{"path_prefix": "/shaped"}}, "request": {{"max_body_bytes": 100}}}},
            {{"name": "rfc9421", "match": {{"path_prefix": "/rfc"}}, "max_body_bytes": 4096,
              "signature": {{"scheme": "rfc9421", "components": ["@method", "@path", "content-digest"],
                             "require_nonce": false}}}},
            {{"name": "stripe", "match": {{"path": "/hooks/stripe"}},
              "signature": {{"scheme": "stripe", "secrets": [{{"id": "st", "env": "S"}}]}}}},
            {{"name": "github", "match": {{"path": "/hooks/github"}},
              "signature": {{"scheme": "github", "secrets": [{{"id": "gh", "env": "S"}}]}}}},
            {{"name": "slack", "match": {{"path": "/hooks/slack"}},
              "signature": {{"scheme": "slack", "secrets": [{{"id": "sl", "env": "S"}}]}}}},
            {{"name": "standard", "match": {{"path": "/hooks/standard"}},
              "signature": {{"scheme": "standard_webhooks", "secrets": [{{"id": "sw", "env": "SW"}}]}}}},
            {{"name": "digest", "match": {{"path_prefix": "/digest"}}, "signature": false, "content_digest": true}},
            {{"name": "signed", "max_body_bytes": 65536}}
          ],
          "security_headers": {{"preset": "owasp", "headers": {{"X-Extra": {{"set": "1"}}}}}}
        }}"#,
            hash_key(KEY),
            hash_key("ew_expired_fuzz_key_0123456789abcdefghij"),
        );
        let env = |name: &str| match name {
            "S" => Some(SECRET.to_string()),
            "S2" => Some(format!("old-{SECRET}")),
            "SW" => Some("whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".to_string()),
            _ => None,
        };
        let config = Config::from_json(json.as_bytes(), &env).expect("the fuzz config loads");
        let state = LocalState::new(&config, MemoryStore::default());
        state.prepare().expect("shards");
        Engine::new(config, Box::new(state))
    })
}

struct FuzzHost {
    now: u64,
    address: Option<IpAddr>,
    route: Option<String>,
    details: Vec<u8>,
}

impl Host for FuzzHost {
    fn now(&mut self) -> u64 {
        self.now
    }
    fn client_address(&mut self) -> Option<IpAddr> {
        self.address
    }
    fn route_name(&mut self) -> Option<String> {
        self.route.clone()
    }
    fn response_code_details(&mut self) -> Vec<u8> {
        self.details.clone()
    }
    fn count(&mut self, _metric: Metric, _delta: i64) {}
}

/// What a runtime would do with an action; false once the request is answered.
fn check(action: &Action) -> bool {
    match action {
        Action::Continue(edits) => {
            for (name, _) in &edits.list {
                assert!(!name.starts_with(':'), "an edit touched {name}");
            }
            true
        }
        Action::Pause => true,
        // This engine has no remote_state (state_answer.rs fuzzes that path).
        Action::Call(_) => panic!("a state call without remote_state"),
        Action::Reply(reply) => {
            assert!(
                (200..600).contains(&reply.status),
                "status {}",
                reply.status
            );
            assert!(reply.headers.iter().all(|(n, _)| !n.starts_with(':')));
            let replayed = reply
                .headers
                .iter()
                .any(|(n, _)| n == "idempotent-replayed");
            if reply.status >= 400 && !replayed {
                let v: serde_json::Value =
                    serde_json::from_slice(&reply.body).expect("a problem+json body");
                assert_eq!(v["status"].as_u64(), Some(u64::from(reply.status)));
                assert!(v["code"].is_string());
            }
            false
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let ([clock, address, flags], rest) = common::fields::<3>(data);
    let (pairs, body) = common::split_request(rest);
    let now = std::str::from_utf8(clock)
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
        .unwrap_or(1_800_000_000);
    let mut host = FuzzHost {
        now,
        address: std::str::from_utf8(address)
            .ok()
            .and_then(edge_warden::checks::ip::parse_source),
        route: flags.get(3).map(|b| {
            if b % 2 == 0 {
                "admin".to_string()
            } else {
                "general".to_string()
            }
        }),
        details: if flags.get(4).is_some_and(|b| b % 2 == 0) {
            b"local_rate_limited".to_vec()
        } else {
            b"via_upstream".to_vec()
        },
    };
    let chunk = usize::from(flags.first().copied().unwrap_or(0)).max(1);
    let trailers = flags.get(1).is_some_and(|b| b & 1 == 1);
    let engine = engine();
    let mut x = Exchange::new();

    let action = x.on_request_headers(engine, pairs, body.is_empty() && !trailers, &mut host);
    let mut open = check(&action);
    let mut passed = matches!(action, Action::Continue(_));
    let mut chunks = body.chunks(chunk).peekable();
    while let Some(part) = chunks.next() {
        let last = chunks.peek().is_none() && !trailers;
        let action = x.on_request_body(engine, part, last, &mut host);
        if open {
            open = check(&action);
            passed |= matches!(action, Action::Continue(_)) && !x.wants_body();
        }
    }
    if trailers {
        let action = x.on_request_trailers(engine, &mut host);
        if open {
            check(&action);
        }
    }
    if x.answered() {
        assert!(!x.wants_body());
        return;
    }
    let _ = passed;
    let status = match flags.get(2).copied().unwrap_or(0) % 4 {
        0 => "200",
        1 => "429",
        2 => "404",
        _ => "503",
    };
    let response = vec![
        (":status".to_string(), status.as_bytes().to_vec()),
        ("x-ratelimit-reset".to_string(), b"7".to_vec()),
        ("vary".to_string(), b"Accept-Encoding".to_vec()),
        ("x-powered-by".to_string(), b"php".to_vec()),
    ];
    if let ResponseAction::Replace(headers) = x.on_response_headers(engine, response, &mut host) {
        assert!(headers.iter().any(|(n, _)| n == ":status"));
        assert!(!headers.iter().any(|(n, _)| n == "x-powered-by"));
    }
    if let Some(body) = x.take_replacement_body() {
        let v: serde_json::Value = serde_json::from_slice(&body).expect("problem+json");
        assert_eq!(v["code"], "rate_limited");
    }
    if x.wants_response_body() {
        for part in body.chunks(chunk) {
            x.on_response_body(part);
        }
    }
    if flags.get(5).is_some_and(|b| b & 1 == 1) {
        x.on_stream_end(engine, &mut host);
    } else {
        // Without remote_state the key completes here, with no call to make.
        assert!(x.on_response_end(engine, &mut host).is_none());
    }
    assert!(!x.captures_response());
});
