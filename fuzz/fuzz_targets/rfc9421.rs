//! RFC 9421 `Signature-Input` / `Signature` parsing, signature base and verification.
//!
//! Input: header lines, an empty line, then nothing that is read (see `common.rs`); the
//! pseudo-headers `:method`, `:scheme`, `:authority` and `:path` give the [`Message`]. Checks,
//! besides "no panic": a refusal is a well-formed 4xx; a pass names one of the two keys and a
//! `rfc9421:` replay record; and the same request, signed again by `rfc9421::sign` with the
//! second key over its own headers, always verifies with that key.
#![no_main]

mod common;

use edge_warden::checks::rfc9421::{self, Message, RawRfc9421, Rfc9421Settings, MAX_WINDOW};
use edge_warden::checks::signature::SigningKey;
use edge_warden::headers::RequestHeaders;
use edge_warden::secret::Secret;
use libfuzzer_sys::fuzz_target;

const NEW: &[u8] = b"0123456789abcdef0123456789abcdef";
const OLD: &[u8] = b"old-0123456789abcdef0123456789abcdef";
const NOW: u64 = 1_700_000_000;

fn keys() -> [SigningKey; 2] {
    let key = |id: &str, secret: &[u8]| SigningKey {
        id: id.to_string(),
        secret: Secret::new(secret.to_vec()),
    };
    [key("new", NEW), key("old", OLD)]
}

fn pseudo(headers: &RequestHeaders, name: &str, default: &str) -> String {
    headers.first(name).map_or(default.to_string(), |v| {
        String::from_utf8_lossy(v).into_owned()
    })
}

fuzz_target!(|data: &[u8]| {
    let (pairs, _) = common::split_request(data);
    let headers = RequestHeaders::new(pairs.clone());
    let method = pseudo(&headers, ":method", "POST");
    let scheme = pseudo(&headers, ":scheme", "https");
    let authority = pseudo(&headers, ":authority", "example.com");
    let path = pseudo(&headers, ":path", "/foo?param=Value&Pet=dog");
    let message = Message {
        method: &method,
        scheme: &scheme,
        authority: &authority,
        path: &path,
        headers: &headers,
    };
    let Ok(settings) = Rfc9421Settings::from_raw(
        &RawRfc9421 {
            require_nonce: false,
            window_seconds: Some(MAX_WINDOW),
            ..RawRfc9421::default()
        },
        300,
    ) else {
        panic!("the fuzz target's own settings do not compile");
    };
    let keys = keys();
    match rfc9421::verify(&settings, &keys, &message, NOW) {
        Ok(verified) => {
            assert!(verified.proof.key_index < keys.len());
            assert!(verified.replay_id.starts_with("rfc9421:"));
        }
        Err(why) => common::check_reject(&why),
    }

    // Signed again over the defaults, the query and the first header it has (if any).
    let mut components = vec!["@method", "@authority", "@path", "@query"];
    let covered = pairs
        .iter()
        .map(|(n, _)| n.as_str())
        .find(|n| !n.starts_with(':') && !n.starts_with("signature"));
    components.extend(covered);
    let Ok((input, signature)) = rfc9421::sign(
        OLD,
        "old",
        "fuzz",
        &components,
        &message,
        NOW,
        None,
        None,
        None,
    ) else {
        return;
    };
    let mut resigned: Vec<(String, Vec<u8>)> = pairs
        .into_iter()
        .filter(|(n, _)| {
            !n.eq_ignore_ascii_case("signature-input") && !n.eq_ignore_ascii_case("signature")
        })
        .collect();
    resigned.push(("signature-input".into(), input.into_bytes()));
    resigned.push(("signature".into(), signature.into_bytes()));
    let headers = RequestHeaders::new(resigned);
    let message = Message {
        headers: &headers,
        ..message
    };
    match rfc9421::verify(&settings, &keys, &message, NOW) {
        Ok(verified) => assert_eq!(verified.proof.key_index, 1),
        Err(why) => panic!("a request sign() accepted does not verify: {why:?}"),
    }
});
