//! Security events and report mode through a real Envoy: every event line is JSON and carries
//! no credential; identical events are suppressed with a count; the same traffic against a
//! policy in `enforce` and in `report` mode gives the same codes, and report mode lets every
//! request through, naming them to the upstream.

use std::time::{Duration, Instant};

use edge_warden::checks::api_key::hash_key;
use serde_json::Value;

use crate::harness::{now, Envoy, Options, Resp, Signed, SECRET};

const CLIENT_KEY: &str = "ew_events_client_0123456789abcdefghijklmnopq";
const ADMIN_KEY: &str = "ew_events_admin_0123456789abcdefghijklmnopqr";
const GUESSED_KEY: &str = "ew_events_guess_0123456789abcdefghijklmnopqr";
const QUERY_TOKEN: &str = "qt_0123456789abcdefghijklmnopqrstuv";
const IDEMPOTENCY_KEY: &str = "idem-0123456789abcdefghijklmnopqrstuv";
const ORIGIN: &str = "https://app.example.com";

/// Every policy in `mode`; identical events suppressed for `suppress` seconds.
fn config(mode: &str, suppress: u64) -> String {
    format!(
        r#"{{
      "signature": {{"secrets": [{{"id": "primary", "env": "HMAC_SHARED_SECRET"}}]}},
      "api_keys": {{"keys": [
        {{"id": "ci-bot", "sha256": "{client}", "role": "client"}},
        {{"id": "ops", "sha256": "{admin}", "role": "admin"}}
      ]}},
      "events": {{"suppress_seconds": {suppress}}},
      "policies": [
        {{"name": "ops", "mode": "{mode}", "match": {{"path_prefix": "/ops"}}, "signature": false,
          "api_key": {{"roles": ["admin"]}}}},
        {{"name": "payments", "mode": "{mode}", "match": {{"path_prefix": "/payments"}},
          "signature": false, "api_key": {{}}, "idempotency": {{}}}},
        {{"name": "signed", "mode": "{mode}", "match": {{"path_prefix": "/orders"}},
          "cors": {{"allow_origins": ["{ORIGIN}"], "allow_methods": ["GET", "POST"]}}}}
      ]
    }}"#,
        client = hash_key(CLIENT_KEY),
        admin = hash_key(ADMIN_KEY),
    )
}

/// The event lines of the log (what edge-warden wrote from `{"event":` on), parsed: every one
/// must be JSON.
fn events(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| l.find("{\"event\":").map(|at| &l[at..]))
        .map(|json| {
            serde_json::from_str(json).unwrap_or_else(|e| panic!("event is not JSON ({e}): {json}"))
        })
        .collect()
}

/// The log once `done` holds for its events, or as it is after 15 s.
fn log_once(envoy: &Envoy, done: impl Fn(&[Value]) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = envoy.log();
        if done(&events(&log)) || Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn with_code<'a>(events: &'a [Value], code: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["event"] == "request_rejected" && e["code"] == code)
        .collect()
}

/// One scripted request: what it is, and the codes that refuse it (first: the one enforce mode
/// answers), empty if it is good.
struct Step {
    name: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    codes: Vec<&'static str>,
}

