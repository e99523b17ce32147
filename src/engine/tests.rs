//! The pipeline with the in-memory store and a scripted host: order of checks, what each
//! rejection leaves behind, preflights, identity headers, trailers.

use std::cell::Cell;
use std::net::IpAddr;
use std::sync::Arc;

use super::*;
use crate::checks::signature::sign;
use crate::store::MemoryStore;

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const KEY: &str = "ew_engine_test_key_0123456789abcdefghij";
const NOW: u64 = 1_800_000_000;

fn config_json() -> String {
    format!(
        r#"{{
      "signature": {{"secrets": [{{"id": "primary", "env": "S"}}], "window_seconds": 300}},
      "api_keys": {{"keys": [{{"id": "bot", "sha256": "{}", "role": "client"}}]}},
      "lockout": {{"max_failures": 2, "window_seconds": 300}},
      "policies": [
        {{"name": "health", "match": {{"path_prefix": "/health"}}, "signature": false}},
        {{"name": "internal", "match": {{"path_prefix": "/internal"}}, "signature": false,
          "ip": {{"allow": ["10.0.0.0/8"]}}}},
        {{"name": "keyed", "match": {{"path_prefix": "/keyed"}}, "signature": false, "api_key": {{}}}},
        {{"name": "browser", "match": {{"path_prefix": "/browser"}},
          "cors": {{"allow_origins": ["https://app.example.com"], "allow_methods": ["POST"]}}}},
        {{"name": "signed", "match": {{"path_prefix": "/"}}, "trusted_hosts": ["api.example.com"]}}
      ]
    }}"#,
        crate::checks::api_key::hash_key(KEY)
    )
}

fn engine() -> (Engine, Arc<LocalState<MemoryStore>>) {
    engine_of(&config_json())
}

/// The test configuration with the fleet's shared state behind it.
fn fleet_engine(failure_mode: &str) -> (Engine, Arc<LocalState<MemoryStore>>) {
    let json = config_json().replacen(
        "\"policies\"",
        &format!(
            r#""remote_state": {{"cluster": "state", "failure_mode": "{failure_mode}"}},
            "policies""#
        ),
        1,
    );
    engine_of(&json)
}

fn engine_of(json: &str) -> (Engine, Arc<LocalState<MemoryStore>>) {
    let config = Config::from_json(json.as_bytes(), &|_| Some(SECRET.to_string())).expect("config");
    let state = Arc::new(LocalState::new(&config, MemoryStore::default()));
    state.prepare().expect("prepare");
    (Engine::new(config, Box::new(state.clone())), state)
}

/// A host whose answers the test sets, counting what the engine asked.
struct TestHost {
    now: Cell<u64>,
    address: Option<IpAddr>,
    address_reads: u32,
    clock_reads: u32,
    allowed: i64,
    rejected: i64,
    state_calls: i64,
    replays: i64,
    reported: i64,
    /// Every count, as the engine made it.
    counted: Vec<(Metric, i64)>,
}

impl TestHost {
    fn new() -> Self {
        Self {
            now: Cell::new(NOW),
            address: Some("127.0.0.1".parse().unwrap()),
            address_reads: 0,
            clock_reads: 0,
            allowed: 0,
            rejected: 0,
            state_calls: 0,
            replays: 0,
            reported: 0,
            counted: Vec::new(),
        }
    }
}

impl Host for TestHost {
    fn now(&mut self) -> u64 {
        self.clock_reads += 1;
        self.now.get()
    }
    fn client_address(&mut self) -> Option<IpAddr> {
        self.address_reads += 1;
        self.address
    }
    fn route_name(&mut self) -> Option<String> {
        None
    }
    fn response_code_details(&mut self) -> Vec<u8> {
        b"via_upstream".to_vec()
    }
    fn count(&mut self, metric: Metric, delta: i64) {
        self.counted.push((metric, delta));
        match metric {
            Metric::Allowed { .. } => self.allowed += delta,
            Metric::Rejected { .. } => self.rejected += delta,
            Metric::StateCalls => self.state_calls += delta,
            Metric::IdempotentReplay { .. } => self.replays += delta,
            Metric::Reported { .. } => self.reported += delta,
            _ => {}
        }
    }
}

fn headers(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect()
}

fn request(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    let mut h = headers(&[
        (":method", method),
        (":path", path),
        (":authority", "api.example.com"),
    ]);
    h.extend(headers(extra));
    h
}

/// Signature headers for `body`, at `timestamp`, with `nonce`.
fn signed(body: &[u8], timestamp: u64, nonce: &str) -> Vec<(String, String)> {
    let ts = timestamp.to_string();
    vec![
        (
            "x-request-signature".into(),
            sign(SECRET.as_bytes(), body, &ts, nonce),
        ),
        ("x-request-timestamp".into(), ts),
        ("x-request-nonce".into(), nonce.into()),
    ]
}

fn with(mut base: Vec<(String, Vec<u8>)>, extra: &[(String, String)]) -> Vec<(String, Vec<u8>)> {
    base.extend(
        extra
            .iter()
            .map(|(n, v)| (n.clone(), v.as_bytes().to_vec())),
    );
    base
}

