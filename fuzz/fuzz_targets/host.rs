//! Trusted hosts: `HostPattern::parse` and `host::check` against a client's `:authority`.
//!
//! Input: `pattern\nauthority` (the authority is raw bytes, non-UTF-8 included). Checks: a pattern
//! that parses admits the authority it was written as (a wildcard: a subdomain of it, not the
//! apex); the verdict ignores ASCII case; a refusal is a well-formed 4xx.
#![no_main]

mod common;

use std::sync::OnceLock;

use edge_warden::checks::cors::split_host_port;
use edge_warden::checks::host::{self, HostPattern};
use libfuzzer_sys::fuzz_target;

fn fixed() -> &'static [HostPattern] {
    static P: OnceLock<Vec<HostPattern>> = OnceLock::new();
    P.get_or_init(|| {
        [
            "api.example.com",
            "*.example.org",
            "localhost:10000",
            "[::1]:10000",
            "127.0.0.1",
        ]
        .iter()
        .map(|p| HostPattern::parse(p).expect("fixed pattern"))
        .collect()
    })
}

fn verdict(patterns: &[HostPattern], authority: &[u8]) -> bool {
    let upper = authority.to_ascii_uppercase();
    let result = host::check(patterns, Some(authority));
    assert_eq!(
        result.is_ok(),
        host::check(patterns, Some(&upper)).is_ok(),
        "case changed the verdict"
    );
    match result {
        Ok(()) => {
            let text = std::str::from_utf8(authority).expect("an admitted authority is UTF-8");
            assert!(split_host_port(text).is_some());
            true
        }
        Err(why) => {
            common::check_reject(&why);
            false
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (fields, _) = common::fields::<2>(data);
    let [pattern, authority] = fields;

    assert!(host::check(fixed(), None).is_err());
    verdict(fixed(), authority);

    let Ok(text) = std::str::from_utf8(pattern) else {
        return;
    };
    let Ok(p) = HostPattern::parse(text) else {
        return;
    };
    let own = [p];
    verdict(&own, authority);
    match text.strip_prefix("*.") {
        None => assert!(verdict(&own, pattern), "{text:?} does not admit itself"),
        // A wildcard over a bracketed IPv6 address parses but can never match (no DNS label
        // can precede `[`); everything else admits a subdomain and not the apex.
        Some(rest) if !rest.starts_with('[') => {
            assert!(
                verdict(&own, format!("a.{rest}").as_bytes()),
                "{text:?} does not admit a.{rest}"
            );
            assert!(!verdict(&own, rest.as_bytes()), "{text:?} admits its apex");
        }
        Some(_) => {}
    }
});