/// The traffic both modes get. Each refused code appears once, except `invalid_signature`,
/// which the request with two faults repeats.
fn script() -> (Vec<Step>, Vec<String>) {
    let mut credentials: Vec<String> = vec![
        SECRET.into(),
        CLIENT_KEY.into(),
        ADMIN_KEY.into(),
        GUESSED_KEY.into(),
        QUERY_TOKEN.into(),
        IDEMPOTENCY_KEY.into(),
    ];
    let mut signed = |body: &[u8], spoil: bool| {
        let mut s = Signed::new(SECRET, body);
        credentials.push(s.signature.clone());
        credentials.push(s.nonce.clone());
        if spoil {
            s.signature = Signed::new("another-secret-0123456789abcdef", body).signature;
            credentials.push(s.signature.clone());
        }
        vec![
            ("x-request-signature".to_string(), s.signature),
            ("x-request-timestamp".to_string(), s.timestamp),
            ("x-request-nonce".to_string(), s.nonce),
        ]
    };
    let replayed = signed(b"{\"n\":1}", false);
    let steps = vec![
        Step {
            name: "good signed POST",
            method: "POST",
            path: "/orders".into(),
            headers: replayed.clone(),
            body: b"{\"n\":1}".to_vec(),
            codes: vec![],
        },
        Step {
            name: "replay of it",
            method: "POST",
            path: "/orders".into(),
            headers: replayed,
            body: b"{\"n\":1}".to_vec(),
            codes: vec!["nonce_replayed"],
        },
        Step {
            name: "signed with another secret",
            method: "POST",
            path: "/orders".into(),
            headers: signed(b"{\"n\":2}", true),
            body: b"{\"n\":2}".to_vec(),
            codes: vec!["invalid_signature"],
        },
        Step {
            name: "no signature, query token",
            method: "GET",
            path: format!("/orders/7?token={QUERY_TOKEN}&page=2"),
            headers: vec![],
            body: vec![],
            codes: vec!["missing_signature"],
        },
        Step {
            name: "good signature, origin not allowed",
            method: "POST",
            path: "/orders".into(),
            headers: plus(signed(b"{}", false), &[("origin", "https://evil.example")]),
            body: b"{}".to_vec(),
            codes: vec!["origin_not_allowed"],
        },
        Step {
            name: "two faults: origin and signature",
            method: "POST",
            path: "/orders".into(),
            headers: plus(signed(b"{}", true), &[("origin", "https://evil.example")]),
            body: b"{}".to_vec(),
            codes: vec!["origin_not_allowed", "invalid_signature"],
        },
        Step {
            name: "a client's own would-reject list",
            method: "POST",
            path: "/orders".into(),
            headers: plus(
                signed(b"{}", false),
                &[("origin", ORIGIN), ("x-edge-warden-would-reject", "forged")],
            ),
            body: b"{}".to_vec(),
            codes: vec![],
        },
        Step {
            name: "client key on an admin route",
            method: "DELETE",
            path: "/ops/users/9".into(),
            headers: key(CLIENT_KEY),
            body: vec![],
            codes: vec!["insufficient_role"],
        },
        Step {
            name: "guessed key",
            method: "GET",
            path: "/ops/users".into(),
            headers: key(GUESSED_KEY),
            body: vec![],
            codes: vec!["invalid_api_key"],
        },
        Step {
            name: "admin key",
            method: "DELETE",
            path: "/ops/users/9".into(),
            headers: key(ADMIN_KEY),
            body: vec![],
            codes: vec![],
        },
        Step {
            name: "payment without an idempotency key",
            method: "POST",
            path: "/payments".into(),
            headers: plus(key(CLIENT_KEY), &[("content-type", "application/json")]),
            body: b"{\"eur\":5}".to_vec(),
            codes: vec!["idempotency_key_missing"],
        },
        Step {
            name: "payment with one",
            method: "POST",
            path: "/payments".into(),
            headers: plus(
                key(CLIENT_KEY),
                &[
                    ("content-type", "application/json"),
                    ("idempotency-key", IDEMPOTENCY_KEY),
                ],
            ),
            body: b"{\"eur\":5}".to_vec(),
            codes: vec![],
        },
    ];
    (steps, credentials)
}

fn key(k: &str) -> Vec<(String, String)> {
    vec![("x-api-key".to_string(), k.to_string())]
}

fn plus(mut a: Vec<(String, String)>, b: &[(&str, &str)]) -> Vec<(String, String)> {
    a.extend(b.iter().map(|(n, v)| (n.to_string(), v.to_string())));
    a
}

fn send(envoy: &Envoy, step: &Step) -> Resp {
    let headers: Vec<(&str, &str)> = step
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    envoy.request(step.method, &step.path, &headers, &step.body)
}

/// Every credential of the script, checked against the whole log.
fn assert_no_credential(log: &str, credentials: &[String]) {
    for credential in credentials {
        assert!(
            !log.contains(credential.as_str()),
            "a credential reached Envoy's log: {credential}"
        );
    }
}