fn code(action: &Action) -> String {
    match action {
        Action::Reply(reply) => {
            let v: serde_json::Value = serde_json::from_slice(&reply.body).expect("problem+json");
            v["code"].as_str().unwrap_or_default().to_string()
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn edits(action: Action) -> Vec<(String, Option<String>)> {
    match action {
        Action::Continue(edits) => edits.list,
        other => panic!("expected the request to pass, got {other:?}"),
    }
}

/// Whether `nonce` is in the cache. Claiming it again tells (and claims it if it was not, so
/// ask once per nonce).
fn nonce_recorded(state: &LocalState<MemoryStore>, nonce: &str) -> bool {
    let proof = proof();
    matches!(
        state.claim_nonce(&proof, nonce, NOW + 300, NOW),
        Err(Reject::NonceReplayed)
    )
}

fn proof() -> SignatureVerified {
    let nonce = "proof-nonce-0123456789";
    let h = RequestHeaders::new(with(Vec::new(), &signed(b"", 1, nonce)));
    let req = signature::parse_headers(&h).unwrap();
    let key = crate::checks::signature::SigningKey {
        id: "k".into(),
        secret: crate::secret::Secret::new(SECRET.as_bytes().to_vec()),
    };
    Verifier::new(&Keyring::new(&[key])).finish(&req).unwrap()
}

#[test]
fn a_signed_body_is_verified_after_its_last_chunk_and_the_nonce_claimed_then() {
    let (engine, state) = engine();
    let mut host = TestHost::new();
    let body = b"{\"amount\": 10}";
    let mut x = Exchange::new();
    let sig = signed(body, NOW, "nonce-aaaaaaaaaaaaaaaa");
    let a = x.on_request_headers(
        &engine,
        with(request("POST", "/pay", &[]), &sig),
        false,
        &mut host,
    );
    assert!(matches!(a, Action::Pause));
    assert!(x.wants_body());
    assert!(matches!(
        x.on_request_body(&engine, &body[..5], false, &mut host),
        Action::Pause
    ));
    let list = edits(x.on_request_body(&engine, &body[5..], true, &mut host));
    assert!(list.contains(&("x-edge-warden-key-id".into(), Some("primary".into()))));
    assert_eq!(host.allowed, 1);
    assert!(nonce_recorded(&state, "nonce-aaaaaaaaaaaaaaaa"));
}

#[test]
fn nothing_is_recorded_for_a_request_whose_signature_fails() {
    let (engine, state) = engine();
    let mut host = TestHost::new();
    let mut sig = signed(b"body", NOW, "nonce-bbbbbbbbbbbbbbbb");
    sig[0].1 = "0".repeat(64);
    let mut x = Exchange::new();
    x.on_request_headers(
        &engine,
        with(request("POST", "/pay", &[]), &sig),
        false,
        &mut host,
    );
    let a = x.on_request_body(&engine, b"body", true, &mut host);
    assert_eq!(code(&a), "invalid_signature");
    assert_eq!(host.rejected, 1);
    // The nonce was never claimed, so the genuine request with it can still pass.
    assert!(!nonce_recorded(&state, "nonce-bbbbbbbbbbbbbbbb"));
}

#[test]
fn header_checks_run_in_order_and_stop_at_the_first_refusal() {
    let (engine, _) = engine();
    // The trusted host comes before the signature.
    let mut host = TestHost::new();
    let mut x = Exchange::new();
    let mut h = request("POST", "/pay", &[]);
    h[2].1 = b"evil.example.com".to_vec();
    let a = x.on_request_headers(&engine, h, true, &mut host);
    assert_eq!(code(&a), "host_not_allowed");
    // The signature is checked only after the host: a missing one is what a good host gets.
    let mut x = Exchange::new();
    let a = x.on_request_headers(&engine, request("POST", "/pay", &[]), true, &mut host);
    assert_eq!(code(&a), "missing_signature");
    // IP rules come before anything the client presents.
    let mut x = Exchange::new();
    let a = x.on_request_headers(&engine, request("GET", "/internal", &[]), true, &mut host);
    assert_eq!(code(&a), "ip_not_allowed");
    // A stale timestamp is refused before any body is read.
    let mut x = Exchange::new();
    let sig = signed(b"", NOW - 301, "nonce-cccccccccccccccc");
    let a = x.on_request_headers(
        &engine,
        with(request("POST", "/pay", &[]), &sig),
        false,
        &mut host,
    );
    assert_eq!(code(&a), "timestamp_out_of_window");
    assert!(!x.wants_body());
}

#[test]
fn a_body_that_ends_after_the_window_is_refused_with_a_fresh_clock() {
    let (engine, _) = engine();
    let mut host = TestHost::new();
    let body = b"late";
    let sig = signed(body, NOW - 290, "nonce-dddddddddddddddd");
    let mut x = Exchange::new();
    x.on_request_headers(
        &engine,
        with(request("POST", "/pay", &[]), &sig),
        false,
        &mut host,
    );
    host.now.set(NOW + 11);
    let a = x.on_request_body(&engine, body, true, &mut host);
    assert_eq!(code(&a), "timestamp_out_of_window");
    assert_eq!(host.clock_reads, 2, "the clock is read again at the end");
}

#[test]
fn trailers_end_a_body() {
    let (engine, _) = engine();
    let mut host = TestHost::new();
    let body = b"with trailers";
    let sig = signed(body, NOW, "nonce-eeeeeeeeeeeeeeee");
    let mut x = Exchange::new();
    x.on_request_headers(
        &engine,
        with(request("POST", "/pay", &[]), &sig),
        false,
        &mut host,
    );
    x.on_request_body(&engine, body, false, &mut host);
    let list = edits(x.on_request_trailers(&engine, &mut host));
    assert!(list.iter().any(|(n, _)| n == "x-edge-warden-key-id"));
}

#[test]
fn a_body_over_the_limit_is_refused_as_it_arrives() {
    let (engine, _) = engine();
    let mut host = TestHost::new();
    let sig = signed(b"", NOW, "nonce-ffffffffffffffff");
    let mut x = Exchange::new();
    x.on_request_headers(
        &engine,
        with(request("POST", "/pay", &[]), &sig),
        false,
        &mut host,
    );
    let mib = vec![b'x'; 1024 * 1024];
    assert!(matches!(
        x.on_request_body(&engine, &mib, false, &mut host),
        Action::Pause
    ));
    let a = x.on_request_body(&engine, b"1", false, &mut host);
    assert_eq!(code(&a), "body_too_large");
    // After a reply the rest of the request is ignored.
    assert!(x.answered());
    assert!(matches!(
        x.on_request_body(&engine, b"more", true, &mut host),
        Action::Pause
    ));
}

#[test]
fn identity_headers_are_stripped_on_every_route_in_every_spelling() {
    let (engine, _) = engine();
    let mut host = TestHost::new();
    let mut x = Exchange::new();
    let h = request(
        "GET",
        "/health",
        &[
            ("x-edge-warden-role", "admin"),
            ("x_edge_warden_client", "key:ops"),
            ("x-api-key", KEY),
        ],
    );
    let list = edits(x.on_request_headers(&engine, h, true, &mut host));
    for gone in ["x-edge-warden-role", "x_edge_warden_client", "x-api-key"] {
        assert!(list.contains(&(gone.to_string(), None)), "{gone}: {list:?}");
    }
    assert!(list.contains(&("x-edge-warden-client".into(), Some("ip:127.0.0.1".into()))));
}

#[test]
fn a_preflight_is_matched_by_the_method_it_asks_about_and_answered_here() {
    let (engine, _) = engine();
    let mut host = TestHost::new();
    let mut x = Exchange::new();
    let h = request(
        "OPTIONS",
        "/browser/orders",
        &[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "POST"),
        ],
    );
    match x.on_request_headers(&engine, h, true, &mut host) {
        Action::Reply(reply) => {
            assert_eq!(reply.status, 204);
            let get = |name: &str| {
                reply
                    .headers
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            };
            assert_eq!(
                get("access-control-allow-origin").as_deref(),
                Some("https://app.example.com")
            );
            assert_eq!(
                get("vary").as_deref(),
                Some("Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
            );
            // Security headers are on the engine's own replies.
            assert_eq!(get("x-content-type-options").as_deref(), Some("nosniff"));
            assert!(reply.headers.iter().all(|(n, _)| !n.starts_with(':')));
        }
        other => panic!("expected a preflight answer, got {other:?}"),
    }
    assert_eq!(host.allowed + host.rejected, 0);
    // A method the policy does not allow is refused.
    let mut x = Exchange::new();
    let h = request(
        "OPTIONS",
        "/browser/orders",
        &[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "DELETE"),
        ],
    );
    assert_eq!(
        code(&x.on_request_headers(&engine, h, true, &mut host)),
        "cors_method_not_allowed"
    );
}

#[test]
fn the_address_is_read_only_when_a_check_needs_it() {
    let (engine, _) = engine();
    let mut host = TestHost::new();
    // A keyed request: the caller is the key, no IP rules, no active lockout.
    let mut x = Exchange::new();
    let h = request("GET", "/keyed", &[("x-api-key", KEY)]);
    let list = edits(x.on_request_headers(&engine, h, true, &mut host));
    assert!(list.contains(&("x-edge-warden-client".into(), Some("key:bot".into()))));
    assert_eq!(host.address_reads, 0);
    // Two wrong keys lock the address out (max_failures 2): each failure reads it once.
    for _ in 0..2 {
        let mut x = Exchange::new();
        let h = request("GET", "/keyed", &[("x-api-key", "ew_wrong")]);
        assert_eq!(
            code(&x.on_request_headers(&engine, h, true, &mut host)),
            "invalid_api_key"
        );
    }
    assert_eq!(host.address_reads, 2);
    let mut x = Exchange::new();
    let h = request("GET", "/keyed", &[("x-api-key", KEY)]);
    assert_eq!(
        code(&x.on_request_headers(&engine, h, true, &mut host)),
        "too_many_auth_failures"
    );
    // Another address is unaffected.
    host.address = Some("127.0.0.2".parse().unwrap());
    let mut x = Exchange::new();
    let h = request("GET", "/keyed", &[("x-api-key", KEY)]);
    edits(x.on_request_headers(&engine, h, true, &mut host));
}

#[test]
fn concurrent_replays_across_threads_let_exactly_one_through() {
    let (engine, _) = engine();
    let engine = Arc::new(engine);
    for round in 0..20 {
        let nonce = format!("race-nonce-{round:08}-xxxx");
        let sig = signed(b"race", NOW, &nonce);
        let winners: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let engine = engine.clone();
                    let sig = sig.clone();
                    s.spawn(move || {
                        let mut host = TestHost::new();
                        let mut x = Exchange::new();
                        x.on_request_headers(
                            &engine,
                            with(request("POST", "/pay", &[]), &sig),
                            false,
                            &mut host,
                        );
                        matches!(
                            x.on_request_body(&engine, b"race", true, &mut host),
                            Action::Continue(_)
                        )
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| usize::from(h.join().unwrap()))
                .sum()
        });
        assert_eq!(winners, 1, "round {round}");
    }
}

#[test]
fn a_rate_limiters_429_is_left_alone_unless_envoy_made_it() {
    let (engine, _) = engine();
    let mut host = TestHost::new();
    let mut x = Exchange::new();
    edits(x.on_request_headers(&engine, request("GET", "/health", &[]), true, &mut host));
    // The upstream's own 429 (code details `via_upstream`) keeps its body.
    let r = x.on_response_headers(&engine, headers(&[(":status", "429")]), &mut host);
    assert!(matches!(r, ResponseAction::Replace(_)));
    assert!(!x.replaces_response_body());
}

// ---------------------------------------------------------------------------------------------
// The fleet's shared state: what is asked of the state service, and what its answers decide.

fn expect_call(action: Action) -> Call {
    match action {
        Action::Call(call) => call,
        other => panic!("expected a call to the state service, got {other:?}"),
    }
}

fn admit(locked_for_seconds: u64, claimed: bool) -> Result<Vec<u8>, Unavailable> {
    Ok(prost::Message::encode_to_vec(&AdmitResponse {
        locked_for_seconds,
        claimed,
    }))
}

fn signed_get(nonce: &str) -> Vec<(String, Vec<u8>)> {
    with(request("GET", "/orders", &[]), &signed(b"", NOW, nonce))
}

#[test]
fn a_verified_nonce_is_claimed_here_then_fleet_wide_with_a_fingerprint_only() {
    let (engine, _) = fleet_engine("fail_closed");
    let mut host = TestHost::new();
    let mut x = Exchange::new();
    let call = expect_call(x.on_request_headers(
        &engine,
        signed_get("nonce-fleet-0001-abcdef"),
        true,
        &mut host,
    ));
    assert_eq!(call.method, remote::Method::Admit);
    let sent: AdmitRequest = prost::Message::decode(call.message.as_slice()).unwrap();
    let claim = sent.claim.expect("a claim");
    assert_eq!(
        claim.fingerprint,
        remote::fingerprint("nonce-fleet-0001-abcdef")
    );
    assert_eq!(claim.ttl_seconds, 300);
    assert_eq!(sent.lockout.expect("a lockout check").client, "127.0.0.1");
    assert!(!String::from_utf8_lossy(&call.message).contains("nonce-fleet-0001-abcdef"));
    assert_eq!(host.state_calls, 1);
    // While the call is out, the request stays held.
    assert!(matches!(
        x.on_request_body(&engine, b"", true, &mut host),
        Action::Pause
    ));
    let passed = edits(x.on_state_answer(&engine, admit(0, true), &mut host));
    assert!(passed.contains(&("x-edge-warden-key-id".into(), Some("primary".into()))));
    assert_eq!(host.allowed, 1);

    // The same nonce again at this Envoy: refused from the local cache, no call.
    let mut again = Exchange::new();
    let action = again.on_request_headers(
        &engine,
        signed_get("nonce-fleet-0001-abcdef"),
        true,
        &mut host,
    );
    assert_eq!(code(&action), "nonce_replayed");
    assert_eq!(host.state_calls, 1);
}

#[test]
fn a_nonce_another_envoy_claimed_is_a_replay() {
    let (engine, _) = fleet_engine("fail_closed");
    let mut host = TestHost::new();
    let mut x = Exchange::new();
    expect_call(x.on_request_headers(
        &engine,
        signed_get("nonce-fleet-0002-abcdef"),
        true,
        &mut host,
    ));
    let action = x.on_state_answer(&engine, admit(0, false), &mut host);
    assert_eq!(code(&action), "nonce_replayed");
    assert_eq!((host.allowed, host.rejected), (0, 1));
}

#[test]
fn without_an_answer_fail_closed_refuses_with_503_and_fail_open_lets_through() {
    let (engine, _) = fleet_engine("fail_closed");
    let mut host = TestHost::new();
    let mut x = Exchange::new();
    expect_call(x.on_request_headers(
        &engine,
        signed_get("nonce-fleet-0003-abcdef"),
        true,
        &mut host,
    ));
    let action = x.on_state_answer(&engine, Err(Unavailable("timed out")), &mut host);
    assert_eq!(code(&action), "state_unavailable");
    let Action::Reply(reply) = action else {
        unreachable!()
    };
    assert_eq!(reply.status, 503);
    assert!(reply
        .headers
        .iter()
        .any(|(n, v)| n == "retry-after" && v == b"1"));

    // An answer that does not decode is no answer.
    let mut x = Exchange::new();
    expect_call(x.on_request_headers(
        &engine,
        signed_get("nonce-fleet-0004-abcdef"),
        true,
        &mut host,
    ));
    let action = x.on_state_answer(&engine, Ok(vec![0xff, 0xff]), &mut host);
    assert_eq!(code(&action), "state_unavailable");

    let (engine, _) = fleet_engine("fail_open");
    let mut x = Exchange::new();
    expect_call(x.on_request_headers(
        &engine,
        signed_get("nonce-fleet-0005-abcdef"),
        true,
        &mut host,
    ));
    let passed = edits(x.on_state_answer(&engine, Err(Unavailable("refused")), &mut host));
    assert!(passed.contains(&("x-edge-warden-key-id".into(), Some("primary".into()))));
}

#[test]
fn an_api_key_request_asks_the_fleet_whether_its_address_is_locked_out() {
    let (engine, _) = fleet_engine("fail_closed");
    let mut host = TestHost::new();
    let mut x = Exchange::new();
    let keyed = request("GET", "/keyed", &[("x-api-key", KEY)]);
    let call = expect_call(x.on_request_headers(&engine, keyed.clone(), true, &mut host));
    let sent: AdmitRequest = prost::Message::decode(call.message.as_slice()).unwrap();
    assert!(sent.claim.is_none());
    assert_eq!(sent.lockout.map(|l| l.max_failures), Some(2));
    let action = x.on_state_answer(&engine, admit(120, false), &mut host);
    assert_eq!(code(&action), "too_many_auth_failures");
    let Action::Reply(reply) = action else {
        unreachable!()
    };
    assert!(reply
        .headers
        .iter()
        .any(|(n, v)| n == "retry-after" && v == b"120"));

    let mut x = Exchange::new();
    expect_call(x.on_request_headers(&engine, keyed, true, &mut host));
    let passed = edits(x.on_state_answer(&engine, admit(0, false), &mut host));
    assert!(passed.contains(&("x-edge-warden-api-key-id".into(), Some("bot".into()))));
    // A route without a credential makes no call.
    let calls = host.state_calls;
    let mut x = Exchange::new();
    let action = x.on_request_headers(&engine, request("GET", "/health", &[]), true, &mut host);
    assert!(matches!(action, Action::Continue(_)));
    assert_eq!(host.state_calls, calls);
}

#[test]
fn a_wrong_credential_is_counted_fleet_wide_before_it_is_answered() {
    let (engine, state) = fleet_engine("fail_closed");
    let mut host = TestHost::new();
    let wrong = request(
        "GET",
        "/keyed",
        &[("x-api-key", "ew_wrong_key_0123456789abcdefghijklmn")],
    );
    let mut x = Exchange::new();
    let call = expect_call(x.on_request_headers(&engine, wrong.clone(), true, &mut host));
    assert_eq!(call.method, remote::Method::RecordFailure);
    let sent: remote::RecordFailureRequest =
        prost::Message::decode(call.message.as_slice()).unwrap();
    assert_eq!(
        (sent.client.as_str(), sent.window_seconds, sent.max_failures),
        ("127.0.0.1", 300, 2)
    );
    let failure = |failures, locked_for_seconds| {
        Ok(prost::Message::encode_to_vec(
            &remote::RecordFailureResponse {
                failures,
                locked_for_seconds,
            },
        ))
    };
    // The failure that reaches the limit is answered as what it is...
    assert_eq!(
        code(&x.on_state_answer(&engine, failure(2, 300), &mut host)),
        "invalid_api_key"
    );
    // ...and one from an address the fleet had locked out already says so.
    let mut x = Exchange::new();
    let _ = state;
    expect_call(x.on_request_headers(&engine, wrong.clone(), true, &mut host));
    assert_eq!(
        code(&x.on_state_answer(&engine, failure(3, 250), &mut host)),
        "too_many_auth_failures"
    );
    // Without an answer the reply goes anyway (the failure was counted here).
    let mut other = TestHost::new();
    other.address = Some("192.0.2.9".parse().unwrap());
    let mut x = Exchange::new();
    expect_call(x.on_request_headers(&engine, wrong, true, &mut other));
    assert_eq!(
        code(&x.on_state_answer(&engine, Err(Unavailable("reset")), &mut other)),
        "invalid_api_key"
    );
}

#[test]
fn decisions_are_counted_with_their_code_and_policy() {
    let (engine, _) = engine();
    let policy = |name: &str| engine.config.policies.iter().position(|p| p.name == name);
    let mut host = TestHost::new();
    // Refused before any policy is chosen: no policy label.
    let mut x = Exchange::new();
    x.on_request_headers(&engine, request("GET", "/a/%2e%2e/b", &[]), true, &mut host);
    // A signed request on `signed` claims its nonce.
    let sig = signed(b"", NOW, "nonce-metrics-0123456789");
    Exchange::new().on_request_headers(
        &engine,
        with(request("GET", "/x", &[]), &sig),
        true,
        &mut host,
    );
    // A wrong key on `keyed`, then its second failure starts the lockout (max_failures 2).
    let wrong = request("GET", "/keyed", &[("x-api-key", "ew_wrong")]);
    for _ in 0..2 {
        Exchange::new().on_request_headers(&engine, wrong.clone(), true, &mut host);
    }
    // A preflight answered on `browser`, a pass on `health`.
    let preflight = request(
        "OPTIONS",
        "/browser",
        &[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "POST"),
        ],
    );
    Exchange::new().on_request_headers(&engine, preflight, true, &mut host);
    Exchange::new().on_request_headers(&engine, request("GET", "/health", &[]), true, &mut host);
    let counted: Vec<Metric> = host
        .counted
        .iter()
        .filter(|(m, _)| *m != Metric::ReplayEntries)
        .map(|(m, _)| *m)
        .collect();
    let code = |m: &Metric| match m {
        Metric::Rejected { code, .. } => *code,
        _ => "",
    };
    assert_eq!(
        counted,
        vec![
            Metric::Rejected {
                code: code(&counted[0]),
                policy: None
            },
            Metric::NonceClaimed {
                policy: policy("signed")
            },
            Metric::Allowed {
                policy: policy("signed")
            },
            Metric::Rejected {
                code: "invalid_api_key",
                policy: policy("keyed")
            },
            Metric::Rejected {
                code: "invalid_api_key",
                policy: policy("keyed")
            },
            Metric::LockoutStarted,
            Metric::PreflightAnswered {
                policy: policy("browser")
            },
            Metric::Allowed {
                policy: policy("health")
            },
        ]
    );
    assert!(
        ["invalid_path", "invalid_characters"].contains(&code(&counted[0])),
        "{counted:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Idempotency keys.

/// The test configuration with idempotent routes in front: `/orders` (unsigned, keyed by the
/// client address) and `/signed-orders` (signed).
fn idem_json() -> String {
    config_json().replacen(
        "\"policies\": [",
        r#""policies": [
        {"name": "orders", "match": {"path_prefix": "/orders"}, "signature": false,
         "idempotency": {"max_response_bytes": 64}},
        {"name": "signed-orders", "match": {"path_prefix": "/signed-orders"},
         "trusted_hosts": ["api.example.com"], "idempotency": {}},"#,
        1,
    )
}

fn respond(x: &mut Exchange, engine: &Engine, host: &mut TestHost, status: &str, body: &[u8]) {
    let h = headers(&[(":status", status), ("content-type", "application/json")]);
    x.on_response_headers(engine, h, host);
    assert!(x.captures_response());
    x.on_response_body(body);
    assert!(x.on_response_end(engine, host).is_none(), "no fleet store");
}

fn order(x: &mut Exchange, engine: &Engine, host: &mut TestHost, key: &str, body: &[u8]) -> Action {
    let h = request("POST", "/orders", &[("idempotency-key", key)]);
    assert!(matches!(
        x.on_request_headers(engine, h, false, host),
        Action::Pause
    ));
    x.on_request_body(engine, body, true, host)
}

#[test]
fn a_duplicate_gets_the_stored_response_without_the_upstream() {
    let (engine, _) = engine_of(&idem_json());
    let mut host = TestHost::new();
    let mut first = Exchange::new();
    edits(order(
        &mut first,
        &engine,
        &mut host,
        "\"k-1\"",
        b"{\"n\":1}",
    ));
    respond(&mut first, &engine, &mut host, "201", b"{\"id\":7}");
    let mut again = Exchange::new();
    match order(&mut again, &engine, &mut host, "k-1", b"{\"n\":1}") {
        Action::Reply(reply) => {
            assert_eq!(reply.status, 201);
            assert_eq!(reply.body, b"{\"id\":7}");
            let has = |n: &str, v: &str| reply.headers.contains(&(n.into(), v.as_bytes().to_vec()));
            assert!(has("idempotent-replayed", "true") && has("content-type", "application/json"));
            // The security headers are there as on every reply.
            assert!(reply
                .headers
                .iter()
                .any(|(n, _)| n == "x-content-type-options"));
        }
        other => panic!("expected the replay, got {other:?}"),
    }
    assert_eq!((host.allowed, host.replays), (1, 1));
    // Another body with the key is another request.
    let a = order(
        &mut Exchange::new(),
        &engine,
        &mut host,
        "k-1",
        b"{\"n\":2}",
    );
    assert_eq!(code(&a), "idempotency_key_reused");
}

#[test]
fn keys_are_required_on_the_covered_methods_only() {
    let (engine, _) = engine_of(&idem_json());
    let mut host = TestHost::new();
    let a = Exchange::new().on_request_headers(
        &engine,
        request("POST", "/orders", &[]),
        true,
        &mut host,
    );
    assert_eq!(code(&a), "idempotency_key_missing");
    let h = request("POST", "/orders", &[("idempotency-key", "two words")]);
    let a = Exchange::new().on_request_headers(&engine, h, true, &mut host);
    assert_eq!(code(&a), "idempotency_key_invalid");
    // GET is not covered: no key needed, and a key sent is ignored.
    let mut x = Exchange::new();
    edits(x.on_request_headers(&engine, request("GET", "/orders", &[]), true, &mut host));
    assert!(!x.captures_response());
}

#[test]
fn a_duplicate_in_flight_is_refused_and_a_5xx_frees_the_key() {
    let (engine, _) = engine_of(&idem_json());
    let mut host = TestHost::new();
    let mut first = Exchange::new();
    edits(order(&mut first, &engine, &mut host, "k-2", b"x"));
    let a = order(&mut Exchange::new(), &engine, &mut host, "k-2", b"x");
    assert_eq!(code(&a), "idempotency_request_in_progress");
    respond(&mut first, &engine, &mut host, "503", b"down");
    let mut retry = Exchange::new();
    edits(order(&mut retry, &engine, &mut host, "k-2", b"x"));
    // A response over max_response_bytes completes the key without keeping it.
    respond(&mut retry, &engine, &mut host, "200", &[b'a'; 65]);
    let a = order(&mut Exchange::new(), &engine, &mut host, "k-2", b"x");
    assert_eq!(code(&a), "idempotency_response_not_stored");
}

#[test]
fn a_client_that_goes_away_frees_its_key() {
    let (engine, _) = engine_of(&idem_json());
    let mut host = TestHost::new();
    let mut first = Exchange::new();
    edits(order(&mut first, &engine, &mut host, "k-3", b"x"));
    first.on_stream_end(&engine, &mut host);
    edits(order(&mut Exchange::new(), &engine, &mut host, "k-3", b"x"));
}

#[test]
fn keys_belong_to_their_caller() {
    let (engine, _) = engine_of(&idem_json());
    let mut host = TestHost::new();
    let mut first = Exchange::new();
    edits(order(&mut first, &engine, &mut host, "k-4", b"x"));
    respond(&mut first, &engine, &mut host, "201", b"mine");
    host.address = Some("192.0.2.9".parse().unwrap());
    edits(order(&mut Exchange::new(), &engine, &mut host, "k-4", b"x"));
}

#[test]
fn a_signed_retry_needs_a_fresh_nonce_and_then_gets_the_stored_response() {
    let (engine, _) = engine_of(&idem_json());
    let mut host = TestHost::new();
    let body = b"{\"amount\":5}";
    let send = |nonce: &str, host: &mut TestHost| {
        let mut x = Exchange::new();
        let h = with(
            request("POST", "/signed-orders", &[("idempotency-key", "pay-1")]),
            &signed(body, NOW, nonce),
        );
        assert!(matches!(
            x.on_request_headers(&engine, h, false, host),
            Action::Pause
        ));
        let a = x.on_request_body(&engine, body, true, host);
        (x, a)
    };
    let (mut first, a) = send("nonce-idem-0000000001", &mut host);
    assert!(edits(a).contains(&("x-edge-warden-key-id".into(), Some("primary".into()))));
    respond(&mut first, &engine, &mut host, "201", b"paid");
    // The same transmission again is a replay attack: the nonce answers first.
    let (_, a) = send("nonce-idem-0000000001", &mut host);
    assert_eq!(code(&a), "nonce_replayed");
    let (_, a) = send("nonce-idem-0000000002", &mut host);
    assert!(matches!(a, Action::Reply(ref r) if r.status == 201 && r.body == b"paid"));
}

#[test]
fn with_the_fleet_store_the_claim_and_the_completion_are_told_to_it() {
    let json = idem_json().replacen(
        "\"policies\"",
        r#""remote_state": {"cluster": "state"}, "policies""#,
        1,
    );
    let (engine, _) = engine_of(&json);
    let mut host = TestHost::new();
    let mut x = Exchange::new();
    let call = match order(&mut x, &engine, &mut host, "k-5", b"x") {
        Action::Call(call) => call,
        other => panic!("expected the fleet claim, got {other:?}"),
    };
    assert_eq!(call.method, remote::Method::BeginIdempotent);
    let claimed = remote::BeginIdempotentResponse {
        outcome: remote::Outcome::Claimed as i32,
        response: None,
    };
    let a = x.on_state_answer(
        &engine,
        Ok(prost::Message::encode_to_vec(&claimed)),
        &mut host,
    );
    edits(a);
    x.on_response_headers(&engine, headers(&[(":status", "200")]), &mut host);
    x.on_response_body(b"ok");
    let call = x
        .on_response_end(&engine, &mut host)
        .expect("the completion");
    assert_eq!(call.method, remote::Method::CompleteIdempotent);
    let sent: remote::CompleteIdempotentRequest =
        prost::Message::decode(call.message.as_slice()).unwrap();
    assert_eq!(
        sent.response.map(|r| (r.status, r.body)),
        Some((200, b"ok".to_vec()))
    );
    assert!(matches!(
        x.on_state_answer(&engine, Err(Unavailable("timeout")), &mut host),
        Action::Continue(_)
    ));

    // Another Envoy completed a key this one has not seen: its response is replayed.
    let mut y = Exchange::new();
    assert!(matches!(
        order(&mut y, &engine, &mut host, "k-6", b"x"),
        Action::Call(_)
    ));
    let done = remote::BeginIdempotentResponse {
        outcome: remote::Outcome::Completed as i32,
        response: Some(remote::StoredResponse {
            status: 202,
            content_type: "text/plain".into(),
            body: b"elsewhere".to_vec(),
        }),
    };
    let a = y.on_state_answer(&engine, Ok(prost::Message::encode_to_vec(&done)), &mut host);
    assert!(matches!(a, Action::Reply(ref r) if r.status == 202 && r.body == b"elsewhere"));
    // ... and this Envoy's own claim went with it: a retry asks the fleet again.
    assert!(matches!(
        order(&mut Exchange::new(), &engine, &mut host, "k-6", b"x"),
        Action::Call(_)
    ));

    // fail_closed: no answer refuses the request and frees the local claim.
    let mut z = Exchange::new();
    assert!(matches!(
        order(&mut z, &engine, &mut host, "k-7", b"x"),
        Action::Call(_)
    ));
    let a = z.on_state_answer(&engine, Err(Unavailable("timeout")), &mut host);
    assert_eq!(code(&a), "state_unavailable");
    assert!(matches!(
        order(&mut Exchange::new(), &engine, &mut host, "k-7", b"x"),
        Action::Call(_)
    ));
}

/// The test configuration with a shaped, streamed route in front.
fn shaped_engine() -> (Engine, Arc<LocalState<MemoryStore>>) {
    let json = config_json().replacen(
        "\"policies\": [",
        r#""policies": [
        {"name": "uploads", "match": {"path_prefix": "/uploads"}, "signature": false,
         "api_key": {},
         "request": {"methods": ["POST"], "max_body_bytes": 10,
                     "required_headers": [{"name": "x-device-id", "pattern": "[a-z0-9]{1,8}"}]}},"#,
        1,
    );
    engine_of(&json)
}

#[test]
fn an_unsigned_body_streams_on_chunk_by_chunk_and_is_cut_at_the_limit() {
    let (engine, _) = shaped_engine();
    let mut host = TestHost::new();
    let mut x = Exchange::new();
    let head = request(
        "POST",
        "/uploads",
        &[("x-device-id", "dev1"), ("x-api-key", KEY)],
    );
    let a = x.on_request_headers(&engine, head.clone(), false, &mut host);
    assert!(matches!(a, Action::Continue(_)), "{a:?}");
    assert_eq!(x.body_mode(), BodyMode::Streamed);
    for chunk in [&b"1234"[..], b"5678", b"90"] {
        let a = x.on_request_body(&engine, chunk, false, &mut host);
        assert!(
            matches!(a, Action::Continue(ref e) if e.is_empty()),
            "{a:?}"
        );
    }
    let a = x.on_request_body(&engine, b"!", false, &mut host);
    assert_eq!(code(&a), "body_too_large");
    assert!(x.answered());
    assert_eq!(x.body_mode(), BodyMode::Ignore);

    // Declared too long: refused from the headers.
    let mut x = Exchange::new();
    let mut long = head.clone();
    long.push(("content-length".into(), b"11".to_vec()));
    assert_eq!(
        code(&x.on_request_headers(&engine, long, false, &mut host)),
        "body_too_large"
    );
    // An unshaped unsigned route does not read its body at all.
    let mut x = Exchange::new();
    x.on_request_headers(&engine, request("GET", "/health", &[]), false, &mut host);
    assert_eq!(x.body_mode(), BodyMode::Ignore);
}

#[test]
fn shape_is_checked_before_credentials_and_counts_no_failure() {
    let (engine, _) = shaped_engine();
    let mut host = TestHost::new();
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 3] = [
        (
            "PUT",
            &[("x-device-id", "dev1"), ("x-api-key", "ew_wrong")],
            "method_not_allowed",
        ),
        ("POST", &[("x-api-key", "ew_wrong")], "missing_header"),
        (
            "POST",
            &[("x-device-id", "DEV 1"), ("x-api-key", "ew_wrong")],
            "invalid_header",
        ),
    ];
    // More refusals than the lockout allows wrong keys: none of them counted as one.
    for _ in 0..3 {
        for (method, extra, want) in cases {
            let mut x = Exchange::new();
            let a =
                x.on_request_headers(&engine, request(method, "/uploads", extra), true, &mut host);
            assert_eq!(code(&a), want);
        }
    }
    let mut x = Exchange::new();
    let ok = request(
        "POST",
        "/uploads",
        &[("x-device-id", "dev1"), ("x-api-key", KEY)],
    );
    assert!(matches!(
        x.on_request_headers(&engine, ok, true, &mut host),
        Action::Continue(_)
    ));
}

#[test]
fn a_signed_routes_body_is_held_and_fed_to_the_watch_and_the_hash() {
    let (engine, state) = engine();
    let mut host = TestHost::new();
    let body = b"0123456789";
    let mut x = Exchange::new();
    let sig = signed(body, NOW, "nonce-watch-aaaaaaaaaaa");
    x.on_request_headers(
        &engine,
        with(request("POST", "/pay", &[]), &sig),
        false,
        &mut host,
    );
    assert_eq!(x.body_mode(), BodyMode::Held);
    assert!(matches!(
        x.on_request_body(&engine, &body[..4], false, &mut host),
        Action::Pause
    ));
    let a = x.on_request_body(&engine, &body[4..], true, &mut host);
    assert!(matches!(a, Action::Continue(_)), "{a:?}");
    assert!(nonce_recorded(&state, "nonce-watch-aaaaaaaaaaa"));
}

fn upload_engine() -> Engine {
    let json = r#"{
      "signature": {"secrets": [{"id": "primary", "env": "S"}]},
      "policies": [
        {"name": "uploads", "match": {"path_prefix": "/uploads"}, "signature": false,
         "upload": {"allowed_extensions": ["mp3"]}},
        {"name": "signed-uploads", "match": {"path_prefix": "/signed-uploads"},
         "upload": {"allowed_extensions": ["mp3"]}}
      ]
    }"#;
    engine_of(json).0
}

