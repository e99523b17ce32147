//! Envoy around the filter: the rate-limit tiers of envoy/envoy.yaml, per caller, keyed on the
//! identity edge-warden sets, with 429s in edge-warden's problem+json shape.

use edge_warden::checks::api_key::hash_key;

use crate::harness::{Envoy, Options};

const KEY_A: &str = "ew_rate_limit_client_a_0123456789abcdefghijklmn";
const KEY_B: &str = "ew_rate_limit_client_b_0123456789abcdefghijklmn";

fn envoy() -> Envoy {
    let config = format!(
        r#"{{
      "api_keys": {{"keys": [{{"id": "a", "sha256": "{}", "role": "client"}},
                            {{"id": "b", "sha256": "{}", "role": "client"}}]}},
      "policies": [{{"name": "health", "match": {{"path_prefix": "/health"}}, "signature": false}},
                   {{"name": "keyed", "signature": false, "api_key": {{}}}}]
    }}"#,
        hash_key(KEY_A),
        hash_key(KEY_B)
    );
    Envoy::start(Options::with_config(&config))
}

#[test]
fn each_tier_limits_at_its_number_per_caller() {
    let envoy = envoy();
    for (path, limit) in [
        ("/auth/login", 5),
        ("/admin/users", 10),
        ("/api/items", 30),
        ("/other", 60),
    ] {
        for i in 0..limit {
            let r = envoy.request("GET", path, &[("x-api-key", KEY_A)], b"");
            assert_eq!(r.status, 200, "{path}: request {} of {limit}", i + 1);
        }
        let r = envoy.request("GET", path, &[("x-api-key", KEY_A)], b"");
        assert_eq!((r.status, r.code()), (429, "rate_limited".into()), "{path}");
        let retry: u64 = r
            .header("retry-after")
            .expect("retry-after")
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry), "{path}: retry-after {retry}");
        assert_eq!(
            r.header("x-ratelimit-limit"),
            Some(limit.to_string().as_str())
        );
        assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
        assert!(r.json()["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()));
        assert_eq!(
            r.header("x-frame-options"),
            Some("DENY"),
            "security headers on the 429"
        );
        // Another caller has its own bucket.
        let r = envoy.request("GET", path, &[("x-api-key", KEY_B)], b"");
        assert_eq!(r.status, 200, "{path}: client b was limited by client a");
    }
}

#[test]
fn health_is_never_limited_and_rejections_keep_their_own_codes() {
    let envoy = envoy();
    for _ in 0..120 {
        assert_eq!(envoy.request("GET", "/health", &[], b"").status, 200);
    }
    // edge-warden's own 401s are local replies too, but not rate-limited ones: their code stays.
    let r = envoy.request("GET", "/api/x", &[], b"");
    assert_eq!((r.status, r.code()), (401, "missing_api_key".into()));
}
