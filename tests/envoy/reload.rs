//! A configuration change delivered to a running Envoy (LDS from a watched file, as a control
//! plane or Istio delivers it) keeps the state of the filter: nonces already seen stay seen,
//! locally and in the fleet's store.

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