fn multipart(content: &[u8]) -> Vec<u8> {
    let mut b =
        b"--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.mp3\"\r\n\r\n".to_vec();
    b.extend_from_slice(content);
    b.extend_from_slice(b"\r\n--XyZ--\r\n");
    b
}

#[test]
fn an_unsigned_upload_streams_each_chunk_on_and_is_refused_at_the_chunk_that_fails() {
    let engine = upload_engine();
    let mut host = TestHost::new();
    let ct = ("content-type", "multipart/form-data; boundary=XyZ");
    let mut x = Exchange::new();
    let a = x.on_request_headers(
        &engine,
        request("POST", "/uploads", &[ct]),
        false,
        &mut host,
    );
    assert!(matches!(a, Action::Continue(_)));
    assert_eq!(x.body_mode(), BodyMode::Streamed);
    let body = multipart(&[b"ID3\x04".as_slice(), &[0u8; 4000]].concat());
    for piece in body.chunks(100) {
        let a = x.on_request_body(&engine, piece, false, &mut host);
        assert!(matches!(a, Action::Continue(_)), "{a:?}");
    }
    let a = x.on_request_body(&engine, &[], true, &mut host);
    assert!(matches!(a, Action::Continue(_)));

    let mut x = Exchange::new();
    x.on_request_headers(
        &engine,
        request("POST", "/uploads", &[ct]),
        false,
        &mut host,
    );
    let body = multipart(&[b"MZ\x90\x00".as_slice(), &[0u8; 4000]].concat());
    let mut chunks = body.chunks(600);
    let first = x.on_request_body(&engine, chunks.next().unwrap(), false, &mut host);
    assert!(
        matches!(first, Action::Continue(_)),
        "the window is not full yet"
    );
    let second = x.on_request_body(&engine, chunks.next().unwrap(), false, &mut host);
    assert_eq!(code(&second), "content_mismatch");
    assert!(x.answered());

    // A truncated multipart is refused where the body ends.
    let mut x = Exchange::new();
    x.on_request_headers(
        &engine,
        request("POST", "/uploads", &[ct]),
        false,
        &mut host,
    );
    let body = multipart(b"ID3\x04");
    x.on_request_body(&engine, &body[..body.len() - 6], false, &mut host);
    assert_eq!(
        code(&x.on_request_trailers(&engine, &mut host)),
        "malformed_multipart"
    );

    // No body at all.
    let mut x = Exchange::new();
    let a = x.on_request_headers(&engine, request("POST", "/uploads", &[ct]), true, &mut host);
    assert_eq!(code(&a), "malformed_multipart");

    // A bad name in a raw upload's Content-Disposition: refused from the headers.
    let mut x = Exchange::new();
    let raw = [
        ("content-type", "audio/mpeg"),
        ("content-disposition", "attachment; filename=\"../a.mp3\""),
    ];
    let a = x.on_request_headers(&engine, request("PUT", "/uploads", &raw), false, &mut host);
    assert_eq!(code(&a), "invalid_file_name");
}

