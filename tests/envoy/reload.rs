//! A configuration change delivered to a running Envoy (LDS from a watched file, as a control
//! plane or Istio delivers it) keeps the state of the filter: nonces already seen stay seen,
//! locally and in the fleet's store.

use crate::fleet::{Redis, StateService};
use crate::harness::{default_plugin_config, Envoy, Options, Signed, SECRET};

/// The default plugin configuration with one more policy, so the update is a real change.
fn changed(config: &str) -> String {
    config.replacen(
        "\"policies\": [",
        "\"policies\": [\n    { \"name\": \"status\", \"match\": { \"path_prefix\": \"/status\" }, \"signature\": false },",
        1,
    )
}

#[test]
fn a_plugin_configuration_change_keeps_the_nonces_already_seen() {
    let mut envoy = Envoy::start(Options {
        lds: true,
        ..Options::default()
    });
    let before = Signed::new(SECRET, b"");
    assert_eq!(
        envoy
            .request("GET", "/orders", &before.headers(), b"")
            .status,
        200
    );
    assert_eq!(envoy.request("GET", "/status", &[], b"").status, 401);

    envoy.update_plugin_config(&changed(&default_plugin_config()));
    // The new configuration is in force...
    assert_eq!(envoy.request("GET", "/status", &[], b"").status, 200);
    // ...and the nonce used before it is still a replay.
    let r = envoy.request("GET", "/orders", &before.headers(), b"");
    assert_eq!((r.status, r.code().as_str()), (401, "nonce_replayed"));
    assert_eq!(
        envoy
            .request("GET", "/orders", &Signed::new(SECRET, b"").headers(), b"")
            .status,
        200
    );
}

#[test]
fn with_fleet_state_a_reload_keeps_local_and_remote_nonces() {
    let redis = Redis::start();
    let service = StateService::start(redis.port);
    let mut envoy =
        crate::fleet::fleet_envoy_with(&[service.port], "fail_closed", |o| o.lds = true);
    let before = Signed::new(SECRET, b"");
    assert_eq!(
        envoy
            .request("GET", "/orders", &before.headers(), b"")
            .status,
        200
    );
    let calls = crate::fleet::state_requests(&envoy);
    let config = crate::fleet::plugin_config("fail_closed");
    envoy.update_plugin_config(&changed(&config));
    assert_eq!(envoy.request("GET", "/status", &[], b"").status, 200);
    let r = envoy.request("GET", "/orders", &before.headers(), b"");
    assert_eq!((r.status, r.code().as_str()), (401, "nonce_replayed"));
    // Refused by this Envoy's own memory, which the reload kept: no call was needed.
    assert_eq!(crate::fleet::state_requests(&envoy), calls);
    assert!(redis.keys() >= 1, "and the fleet's record is in Redis");
}

#[test]
fn a_reload_that_would_move_the_replay_cache_is_refused_and_the_old_configuration_serves_on() {
    let mut envoy = Envoy::start(Options {
        lds: true,
        ..Options::default()
    });
    let before = Signed::new(SECRET, b"");
    let signed = |envoy: &Envoy, s: &Signed| envoy.request("GET", "/orders", &s.headers(), b"");
    assert_eq!(signed(&envoy, &before).status, 200);
    // Another capacity lays the cache out in other shards, where the nonce above would not be
    // found: Envoy gets a refusal that says so, and keeps the running configuration.
    let moved = changed(&default_plugin_config()).replacen(
        "\"policies\"",
        "\"replay\": { \"capacity\": 65536 },\n  \"policies\"",
        1,
    );
    assert!(!envoy.try_update_plugin_config(&moved));
    assert!(envoy
        .log_once_it_has("replay.capacity gives")
        .contains("Keep the capacity, or restart Envoy"));
    assert_eq!(
        envoy.request("GET", "/status", &[], b"").status,
        401,
        "old config serves"
    );
    let r = signed(&envoy, &before);
    assert_eq!((r.status, r.code().as_str()), (401, "nonce_replayed"));
    assert_eq!(signed(&envoy, &Signed::new(SECRET, b"")).status, 200);
}
