//! What the state service answers, fed back into a held request: the native runtime decodes it
//! in Envoy's process with no sandbox, so no answer (garbage, a truncated frame, a gRPC error, a
//! lying message) may panic, and every outcome is one a runtime can carry out.
//!
//! Input: byte 0 picks the request (a signed GET, a request with a valid API key, one with a
//! wrong key), byte 1 how the answer arrives (the message as the wasm host hands it over, or a
//! whole HTTP/2 response as the native callout sees it: header lines, an empty line, the body;
//! see `common.rs`), the rest is that answer.
#![no_main]

mod common;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use edge_warden::checks::api_key::hash_key;
use edge_warden::checks::signature::sign;
use edge_warden::config::Config;
use edge_warden::engine::{Action, Engine, Exchange, Host, LocalState, Metric};
use edge_warden::remote::{self, Unavailable};
use edge_warden::store::MemoryStore;
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const KEY: &str = "ew_fuzz_key_0123456789abcdefghijklmnop";
const NOW: u64 = 1_800_000_000;

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let json = format!(
            r#"{{
          "signature": {{"secrets": [{{"id": "new", "env": "S"}}]}},
          "api_keys": {{"keys": [{{"id": "bot", "sha256": "{}", "role": "client"}}]}},
          "lockout": {{"max_failures": 3, "window_seconds": 60}},
          "remote_state": {{"cluster": "state"}},
          "policies": [
            {{"name": "keyed", "match": {{"path_prefix": "/keyed"}}, "signature": false, "api_key": {{}}}},
            {{"name": "signed"}}
          ]
        }}"#,
            hash_key(KEY)
        );
        let config = Config::from_json(json.as_bytes(), &|_| Some(SECRET.to_string()))
            .expect("the fuzz config loads");
        let state = LocalState::new(&config, MemoryStore::default());
        state.prepare().expect("shards");
        Engine::new(config, Box::new(state))
    })
}

/// Each input comes from its own address, so the local lockout does not answer them all.
struct FuzzHost(IpAddr);

impl Host for FuzzHost {
    fn now(&mut self) -> u64 {
        NOW
    }
    fn client_address(&mut self) -> Option<IpAddr> {
        Some(self.0)
    }
    fn route_name(&mut self) -> Option<String> {
        None
    }
    fn response_code_details(&mut self) -> Vec<u8> {
        Vec::new()
    }
    fn count(&mut self, _metric: Metric, _delta: i64) {}
}

fn headers(pairs: &[(&str, String)]) -> Vec<(String, Vec<u8>)> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.clone().into_bytes()))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let (Some(&which), Some(&how)) = (data.first(), data.get(1)) else {
        return;
    };
    let answer = &data[2..];
    let engine = engine();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut host = FuzzHost(IpAddr::from(
        0x0a00_0000u32.wrapping_add(n as u32).to_be_bytes(),
    ));
    let mut base = vec![
        (":method", "GET".to_string()),
        (":authority", "api.example.com".to_string()),
    ];
    match which % 3 {
        0 => {
            // A fresh nonce each time, or the local cache would refuse it before any call.
            let nonce = format!("fuzz-nonce-{n:016x}");
            let ts = NOW.to_string();
            base.push((":path", "/orders".into()));
            base.push((
                "x-request-signature",
                sign(SECRET.as_bytes(), b"", &ts, &nonce),
            ));
            base.push(("x-request-timestamp", ts));
            base.push(("x-request-nonce", nonce));
        }
        1 => {
            base.push((":path", "/keyed".into()));
            base.push(("x-api-key", KEY.into()));
        }
        _ => {
            base.push((":path", "/keyed".into()));
            base.push(("x-api-key", "ew_wrong_fuzz_key_0123456789abcdefghij".into()));
        }
    }
    let mut exchange = Exchange::new();
    let action = exchange.on_request_headers(engine, headers(&base), true, &mut host);
    let Action::Call(_) = action else {
        panic!("no call to the state service: {action:?}");
    };
    let answer = match how % 3 {
        0 => Ok(answer.to_vec()),
        1 => {
            let (pairs, body) = common::split_request(answer);
            remote::grpc_answer(&pairs, body)
        }
        _ => Err(Unavailable("fuzz")),
    };
    match exchange.on_state_answer(engine, answer, &mut host) {
        Action::Continue(edits) => {
            assert!(which % 3 != 2, "a wrong key passed");
            assert!(edits.list.iter().all(|(n, _)| !n.starts_with(':')));
        }
        Action::Reply(reply) => {
            assert!(
                (400..600).contains(&reply.status),
                "status {}",
                reply.status
            );
            let v: serde_json::Value =
                serde_json::from_slice(&reply.body).expect("a problem+json body");
            assert!(v["code"].is_string());
        }
        other => panic!("after the answer: {other:?}"),
    }
    // A second, late answer changes nothing.
    assert!(matches!(
        exchange.on_state_answer(engine, Ok(Vec::new()), &mut host),
        Action::Pause
    ));
});