#[test]
fn a_signed_upload_is_read_while_held_and_a_refused_one_does_not_spend_its_nonce() {
    let engine = upload_engine();
    let mut host = TestHost::new();
    let ct = (
        "content-type".to_string(),
        "multipart/form-data; boundary=XyZ".to_string(),
    );
    let spoofed = multipart(b"MZ\x90\x00");
    let mut sig = signed(&spoofed, NOW, "nonce-upload-0123456789");
    sig.push(ct.clone());
    let mut x = Exchange::new();
    let a = x.on_request_headers(
        &engine,
        with(request("POST", "/signed-uploads", &[]), &sig),
        false,
        &mut host,
    );
    assert!(matches!(a, Action::Pause));
    assert_eq!(x.body_mode(), BodyMode::Held);
    assert_eq!(
        code(&x.on_request_body(&engine, &spoofed, true, &mut host)),
        "content_mismatch"
    );
    let good = multipart(b"ID3\x04");
    let mut sig = signed(&good, NOW, "nonce-upload-0123456789");
    sig.push(ct);
    let mut x = Exchange::new();
    x.on_request_headers(
        &engine,
        with(request("POST", "/signed-uploads", &[]), &sig),
        false,
        &mut host,
    );
    let a = x.on_request_body(&engine, &good, true, &mut host);
    assert!(edits(a)
        .iter()
        .any(|(n, v)| n == "x-edge-warden-key-id" && v.as_deref() == Some("primary")));
}

