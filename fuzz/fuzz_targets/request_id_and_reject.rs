//! `reject::usable_request_id` on a client's `x-request-id`, and `reject::respond` for every
//! kind of rejection, with the id and with fuzzed numbers and text in the details.
//!
//! Input: the raw header value; its first bytes also become the numbers (skew, limits, retry
//! times), its last byte picks the kind of rejection, and its lossy text is the `allowed` list
//! of a CORS refusal. Checks: a usable id is the input itself, 1 to 128 token characters; every
//! reply has a 4xx status, valid JSON naming the same code and status, no control character in
//! a header, and echoes the id exactly when it is usable.
#![no_main]

mod common;

use edge_warden::reject::{self, Reject, NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let usable = reject::usable_request_id(data);
    if let Some(id) = usable {
        assert_eq!(id.as_bytes(), data);
        assert!((1..=128).contains(&id.len()));
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')));
    }
    let n = common::le_u64(data);
    let text = String::from_utf8_lossy(data);
    let all = [
        Reject::MissingSignature {
            header: SIGNATURE_HEADER,
        },
        Reject::MalformedHeader {
            header: NONCE_HEADER,
            reason: "is too short",
        },
        Reject::DuplicatedHeader {
            header: TIMESTAMP_HEADER,
        },
        Reject::TimestampOutOfWindow {
            skew: n as i64,
            window: n.rotate_left(32),
            what: TIMESTAMP_HEADER,
        },
        Reject::TimestampOutOfWindow {
            skew: i64::MIN,
            window: u64::MAX,
            what: "webhook-timestamp",
        },
        Reject::InvalidSignature,
        Reject::NonceReplayed,
        Reject::BodyTooLarge { limit: n },
        Reject::ReplayCacheFull { retry_after: n },
        Reject::ReplayCheckUnavailable,
        Reject::NoMatchingPolicy,
        Reject::OriginNotAllowed,
        Reject::CorsMethodNotAllowed {
            what: "header",
            allowed: text.clone().into_owned(),
        },
        Reject::HostNotAllowed,
        Reject::MissingApiKey,
        Reject::InvalidApiKey,
        Reject::ExpiredApiKey,
        Reject::ApiKeyNotYetValid,
        Reject::InsufficientRole,
        Reject::IpNotAllowed,
        Reject::TooManyAuthFailures { retry_after: n },
        Reject::RateLimited,
        Reject::MissingSignedComponents {
            missing: text.clone().into_owned(),
        },
        Reject::SignatureNotAccepted {
            reason: "it has expired",
        },
        Reject::ContentDigestMismatch,
    ];
    // One kind of rejection per input (the last byte picks it, so that the id stays the whole
    // input), replied to with the id as Envoy would pass it (the lossy text of whatever the
    // client sent), with the one the filter actually passes (only a usable id), and with none.
    let why = &all[usize::from(data.last().copied().unwrap_or_default()) % all.len()];
    assert!((400..500).contains(&why.status()));
    let raw = Some(text.as_ref());
    for id in [raw, usable, None] {
        let body = common::check_reply(why, id);
        match body.get("request_id") {
            Some(v) => {
                assert_eq!(usable, id, "an unusable id was echoed");
                assert_eq!(v.as_str(), usable);
            }
            None => assert!(id.is_none_or(|id| reject::usable_request_id(id.as_bytes()).is_none())),
        }
    }
});
