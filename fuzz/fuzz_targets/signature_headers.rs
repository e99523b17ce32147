//! `X-Request-Signature` / `-Timestamp` / `-Nonce` parsing and streaming HMAC verification.
//!
//! Input: header lines, an empty line, the body (see `common.rs`). Checks, besides "no panic":
//! a refusal is a well-formed 4xx; a parse that succeeds is canonical (the timestamp prints back
//! as sent); verification agrees whether the body comes whole or in chunks, and with `sign`
//! (the reference formula) for both keys of a rotation; a re-signed request always verifies.
#![no_main]

mod common;

use edge_warden::checks::signature::{self, Keyring, SigningKey, Verifier, NONCE_MAX, NONCE_MIN};

use edge_warden::headers::RequestHeaders;
use edge_warden::reject::Reject;
use edge_warden::secret::Secret;
use libfuzzer_sys::fuzz_target;

const NEW: &[u8] = b"0123456789abcdef0123456789abcdef";
const OLD: &[u8] = b"old-0123456789abcdef0123456789abcdef";

fn keyring() -> Keyring {
    let key = |id: &str, secret: &[u8]| SigningKey {
        id: id.to_string(),
        secret: Secret::new(secret.to_vec()),
    };
    Keyring::new(&[key("new", NEW), key("old", OLD)])
}

fn verify(
    keyring: &Keyring,
    body: &[u8],
    chunk: usize,
    request: &signature::SignedRequest,
) -> Result<usize, Reject> {
    let mut v = Verifier::new(keyring);
    for part in body.chunks(chunk.max(1)) {
        v.update(part);
    }
    assert_eq!(v.body_len(), body.len() as u64);
    v.finish(request).map(|ok| ok.key_index)
}

fuzz_target!(|data: &[u8]| {
    let (headers, body) = common::request_headers(data);
    let request = match signature::parse_headers(&headers) {
        Ok(r) => r,
        Err(why) => return common::check_reject(&why),
    };

    // Well-formed means canonical: the raw values are exactly what the parsed ones print as.
    let raw_ts = headers
        .unique("x-request-timestamp")
        .ok()
        .flatten()
        .unwrap_or_default();
    assert_eq!(request.timestamp.to_string().as_bytes(), raw_ts);
    assert!((NONCE_MIN..=NONCE_MAX).contains(&request.nonce.len()));
    assert!(request
        .nonce
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    let sent = headers
        .unique("x-request-signature")
        .ok()
        .flatten()
        .unwrap_or_default()
        .to_ascii_lowercase();

    let keyring = keyring();
    let whole = verify(&keyring, body, body.len(), &request);
    let chunked = verify(&keyring, body, 7, &request);
    assert_eq!(whole, chunked, "chunking changed the verdict");

    let ts = request.timestamp.to_string();
    let by_new = signature::sign(NEW, body, &ts, &request.nonce);
    let by_old = signature::sign(OLD, body, &ts, &request.nonce);
    let expected = if sent == by_new.as_bytes() {
        Ok(0)
    } else if sent == by_old.as_bytes() {
        Ok(1)
    } else {
        Err(Reject::InvalidSignature)
    };
    assert_eq!(whole, expected);
    if let Err(why) = &whole {
        common::check_reject(why);
    }

    // Round trip: the same request signed with the old key parses and verifies as key 1.
    let resigned = RequestHeaders::new(vec![
        ("x-request-signature".into(), by_old.into_bytes()),
        ("x-request-timestamp".into(), ts.into_bytes()),
        ("x-request-nonce".into(), request.nonce.clone().into_bytes()),
    ]);
    let again = signature::parse_headers(&resigned).expect("a re-signed request parses");
    assert_eq!(again.timestamp, request.timestamp);
    assert_eq!(again.nonce, request.nonce);
    assert_eq!(verify(&keyring, body, 64, &again), Ok(1));

    // The freshness window, at the edges of the clock's range.
    for (now, window) in [
        (1_700_000_000, 300),
        (0, 3600),
        (u64::MAX, 1),
        (request.timestamp, 0),
    ] {
        match signature::check_window(request.timestamp, now, window) {
            Ok(()) => assert!(request.timestamp.abs_diff(now) <= window),
            Err(why) => {
                assert!(request.timestamp.abs_diff(now) > window);
                common::check_reject(&why);
            }
        }
    }
});