#[test]
fn a_body_held_for_a_state_call_is_counted_and_then_streams_on() {
    let json = config_json()
        .replacen(
            "\"policies\": [",
            r#""policies": [
        {"name": "uploads", "match": {"path_prefix": "/uploads"}, "signature": false,
         "api_key": {}, "request": {"max_body_bytes": 10}},"#,
            1,
        )
        .replacen(
            "\"policies\"",
            r#""remote_state": {"cluster": "state"}, "policies""#,
            1,
        );
    let (engine, _) = engine_of(&json);
    let mut host = TestHost::new();
    let head = request("POST", "/uploads", &[("x-api-key", KEY)]);

    // Held while the fleet is asked: the bytes count, and the answer lets the rest stream.
    let mut x = Exchange::new();
    expect_call(x.on_request_headers(&engine, head.clone(), false, &mut host));
    assert_eq!(x.body_mode(), BodyMode::Held);
    assert!(matches!(
        x.on_request_body(&engine, b"123456", false, &mut host),
        Action::Pause
    ));
    assert!(matches!(
        x.on_state_answer(&engine, admit(0, false), &mut host),
        Action::Continue(_)
    ));
    assert_eq!(x.body_mode(), BodyMode::Streamed);
    assert!(matches!(
        x.on_request_body(&engine, b"7890", false, &mut host),
        Action::Continue(_)
    ));
    assert_eq!(
        code(&x.on_request_body(&engine, b"x", true, &mut host)),
        "body_too_large"
    );

    // Over the limit while the call is out: refused at once; the late answer changes nothing.
    let mut x = Exchange::new();
    expect_call(x.on_request_headers(&engine, head, false, &mut host));
    assert_eq!(
        code(&x.on_request_body(&engine, b"12345678901", false, &mut host)),
        "body_too_large"
    );
    assert!(matches!(
        x.on_state_answer(&engine, admit(0, false), &mut host),
        Action::Pause
    ));
}

