//! Configuration: what Envoy loads, what it refuses, and what `warden check-config` says.

use std::process::Command;

use crate::harness::{default_plugin_config, envoy_binary, render, repo, Envoy, Options};

#[test]
fn the_shipped_envoy_yaml_validates() {
    let out = Command::new(envoy_binary())
        .args([
            "--mode",
            "validate",
            "-c",
            "envoy/envoy.yaml",
            "--disable-hot-restart",
        ])
        .current_dir(repo())
        .env("HMAC_SHARED_SECRET", crate::harness::SECRET)
        .output()
        .expect("envoy");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("configuration 'envoy/envoy.yaml' OK"),
        "{text}"
    );
}

fn refused(config: &str, env: Vec<(String, String)>) -> String {
    let opts = Options {
        plugin_config: Some(config.to_string()),
        env,
        ..Options::default()
    };
    match Envoy::try_start(opts) {
        Ok(_) => panic!("Envoy accepted an invalid configuration: {config}"),
        Err(refused) => {
            assert!(!refused.success, "Envoy must exit with an error");
            refused.log
        }
    }
}

#[test]
fn envoy_refuses_an_invalid_plugin_config_and_names_the_field() {
    let secret = vec![(
        "HMAC_SHARED_SECRET".to_string(),
        crate::harness::SECRET.to_string(),
    )];
    let cases = [
        (
            r#"{"policies": [{"name": "a", "sigature": true}]}"#,
            "field `policies[0].sigature`: unknown field `sigature`",
        ),
        (
            r#"{"signature": {"window_seconds": "300"}, "policies": [{"name": "a", "signature": false}]}"#,
            "field `signature.window_seconds`: invalid type",
        ),
        (
            r#"{"signature": {"secrets": [{"id": "k", "env": "HMAC_SHARED_SECRET"}]}, "policies": [{"name": "a", "match": {"methods": ["post"]}}]}"#,
            "field `policies[0].match.methods[0]`",
        ),
        (
            r#"{"policies": [{"name": "a", "signature": false, "request": {"required_headers": [{"name": "x-device-id", "pattern": "([a-z"}]}}]}"#,
            "field `policies[0].request.required_headers[0].pattern`",
        ),
        (
            r#"{"policies": [{"name": "a", "signature": false, "idempotency": {"ttl_seconds": 0}}]}"#,
            "field `policies[0].idempotency.ttl_seconds`: must be between 1 and 604800 seconds",
        ),
        (
            r#"{"policies": [{"name": "a", "signature": false, "upload": {"allowed_extensions": ["exe"]}}]}"#,
            "field `policies[0].upload.allowed_extensions[0]`",
        ),
    ];
    for (config, expected) in cases {
        let log = refused(config, secret.clone());
        assert!(log.contains(expected), "expected `{expected}` in:\n{log}");
        assert!(log.contains("invalid edge-warden configuration"), "{log}");
    }
}

#[test]
fn envoy_refuses_a_missing_or_short_secret_without_printing_it() {
    let config = default_plugin_config();
    let log = refused(&config, vec![]);
    assert!(
        log.contains(
            "field `signature.secrets[0].env`: environment variable HMAC_SHARED_SECRET is not set"
        ),
        "{log}"
    );
    let short = "short-secret-value";
    let log = refused(&config, vec![("HMAC_SHARED_SECRET".into(), short.into())]);
    assert!(
        log.contains("is 18 bytes; at least 32 are required"),
        "{log}"
    );
    assert!(!log.contains(short), "the secret value is in the log");
}

#[test]
fn envoy_validate_mode_catches_a_bad_plugin_config() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::with_config(r#"{"policies": []}"#);
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, render(&opts, 1)).unwrap();
    let out = Command::new(envoy_binary())
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(&path)
        .env("HMAC_SHARED_SECRET", crate::harness::SECRET)
        .env(
            "ENVOY_DYNAMIC_MODULES_SEARCH_PATH",
            crate::harness::native_module_dir(),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("field `policies`: at least one policy is required"),
        "{text}"
    );
}

#[test]
fn route_names_select_policies() {
    // The shipped envoy.yaml names its routes `health`, `auth`, `sensitive`, `standard`, `general`.
    let config = r#"{
      "signature": {"secrets": [{"id": "primary", "env": "HMAC_SHARED_SECRET"}]},
      "policies": [
        {"name": "public-health", "match": {"route": "health"}, "signature": false},
        {"name": "signed-api", "match": {"route": "general"}}
      ]
    }"#;
    let envoy = Envoy::start(Options::with_config(config));
    assert_eq!(envoy.request("POST", "/health", &[], b"").status, 200);
    let r = envoy.request("GET", "/anything", &[], b"");
    assert_eq!((r.status, r.code()), (401, "missing_signature".into()));
}

#[test]
fn a_request_no_policy_covers_is_refused() {
    let config = r#"{"policies": [{"name": "only-health", "match": {"path": "/health"}, "signature": false}]}"#;
    let envoy = Envoy::start(Options::with_config(config));
    assert_eq!(envoy.request("GET", "/health", &[], b"").status, 200);
    let r = envoy.request("GET", "/other", &[], b"");
    assert_eq!((r.status, r.code()), (403, "no_matching_policy".into()));
}
