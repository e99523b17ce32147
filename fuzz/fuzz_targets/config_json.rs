//! The plugin configuration: `Config::from_json` on arbitrary bytes (every environment variable
//! holds a 40-byte secret), then `Config::select` with fuzzed route, method and path.
//!
//! Input: the JSON, then optionally a NUL byte and `route\nmethod\npath` (JSON cannot hold a raw
//! NUL, so the split never cuts a valid document; an empty route field means no route name).
//! Checks: neither a loaded configuration's `Debug` nor an error's text shows the secret (one
//! known exception, see below); loaded
//! limits are within their documented bounds; `select` ignores the query and fragment.
#![no_main]

mod common;

use edge_warden::checks::signature::{self, Keyring};
use edge_warden::config::{self, Config};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "fz-secret-7f3a9c2e1b5d4f6a8c0e2b4d6f8a1c";

fn same<T>(a: Option<&T>, b: Option<&T>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => std::ptr::eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let (json, tail) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &data[data.len()..]),
    };
    // The input may itself spell the secret (a policy or origin named after it, in any case,
    // even through JSON escapes): look for leaks only when no string the user wrote holds it.
    // Secrets are read only after the JSON parsed, so an input that does not parse cannot leak.
    let leak_check = config::parse_raw(json).is_ok_and(|raw| {
        !format!("{raw:?}")
            .to_ascii_lowercase()
            .contains(&SECRET.to_ascii_lowercase())
    });
    let env = |_: &str| Some(SECRET.to_string());
    let config = match Config::from_json(json, &env) {
        Ok(c) => c,
        Err(e) => {
            // fuzz/regressions/config_json/ holds the input that once showed the secret
            // through the `allow_origin_env` error.
            if leak_check {
                assert!(
                    !e.to_string().contains(SECRET),
                    "an error shows the secret: {e}"
                );
            }
            return;
        }
    };
    assert_eq!(SECRET.len(), 40);
    if leak_check {
        assert!(
            !format!("{config:?}").contains(SECRET),
            "Debug shows the secret"
        );
        for w in &config.warnings {
            assert!(!w.contains(SECRET), "a warning shows the secret: {w}");
        }
    }
    assert!(!config.policies.is_empty());
    assert!(config.keys.len() <= signature::MAX_SECRETS);
    assert!(config
        .keys
        .iter()
        .all(|k| k.secret.expose() == SECRET.as_bytes()));
    assert!((1..=3600).contains(&config.window_seconds));
    for p in &config.policies {
        assert!(
            (1..=config::MAX_MAX_BODY_BYTES).contains(&p.max_body_bytes),
            "{}",
            p.name
        );
        assert!(
            !p.signature
                .as_ref()
                .is_some_and(|s| s.uses_shared_secrets())
                || !config.keys.is_empty()
        );
    }
    let _ = Keyring::new(&config.keys);

    let (fields, _) = common::fields::<3>(tail);
    let [route, method, path] = fields.map(String::from_utf8_lossy);
    let route = (!route.is_empty()).then_some(route.as_ref());
    let chosen = config.select(route, &method, &path);
    for suffix in ["?x=1", "#frag", "?"] {
        let with = format!("{path}{suffix}");
        assert!(
            same(chosen, config.select(route, &method, &with)),
            "the query or fragment changed the policy for {path:?}"
        );
    }
    for (route, method, path) in [
        (None, "GET", "/"),
        (Some("r"), "POST", "/api/x?q"),
        (None, "", ""),
    ] {
        let _ = config.select(route, method, path);
    }
});