#[test]
fn a_size_limit_alone_needs_only_lengths_and_a_signature_needs_bytes() {
    let (engine, _) = shaped_engine();
    let mut host = TestHost::new();
    let mut x = Exchange::new();
    let head = request(
        "POST",
        "/uploads",
        &[("x-device-id", "dev1"), ("x-api-key", KEY)],
    );
    x.on_request_headers(&engine, head, false, &mut host);
    assert!(!x.wants_body_bytes());
    assert!(matches!(
        x.on_request_body_length(&engine, 10, false, &mut host),
        Action::Continue(_)
    ));
    assert_eq!(
        code(&x.on_request_body_length(&engine, 1, true, &mut host)),
        "body_too_large"
    );

    // A signed body must come as bytes; a length alone is refused, never passed unverified.
    let mut x = Exchange::new();
    let sig = signed(b"abc", NOW, "nonce-length-aaaaaaaaaa");
    x.on_request_headers(
        &engine,
        with(request("POST", "/pay", &[]), &sig),
        false,
        &mut host,
    );
    assert!(x.wants_body_bytes());
    assert_eq!(
        code(&x.on_request_body_length(&engine, 3, true, &mut host)),
        "internal_error"
    );
}

/// The test configuration with a policy in report mode in front of the others.
fn report_engine() -> (Engine, Arc<LocalState<MemoryStore>>) {
    let trial = r#"{"name": "trial", "mode": "report", "match": {"path_prefix": "/trial"},
          "trusted_hosts": ["api.example.com"], "api_key": {},
          "cors": {"allow_origins": ["https://app.example.com"]}},
        {"name": "health""#;
    engine_of(&config_json().replacen(r#"{"name": "health""#, trial, 1))
}

fn would_reject(list: &[(String, Option<String>)]) -> Option<String> {
    list.iter()
        .filter(|(n, _)| n == crate::events::WOULD_REJECT_HEADER)
        .find_map(|(_, v)| v.clone())
}

#[test]
fn report_mode_runs_every_check_and_lets_the_request_go_on_naming_the_codes() {
    let (engine, _) = report_engine();
    let mut host = TestHost::new();
    let mut sig = signed(b"body", NOW, "nonce-report-aaaaaaaaaa");
    sig[0].1 = "0".repeat(64);
    let mut h = request(
        "POST",
        "/trial/x",
        &[
            ("origin", "https://evil.example"),
            ("x-api-key", "ew_wrong"),
        ],
    );
    h[2].1 = b"evil.example.com".to_vec();
    let mut x = Exchange::new();
    let a = x.on_request_headers(&engine, with(h, &sig), false, &mut host);
    assert!(matches!(a, Action::Pause), "{a:?}");
    let list = edits(x.on_request_body(&engine, b"body", true, &mut host));
    assert_eq!(
        would_reject(&list).as_deref(),
        Some("host_not_allowed,origin_not_allowed,invalid_api_key,invalid_signature")
    );
    // Unverified: no signing key named, no identity of a key that did not match.
    assert!(!list
        .iter()
        .any(|(n, v)| n == "x-edge-warden-key-id" && v.is_some()));
    assert!(!list
        .iter()
        .any(|(n, v)| n == "x-edge-warden-api-key-id" && v.is_some()));
    assert_eq!((host.allowed, host.rejected, host.reported), (1, 0, 4));
}

#[test]
fn report_mode_writes_no_lockout_counters() {
    let (engine, _) = report_engine();
    let mut host = TestHost::new();
    // max_failures is 2: three wrong keys in report mode would lock the address out.
    for i in 0..3 {
        let mut x = Exchange::new();
        let h = request("GET", "/trial", &[("x-api-key", "ew_wrong")]);
        let sig = signed(b"", NOW, &format!("nonce-lockout-{i:010}"));
        let list = edits(x.on_request_headers(&engine, with(h, &sig), true, &mut host));
        assert_eq!(would_reject(&list).as_deref(), Some("invalid_api_key"));
    }
    // The enforced policy next to it still takes the address's valid key.
    let mut x = Exchange::new();
    let list = edits(x.on_request_headers(
        &engine,
        request("GET", "/keyed", &[("x-api-key", KEY)]),
        true,
        &mut host,
    ));
    assert!(list.contains(&("x-edge-warden-api-key-id".into(), Some("bot".into()))));
}

#[test]
fn report_mode_claims_a_verified_nonce_and_reports_its_replay() {
    let (engine, state) = report_engine();
    let mut host = TestHost::new();
    let sig = signed(b"", NOW, "nonce-report-bbbbbbbbbb");
    let h = || with(request("GET", "/trial", &[("x-api-key", KEY)]), &sig);
    let mut x = Exchange::new();
    let list = edits(x.on_request_headers(&engine, h(), true, &mut host));
    assert_eq!(would_reject(&list), None);
    assert!(list.contains(&("x-edge-warden-key-id".into(), Some("primary".into()))));
    let mut x = Exchange::new();
    let list = edits(x.on_request_headers(&engine, h(), true, &mut host));
    assert_eq!(would_reject(&list).as_deref(), Some("nonce_replayed"));
    assert!(!list
        .iter()
        .any(|(n, v)| n == "x-edge-warden-key-id" && v.is_some()));
    assert!(nonce_recorded(&state, "nonce-report-bbbbbbbbbb"));
}

#[test]
fn under_report_mode_a_preflight_is_refused_as_in_enforce_mode_and_a_forged_list_goes() {
    let (engine, _) = report_engine();
    let mut host = TestHost::new();
    let mut x = Exchange::new();
    let h = request(
        "OPTIONS",
        "/trial",
        &[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "GET"),
        ],
    );
    assert_eq!(
        code(&x.on_request_headers(&engine, h, true, &mut host)),
        "origin_not_allowed"
    );
    assert_eq!(host.rejected, 1);
    // A client's own copy of the list never reaches the upstream, in any spelling.
    let sig = signed(b"", NOW, "nonce-report-cccccccccc");
    let h = request(
        "GET",
        "/trial",
        &[
            ("x-api-key", KEY),
            ("x-edge-warden-would-reject", "forged"),
            ("x_edge_warden_would_reject", "forged"),
        ],
    );
    let mut x = Exchange::new();
    let list = edits(x.on_request_headers(&engine, with(h, &sig), true, &mut host));
    assert!(list.contains(&("x-edge-warden-would-reject".into(), None)));
    assert!(list.contains(&("x_edge_warden_would_reject".into(), None)));
    assert_eq!(would_reject(&list), None);
}

#[test]
fn under_report_mode_a_streamed_body_over_its_limit_is_counted_and_goes_on() {
    let stream = r#"{"name": "stream", "mode": "report", "match": {"path_prefix": "/stream"},
          "signature": false, "request": {"max_body_bytes": 4}},
        {"name": "health""#;
    let (engine, _) = engine_of(&config_json().replacen(r#"{"name": "health""#, stream, 1));
    let mut host = TestHost::new();
    let mut x = Exchange::new();
    let list =
        edits(x.on_request_headers(&engine, request("POST", "/stream", &[]), false, &mut host));
    assert_eq!(would_reject(&list), None);
    assert_eq!(x.body_mode(), BodyMode::Streamed);
    assert!(matches!(
        x.on_request_body_length(&engine, 3, false, &mut host),
        Action::Continue(_)
    ));
    // Past the limit: counted and logged, never answered; the body rules stop.
    assert!(matches!(
        x.on_request_body_length(&engine, 3, false, &mut host),
        Action::Continue(_)
    ));
    assert_eq!((host.reported, host.rejected), (1, 0));
    assert_eq!(x.body_mode(), BodyMode::Ignore);
    assert!(!x.answered());
}

#[test]
fn envoys_own_reply_while_the_fleet_claim_is_out_releases_the_key_here_and_there() {
    let json = idem_json().replacen(
        "\"policies\"",
        r#""remote_state": {"cluster": "state"}, "policies""#,
        1,
    );
    let (engine, _) = engine_of(&json);
    let mut host = TestHost::new();
    let mut x = Exchange::new();
    assert!(matches!(
        order(&mut x, &engine, &mut host, "k-8", b"x"),
        Action::Call(_)
    ));
    // Envoy times the request out while the Begin call is out, and answers itself.
    x.on_response_headers(&engine, headers(&[(":status", "504")]), &mut host);
    let call = x.on_response_end(&engine, &mut host).expect("a release");
    assert_eq!(call.method, remote::Method::ReleaseIdempotent);
    // Here the key is free again: a retry claims it (and asks the fleet).
    assert!(matches!(
        order(&mut Exchange::new(), &engine, &mut host, "k-8", b"x"),
        Action::Call(_)
    ));
}

// Webhook presets: each secret from its own variable, the body held and hashed after the
// sender's prefix, the dedupe claim made once the MAC verified.

const STRIPE_SECRET: &str = "whsec_engine_test_0123456789abcdefghij";
const HOOK_SECRET: &str = "github-engine-test-secret-0123456789";

fn hooks_engine(remote: bool) -> (Engine, Arc<LocalState<MemoryStore>>) {
    let remote = if remote {
        r#""remote_state": {"cluster": "state", "failure_mode": "fail_closed"},"#
    } else {
        ""
    };
    let json = format!(
        r#"{{{remote}
      "policies": [
        {{"name": "stripe", "match": {{"path": "/hooks/stripe"}},
          "signature": {{"scheme": "stripe", "secrets": [{{"id": "st", "env": "STRIPE"}}]}}}},
        {{"name": "github", "match": {{"path": "/hooks/github"}},
          "signature": {{"scheme": "github", "secrets": [{{"id": "gh", "env": "GITHUB"}}], "dedupe_seconds": 600}}}}
      ]
    }}"#
    );
    let env = |name: &str| match name {
        "STRIPE" => Some(STRIPE_SECRET.to_string()),
        "GITHUB" => Some(HOOK_SECRET.to_string()),
        _ => None,
    };
    let config = Config::from_json(json.as_bytes(), &env).expect("config");
    let state = Arc::new(LocalState::new(&config, MemoryStore::default()));
    state.prepare().expect("prepare");
    (Engine::new(config, Box::new(state.clone())), state)
}

fn delivery(
    engine: &Engine,
    host: &mut TestHost,
    path: &str,
    sent: &[(String, String)],
    body: &[u8],
) -> Action {
    let mut x = Exchange::new();
    let a = x.on_request_headers(engine, with(request("POST", path, &[]), sent), false, host);
    if !matches!(a, Action::Pause) {
        return a;
    }
    assert_eq!(x.body_mode(), BodyMode::Held);
    let (first, rest) = body.split_at(body.len() / 2);
    assert!(matches!(
        x.on_request_body(engine, first, false, host),
        Action::Pause
    ));
    x.on_request_body(engine, rest, true, host)
}

#[test]
fn a_stripe_delivery_is_verified_over_its_body_and_its_replay_refused() {
    use crate::checks::webhook::{sign, Preset};
    let (engine, _) = hooks_engine(false);
    let mut host = TestHost::new();
    let body = br#"{"id":"evt_1"}"#;
    let sent = sign(Preset::Stripe, STRIPE_SECRET.as_bytes(), body, NOW, "");
    let list = edits(delivery(&engine, &mut host, "/hooks/stripe", &sent, body));
    assert!(list.contains(&("x-edge-warden-key-id".into(), Some("st".into()))));
    // The same delivery again: the MAC was claimed.
    let a = delivery(&engine, &mut host, "/hooks/stripe", &sent, body);
    assert_eq!(code(&a), "nonce_replayed");
    // Another body under the captured header.
    let a = delivery(
        &engine,
        &mut host,
        "/hooks/stripe",
        &sent,
        br#"{"id":"evt_2"}"#,
    );
    assert_eq!(code(&a), "invalid_signature");
    // Signed six minutes ago: out of Stripe's tolerance, refused at the headers.
    let old = sign(
        Preset::Stripe,
        STRIPE_SECRET.as_bytes(),
        body,
        NOW - 360,
        "",
    );
    let a = delivery(&engine, &mut host, "/hooks/stripe", &old, body);
    assert_eq!(code(&a), "timestamp_out_of_window");
    let a = delivery(&engine, &mut host, "/hooks/stripe", &[], body);
    assert_eq!(code(&a), "missing_signature");
}

#[test]
fn a_github_delivery_is_deduplicated_on_its_delivery_id_fleet_wide() {
    use crate::checks::webhook::{sign, Preset};
    let (engine, _) = hooks_engine(true);
    let mut host = TestHost::new();
    let body = br#"{"zen":"Keep it logically awesome."}"#;
    let sent = sign(
        Preset::Github,
        HOOK_SECRET.as_bytes(),
        body,
        0,
        "delivery-1",
    );
    let call = expect_call(delivery(&engine, &mut host, "/hooks/github", &sent, body));
    let asked: AdmitRequest = prost::Message::decode(call.message.as_slice()).unwrap();
    let claim = asked.claim.expect("a claim");
    assert_eq!(
        claim.fingerprint,
        remote::fingerprint("github:github:delivery-1")
    );
    assert_eq!(claim.ttl_seconds, 600);
    // The same delivery id again is refused here, without a call.
    let a = delivery(&engine, &mut host, "/hooks/github", &sent, body);
    assert_eq!(code(&a), "nonce_replayed");
}

// RFC 9421: verified from the headers, the body held until its Content-Digest matched, the
// nonce claimed only then.

fn rfc_request(body: &[u8], nonce: &str) -> Vec<(String, Vec<u8>)> {
    use crate::checks::digest::{header_value, Algorithm};
    use crate::checks::rfc9421::{sign, Message};
    let digest = header_value(body, Algorithm::Sha256);
    let base = request(
        "POST",
        "/rfc/orders",
        &[(":scheme", "https"), ("content-digest", &digest)],
    );
    let headers = RequestHeaders::new(base.clone());
    let message = Message {
        method: "POST",
        scheme: "https",
        authority: "api.example.com",
        path: "/rfc/orders",
        headers: &headers,
    };
    let components = ["@method", "@authority", "@path", "content-digest"];
    let (input, signature) = sign(
        SECRET.as_bytes(),
        "primary",
        "sig1",
        &components,
        &message,
        NOW,
        None,
        Some(nonce),
        None,
    )
    .unwrap();
    with(
        base,
        &[
            ("signature-input".to_string(), input),
            ("signature".to_string(), signature),
        ],
    )
}

fn rfc_engine() -> (Engine, Arc<LocalState<MemoryStore>>) {
    engine_of(
        r#"{
      "signature": {"secrets": [{"id": "primary", "env": "S"}]},
      "policies": [{"name": "rfc", "signature": {"scheme": "rfc9421",
        "components": ["@method", "@authority", "@path", "content-digest"]}}]
    }"#,
    )
}