#[test]
fn the_same_traffic_gives_the_same_codes_enforced_and_reported_and_report_mode_lets_it_through() {
    let (steps, credentials) = script();
    let enforce = Envoy::start(Options::with_config(&config("enforce", 60)));
    let report = Envoy::start(Options::with_config(&config("report", 60)));
    let started = now();
    let mut expected_reports = 0;
    for step in &steps {
        let enforced = send(&enforce, step);
        let reported = send(&report, step);
        match step.codes.first() {
            None => {
                assert_eq!(enforced.status, 200, "{}: {enforced:?}", step.name);
                // Enforce mode strips a client's own list too.
                let upstream = enforced.json()["headers"].clone();
                assert!(
                    upstream["x-edge-warden-would-reject"].is_null(),
                    "{upstream}"
                );
            }
            Some(code) => assert_eq!(enforced.code(), *code, "{}", step.name),
        }
        // Report mode: the upstream answered every request, told what would have refused it.
        assert_eq!(reported.status, 200, "{}: {reported:?}", step.name);
        let upstream = reported.json()["headers"].clone();
        let header = upstream["x-edge-warden-would-reject"].clone();
        if step.codes.is_empty() {
            assert!(header.is_null(), "{}: {upstream}", step.name);
        } else {
            assert_eq!(header, step.codes.join(","), "{}", step.name);
        }
        expected_reports += step.codes.len() as i64;
    }

    // Counted: one rejection per refused request, one report per code.
    let refused = steps.iter().filter(|s| !s.codes.is_empty()).count() as i64;
    // (each VM hands its counts to Envoy once a second)
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(enforce.total("edge_warden_rejected_total"), Some(refused));
    assert_eq!(
        report.total("edge_warden_reported_total"),
        Some(expected_reports)
    );
    assert_eq!(report.total("edge_warden_rejected_total"), Some(0));
    assert_eq!(
        report.total("edge_warden_allowed_total"),
        Some(steps.len() as i64)
    );

    // Logged: the same codes, enforced and not; every line JSON, no credential anywhere.
    let codes = |events: &[Value], enforced: bool| {
        let mut codes: Vec<String> = events
            .iter()
            .filter(|e| e["event"] == "request_rejected")
            .map(|e| {
                assert_eq!(e["enforced"], enforced, "{e}");
                e["code"].as_str().unwrap().to_string()
            })
            .collect();
        codes.sort();
        codes.dedup();
        codes
    };
    let mut all: Vec<String> = steps
        .iter()
        .flat_map(|s| s.codes.iter().map(|c| c.to_string()))
        .collect();
    all.sort();
    all.dedup();
    for (envoy, enforced) in [(&enforce, true), (&report, false)] {
        let log = log_once(envoy, |e| codes(e, enforced).len() == all.len());
        let events = events(&log);
        assert_eq!(codes(&events, enforced), all, "enforced: {enforced}");
        assert_no_credential(&log, &credentials);
        for e in &events {
            let timestamp = e["timestamp"].as_u64().unwrap_or(0);
            assert!(timestamp >= started && timestamp <= now(), "{e}");
        }
        // The query keeps its names, never its values.
        let missing = with_code(&events, "missing_signature");
        assert_eq!(missing[0]["path"], "/orders/7?token&page", "{}", missing[0]);
        assert_eq!(missing[0]["method"], "GET");
        assert_eq!(missing[0]["client"], "127.0.0.1");
        assert_eq!(missing[0]["policy"], "signed");
        assert_eq!(missing[0]["route"], "general");
        assert!(missing[0]["request_id"]
            .as_str()
            .is_some_and(|id| id.len() == 36));
        // Who: the key that authenticated (insufficient role), the secret that verified.
        assert_eq!(
            with_code(&events, "insufficient_role")[0]["key_id"],
            "ci-bot"
        );
        assert!(with_code(&events, "invalid_api_key")[0]["key_id"].is_null());
        assert_eq!(
            with_code(&events, "nonce_replayed")[0]["secret_id"],
            "primary"
        );
        assert!(with_code(&events, "invalid_signature")[0]["secret_id"].is_null());
        // The admin key's use is audited, in both modes.
        let admin: Vec<&Value> = events
            .iter()
            .filter(|e| e["event"] == "admin_key_used")
            .collect();
        assert_eq!(admin.len(), 1, "{admin:?}");
        assert_eq!(admin[0]["key_id"], "ops");
        assert_eq!(admin[0]["method"], "DELETE");
        assert_eq!(admin[0]["path"], "/ops/users/9");
        assert!(admin[0].get("code").is_none(), "{}", admin[0]);
        assert!(
            !log.contains("edge-warden rejected request"),
            "the old text line"
        );
    }
}

