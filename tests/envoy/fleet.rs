//! One truth across the fleet: two real Envoys share replay and lockout state through the
//! edge-warden-state service and a real Redis (Debian's `redis-server`), all on loopback and
//! started here. Each test runs on the runtime `EDGE_WARDEN_RUNTIME` names.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use edge_warden::checks::api_key::hash_key;

use crate::harness::{repo, Envoy, Options, Resp, Signed, SECRET};

const KEY: &str = "ew_fleet_key_0123456789abcdefghijklmnopqrstuvw";
const WRONG_KEY: &str = "ew_wrong_key_0123456789abcdefghijklmnopqrstuvw";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} not ready in 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Debian's redis-server on a loopback port, nothing persisted.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Self {
        let mut redis = Redis {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
        };
        redis.restart();
        redis
    }

    /// Starts it (again) on the same port.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (make test installs it)");
        self.child = Some(child);
        let port = self.port;
        wait_until("redis-server", || redis_command(port, "PING") == "+PONG");
    }

    /// Freezes (`-STOP`) or thaws (`-CONT`) it: a Redis that accepts but never answers.
    pub fn signal(&self, signal: &str) {
        send_signal(self.child.as_ref(), signal);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Keys the service wrote (it prefixes every key with `ew:`).
    pub fn keys(&self) -> usize {
        let reply = redis_command(self.port, "DBSIZE");
        reply.trim_start_matches(':').parse().unwrap_or(0)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn send_signal(child: Option<&Child>, signal: &str) {
    let pid = child.expect("running").id().to_string();
    let status = Command::new("kill")
        .args([signal, &pid])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// One inline command; the first line of the reply.
fn redis_command(port: u16, command: &str) -> String {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(format!("{command}\r\n").as_bytes())
        .is_err()
    {
        return String::new();
    }
    let mut buf = [0u8; 256];
    let n = stream.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

pub fn state_binary() -> std::path::PathBuf {
    repo().join("target/release/edge-warden-state")
}

/// The edge-warden-state service in front of `redis_port`.
pub struct StateService {
    child: Option<Child>,
    pub port: u16,
    redis_port: u16,
}

impl StateService {
    pub fn start(redis_port: u16) -> Self {
        assert!(
            state_binary().exists(),
            "no target/release/edge-warden-state: run `make state`"
        );
        let mut service = StateService {
            child: None,
            port: free_port(),
            redis_port,
        };
        service.restart();
        service
    }

    pub fn restart(&mut self) {
        let child = Command::new(state_binary())
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--redis", &format!("redis://127.0.0.1:{}", self.redis_port)])
            // These tests assert what is decided, not how fast: under a loaded machine the
            // default 40 ms Redis deadline turned a claim into `state_unavailable`.
            .args(["--redis-timeout-ms", "1000"])
            .env_clear()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start edge-warden-state");
        self.child = Some(child);
        let port = self.port;
        wait_until("edge-warden-state", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// Freezes (`-STOP`) or thaws (`-CONT`) it: calls reach it and hang.
    pub fn signal(&self, signal: &str) {
        send_signal(self.child.as_ref(), signal);
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for StateService {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTP/2 cluster of state service instances, inserted into the rendered config.
fn state_cluster(ports: &[u16]) -> String {
    let endpoints: String = ports
        .iter()
        .map(|p| {
            format!(
                "        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, \
                 port_value: {p} }} }} }}\n"
            )
        })
        .collect();
    format!(
        "  clusters:
  - name: edge_warden_state
    type: STATIC
    connect_timeout: 0.25s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    load_assignment:
      cluster_name: edge_warden_state
      endpoints:
      - lb_endpoints:
{endpoints}"
    )
}

pub fn plugin_config(failure_mode: &str) -> String {
    format!(
        r#"{{
  "signature": {{"secrets": [{{"id": "primary", "env": "HMAC_SHARED_SECRET"}}]}},
  "api_keys": {{"keys": [{{"id": "fleet-ci", "sha256": "{}", "role": "client"}}]}},
  "lockout": {{"max_failures": 3, "window_seconds": 120}},
  "remote_state": {{"cluster": "edge_warden_state", "timeout_ms": 1000, "failure_mode": "{failure_mode}"}},
  "policies": [
    {{"name": "keyed", "match": {{"path_prefix": "/keyed"}}, "signature": false, "api_key": {{}}}},
    {{"name": "signed", "match": {{"path_prefix": "/"}}}}
  ]
}}"#,
        hash_key(KEY)
    )
}

fn fleet_envoy(state_ports: &[u16], failure_mode: &str) -> Envoy {
    fleet_envoy_with(state_ports, failure_mode, |_| {})
}

/// An Envoy whose filter shares state through the service at `state_ports`.
pub fn fleet_envoy_with(
    state_ports: &[u16],
    failure_mode: &str,
    adjust: impl FnOnce(&mut Options),
) -> Envoy {
    let mut opts = Options::with_config(&plugin_config(failure_mode));
    opts.edits
        .push(("  clusters:\n", state_cluster(state_ports)));
    adjust(&mut opts);
    Envoy::start(opts)
}

/// A signed GET, under /health: the one route envoy.yaml does not rate-limit, so only
/// edge-warden decides.
fn signed_get(envoy: &Envoy, signed: &Signed) -> Resp {
    envoy.request("GET", "/health/orders", &signed.headers(), b"")
}

/// Calls Envoy made to the state service cluster (Envoy's own count, not ours).
pub fn state_requests(envoy: &Envoy) -> i64 {
    envoy.cluster_stat("edge_warden_state", "upstream_rq_total")
}

#[test]
fn replays_spread_over_two_envoys_pass_exactly_once() {
    let redis = Redis::start();
    let service = StateService::start(redis.port);
    let a = Arc::new(fleet_envoy(&[service.port], "fail_closed"));
    let b = Arc::new(fleet_envoy(&[service.port], "fail_closed"));
    for round in 0..20 {
        let signed = Signed::new(SECRET, b"");
        let start = Arc::new(Barrier::new(32));
        let threads: Vec<_> = (0..32)
            .map(|i| {
                let envoy = if i % 2 == 0 { a.clone() } else { b.clone() };
                let (signed, start) = (signed.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let r = signed_get(&envoy, &signed);
                    let code = if r.status == 200 {
                        String::new()
                    } else {
                        r.code()
                    };
                    (r.status, code)
                })
            })
            .collect();
        let results: Vec<(u16, String)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let passed = results.iter().filter(|(s, _)| *s == 200).count();
        assert_eq!(passed, 1, "round {round}: {results:?}");
        assert!(
            results
                .iter()
                .all(|(s, c)| *s == 200 || (*s == 401 && c == "nonce_replayed")),
            "round {round}: {results:?}"
        );
    }
    assert!(redis.keys() >= 20, "the claims are in Redis");
}

#[test]
fn a_replay_at_the_same_envoy_is_refused_without_a_remote_call() {
    let redis = Redis::start();
    let service = StateService::start(redis.port);
    let a = fleet_envoy(&[service.port], "fail_closed");
    let signed = Signed::new(SECRET, b"");
    assert_eq!(signed_get(&a, &signed).status, 200);
    let calls = state_requests(&a);
    assert_eq!(calls, 1, "the first use of a nonce is claimed fleet-wide");
    for _ in 0..5 {
        let r = signed_get(&a, &signed);
        assert_eq!((r.status, r.code().as_str()), (401, "nonce_replayed"));
    }
    assert_eq!(
        state_requests(&a),
        calls,
        "replays here never leave the process"
    );
    assert_eq!(a.settled_stat("edge_warden_state_calls"), Some(1));
}

#[test]
fn wrong_credentials_over_two_envoys_lock_the_address_out_on_both() {
    let redis = Redis::start();
    let service = StateService::start(redis.port);
    let a = fleet_envoy(&[service.port], "fail_closed");
    let b = fleet_envoy(&[service.port], "fail_closed");
    let key =
        |envoy: &Envoy, key: &str| envoy.request("GET", "/keyed/x", &[("x-api-key", key)], b"");
    assert_eq!(key(&a, KEY).status, 200);
    assert_eq!(key(&b, KEY).status, 200);
    // Three wrong keys in all (max_failures 3): two at A, one at B. Neither Envoy saw three.
    for envoy in [&a, &b, &a] {
        let r = key(envoy, WRONG_KEY);
        assert_eq!((r.status, r.code().as_str()), (401, "invalid_api_key"));
    }
    // Now the address is locked out everywhere, even with the right key.
    for envoy in [&a, &b] {
        let r = key(envoy, KEY);
        assert_eq!(
            (r.status, r.code().as_str()),
            (429, "too_many_auth_failures")
        );
        let retry: u64 = r
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!((1..=120).contains(&retry), "retry-after {retry}");
    }
    // A signed request from the address is refused as well (the claim call asks the lockout).
    let r = signed_get(&b, &Signed::new(SECRET, b""));
    assert_eq!(
        (r.status, r.code().as_str()),
        (429, "too_many_auth_failures")
    );
}

#[test]
fn without_redis_requests_fail_closed_and_service_resumes_when_it_returns() {
    let mut redis = Redis::start();
    let service = StateService::start(redis.port);
    let a = fleet_envoy(&[service.port], "fail_closed");
    assert_eq!(signed_get(&a, &Signed::new(SECRET, b"")).status, 200);
    redis.stop();
    for _ in 0..3 {
        let r = signed_get(&a, &Signed::new(SECRET, b""));
        assert_eq!((r.status, r.code().as_str()), (503, "state_unavailable"));
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = signed_get(&a, &Signed::new(SECRET, b""));
        if r.status == 200 {
            break;
        }
        assert_eq!(
            r.status, 503,
            "only state_unavailable while Redis comes back"
        );
        assert!(
            Instant::now() < deadline,
            "no recovery after Redis came back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A Redis that hangs: the call times out (the service's own Redis deadline or the
    // filter's timeout_ms) and the request is refused, not held.
    redis.signal("-STOP");
    let r = signed_get(&a, &Signed::new(SECRET, b""));
    assert_eq!((r.status, r.code().as_str()), (503, "state_unavailable"));
    redis.signal("-CONT");
    let deadline = Instant::now() + Duration::from_secs(15);
    while signed_get(&a, &Signed::new(SECRET, b"")).status != 200 {
        assert!(Instant::now() < deadline, "no recovery after Redis thawed");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(a.settled_stat("edge_warden_state_unavailable").unwrap_or(0) >= 4);
}

#[test]
fn fail_open_lets_requests_through_on_local_checks_and_counts_them() {
    let redis = Redis::start();
    let mut service = StateService::start(redis.port);
    let a = fleet_envoy(&[service.port], "fail_open");
    service.kill();
    let signed = Signed::new(SECRET, b"");
    assert_eq!(signed_get(&a, &signed).status, 200);
    // The local level still holds: the same nonce at this Envoy is a replay.
    let r = signed_get(&a, &signed);
    assert_eq!((r.status, r.code().as_str()), (401, "nonce_replayed"));
    assert_eq!(a.settled_stat("edge_warden_state_failed_open"), Some(1));
    let log = a.log();
    assert!(log.contains("state service unavailable (unavailable); letting the request through"));
    // The warning names the policy and request id, never the credentials.
    for credential in [&signed.nonce, &signed.signature] {
        assert!(
            !log.contains(credential.as_str()),
            "a credential in the log"
        );
    }
}

#[test]
fn a_state_service_killed_and_restarted_under_load_lets_no_replay_through() {
    let redis = Redis::start();
    let mut service = StateService::start(redis.port);
    let a = Arc::new(fleet_envoy(&[service.port], "fail_closed"));
    let b = Arc::new(fleet_envoy(&[service.port], "fail_closed"));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Each worker sends a request to one Envoy and its replay to the other, over and over.
    let workers: Vec<_> = (0..4)
        .map(|i| {
            let (a, b, stop) = (a.clone(), b.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut outcomes = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let signed = Signed::new(SECRET, b"");
                    let (first, second) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
                    let one = signed_get(first, &signed).status;
                    let two = signed_get(second, &signed).status;
                    outcomes.push((one, two));
                }
                outcomes
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    service.kill();
    std::thread::sleep(Duration::from_millis(500));
    service.restart();
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let outcomes: Vec<(u16, u16)> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let accepted_twice = outcomes
        .iter()
        .filter(|(x, y)| *x == 200 && *y == 200)
        .count();
    assert_eq!(accepted_twice, 0, "a replay passed: {outcomes:?}");
    assert!(
        outcomes.iter().any(|(x, _)| *x == 200),
        "nothing passed at all"
    );
    assert!(
        outcomes.iter().any(|(x, _)| *x == 503),
        "the service was never seen down"
    );
    // Every answer is a pass, a replay refused, or fail-closed 503: nothing hangs or errs.
    for (x, y) in &outcomes {
        assert!(
            [200, 503].contains(x) && [200, 401, 503].contains(y),
            "{outcomes:?}"
        );
    }
}

#[test]
fn clients_that_leave_while_their_state_call_is_out_do_not_harm_envoy() {
    let redis = Redis::start();
    let service = StateService::start(redis.port);
    let a = fleet_envoy(&[service.port], "fail_closed");
    assert_eq!(signed_get(&a, &Signed::new(SECRET, b"")).status, 200);
    // The service hangs: each call stays out until timeout_ms, and the clients do not wait.
    service.signal("-STOP");
    for _ in 0..20 {
        let s = Signed::new(SECRET, b"");
        let mut stream = TcpStream::connect(("127.0.0.1", a.port)).expect("connect");
        let head = format!(
            "GET /health/orders HTTP/1.1\r\nhost: x\r\nx-request-signature: {}\r\n\
             x-request-timestamp: {}\r\nx-request-nonce: {}\r\n\r\n",
            s.signature, s.timestamp, s.nonce
        );
        stream.write_all(head.as_bytes()).expect("send");
        std::thread::sleep(Duration::from_millis(20));
        drop(stream);
    }
    // Past every call's timeout (1000 ms), with the streams long gone.
    std::thread::sleep(Duration::from_millis(1500));
    service.signal("-CONT");
    let r = signed_get(&a, &Signed::new(SECRET, b""));
    assert_eq!(r.status, 200, "Envoy still serves: {}", a.log());
}

/// The webhook presets' dedupe claims are the fleet's too: a delivery replayed to another Envoy
/// is refused there (Standard Webhooks on its `webhook-id`, Stripe on the MAC that matched),
/// signed by the senders' own packages.
#[test]
fn a_webhook_delivery_replayed_to_another_envoy_is_refused() {
    use crate::schemes::{self, assert_passed, assert_refused};
    use serde_json::json;
    let redis = Redis::start();
    let service = StateService::start(redis.port);
    let config = r#"{
      "remote_state": {"cluster": "edge_warden_state", "timeout_ms": 1000, "failure_mode": "fail_closed"},
      "policies": [
        {"name": "stripe", "match": {"path": "/hooks/stripe"}, "signature": {"scheme": "stripe",
          "secrets": [{"id": "stripe-new", "env": "STRIPE_SECRET_NEW"}]}},
        {"name": "swh", "match": {"path": "/hooks/standard"}, "signature": {"scheme": "standard_webhooks",
          "secrets": [{"id": "swh", "env": "SWH_SECRET"}]}}
      ]
    }"#;
    let envoy = || {
        let mut opts = Options::with_config(config);
        for (name, value) in [
            ("STRIPE_SECRET_NEW", schemes::STRIPE_SECRET_NEW),
            ("SWH_SECRET", schemes::SWH_SECRET),
        ] {
            opts.env.push((name.into(), value.into()));
            opts.host_env_keys.push(name.into());
        }
        opts.edits
            .push(("  clusters:\n", state_cluster(&[service.port])));
        Envoy::start(opts)
    };
    let (a, b) = (envoy(), envoy());
    let now = crate::harness::now();
    let body = r#"{"type":"invoice.paid"}"#;

    let id = format!("msg_{}", crate::harness::fresh_nonce());
    let sent = schemes::python(
        "standard-webhooks",
        &json!({"secret": schemes::SWH_SECRET, "id": id, "timestamp": now, "body": body}),
    );
    let post = |envoy: &Envoy, path: &str, headers: &schemes::Headers| {
        envoy.request("POST", path, &headers.pairs(), body.as_bytes())
    };
    assert_passed(&post(&a, "/hooks/standard", &sent), "swh", body.as_bytes());
    assert_refused(&post(&b, "/hooks/standard", &sent), 401, "nonce_replayed");

    let sent = schemes::python(
        "stripe",
        &json!({"secret": schemes::STRIPE_SECRET_NEW, "timestamp": now, "body": body}),
    );
    assert_passed(
        &post(&b, "/hooks/stripe", &sent),
        "stripe-new",
        body.as_bytes(),
    );
    assert_refused(&post(&a, "/hooks/stripe", &sent), 401, "nonce_replayed");
    assert_eq!(state_requests(&a) + state_requests(&b), 4);
}