#[test]
fn an_rfc9421_body_is_held_until_its_digest_matches_and_only_then_is_the_nonce_claimed() {
    let (engine, state) = rfc_engine();
    let mut host = TestHost::new();
    let body = br#"{"item": 42}"#;
    let nonce = "rfc-nonce-0123456789abcdef";

    // A different body under the same headers: refused at its end, the nonce not spent.
    let mut x = Exchange::new();
    let a = x.on_request_headers(&engine, rfc_request(body, nonce), false, &mut host);
    assert!(matches!(a, Action::Pause), "{a:?}");
    assert_eq!(x.body_mode(), BodyMode::Held);
    let a = x.on_request_body(&engine, br#"{"item": 43}"#, true, &mut host);
    assert_eq!(code(&a), "content_digest_mismatch");

    let mut x = Exchange::new();
    x.on_request_headers(&engine, rfc_request(body, nonce), false, &mut host);
    assert!(matches!(
        x.on_request_body(&engine, &body[..4], false, &mut host),
        Action::Pause
    ));
    let list = edits(x.on_request_body(&engine, &body[4..], true, &mut host));
    assert!(list.contains(&("x-edge-warden-key-id".into(), Some("primary".into()))));
    assert!(nonce_recorded(
        &state,
        &format!("rfc9421:n:primary:{nonce}")
    ));

    // Replayed: refused at the end of its body, from the replay store.
    let mut x = Exchange::new();
    x.on_request_headers(&engine, rfc_request(body, nonce), false, &mut host);
    let a = x.on_request_body(&engine, body, true, &mut host);
    assert_eq!(code(&a), "nonce_replayed");
}

#[test]
fn an_rfc9421_request_whose_path_is_not_utf8_is_refused_not_read_as_empty() {
    let (engine, _) = rfc_engine();
    let mut host = TestHost::new();
    let mut pairs = rfc_request(b"", "rfc-nonce-utf8-0123456789");
    for (name, value) in &mut pairs {
        if name == ":path" {
            *value = b"/rfc/orders\xff".to_vec();
        }
    }
    let mut x = Exchange::new();
    let a = x.on_request_headers(&engine, pairs, true, &mut host);
    assert_eq!(code(&a), "invalid_characters");
}