#[test]
fn identical_events_from_one_client_are_suppressed_and_summarised_with_their_count() {
    let envoy = Envoy::start(Options::with_config(&config("enforce", 1)));
    const SENT: u64 = 30;
    for _ in 0..SENT {
        let r = envoy.request("GET", "/ops/users", &[], b"");
        assert_eq!(r.code(), "missing_api_key");
    }
    // A request after the interval: natively, where no timer runs, summaries are written
    // from the next request's checks; wasm also writes them from its once-a-second tick.
    std::thread::sleep(Duration::from_millis(1100));
    let r = envoy.request("GET", "/ops/users", &[("x-api-key", ADMIN_KEY)], b"");
    assert_eq!(r.status, 200);
    let tally = |events: &[Value]| {
        let written = with_code(events, "missing_api_key").len() as u64;
        let summaries: Vec<&Value> = events
            .iter()
            .filter(|e| e["event"] == "events_suppressed")
            .collect();
        let suppressed: u64 = summaries.iter().map(|s| s["count"].as_u64().unwrap()).sum();
        (written, summaries.len() as u64, suppressed)
    };
    let log = log_once(&envoy, |e| {
        let (written, _, suppressed) = tally(e);
        written + suppressed == SENT
    });
    let seen = events(&log);
    let (written, summaries, suppressed) = tally(&seen);
    // Every refusal is in the log, as a line or in a count, and most only in a count.
    assert_eq!(written + suppressed, SENT, "{log}");
    assert!(
        suppressed > written,
        "written {written}, suppressed {suppressed}"
    );
    assert!(summaries >= 1);
    for summary in seen.iter().filter(|e| e["event"] == "events_suppressed") {
        assert_eq!(summary["code"], "missing_api_key", "{summary}");
        assert_eq!(summary["client"], "127.0.0.1");
        assert_eq!(summary["policy"], "ops");
        assert_eq!(summary["enforced"], true);
        assert_eq!(summary["interval_seconds"], 1);
    }
    // Audit events are never suppressed.
    let _ = envoy.request("GET", "/ops/users", &[("x-api-key", ADMIN_KEY)], b"");
    let log = log_once(&envoy, |e| {
        e.iter().filter(|e| e["event"] == "admin_key_used").count() == 2
    });
    let admin = events(&log)
        .iter()
        .filter(|e| e["event"] == "admin_key_used")
        .count();
    assert_eq!(admin, 2);
    assert!(!log.contains(ADMIN_KEY));
}

#[test]
fn under_report_mode_preflights_and_security_headers_are_as_in_enforce_mode() {
    for mode in ["enforce", "report"] {
        let envoy = Envoy::start(Options::with_config(&config(mode, 60)));
        let preflight = |origin: &str| {
            envoy.request(
                "OPTIONS",
                "/orders",
                &[
                    ("origin", origin),
                    ("access-control-request-method", "POST"),
                ],
                b"",
            )
        };
        let allowed = preflight(ORIGIN);
        assert_eq!(allowed.status, 204, "{mode}");
        assert_eq!(allowed.header("access-control-allow-origin"), Some(ORIGIN));
        let refused = preflight("https://evil.example");
        assert_eq!(refused.code(), "origin_not_allowed", "{mode}");
        // Security headers on the upstream's answer and on the filter's own.
        let passed = envoy.signed("POST", "/orders", b"{}");
        assert_eq!(passed.status, 200, "{mode}");
        for r in [&allowed, &refused, &passed] {
            assert_eq!(
                r.header("x-content-type-options"),
                Some("nosniff"),
                "{mode}: {r:?}"
            );
        }
    }
}
