//! API keys: `KeySource::find` over client headers (`x-api-key` and `Authorization: Bearer`),
//! then `authenticate` and `authorize` on whatever was found.
//!
//! Input: header lines (see `common.rs`). Checks: a refusal is a well-formed 4xx; the key found
//! is the bytes of the header it names; a key that authenticates is one of the configured
//! plaintexts (ASCII whitespace around it aside) and inside its validity window.
#![no_main]

mod common;

use edge_warden::checks::api_key::{self, ApiKey, KeySource, Role};
use libfuzzer_sys::fuzz_target;

/// (plaintext, role, not_before, expires_at)
const KEYS: &[(&str, Role, Option<u64>, Option<u64>)] = &[
    ("ew_client_0123456789abcdef", Role::Client, None, None),
    (
        "ew_admin_fedcba9876543210",
        Role::Admin,
        Some(1_700_000_000),
        Some(1_800_000_000),
    ),
    (
        "ew_expired_00000000000000",
        Role::Client,
        None,
        Some(1_600_000_000),
    ),
];
const NOWS: &[u64] = &[0, 1_600_000_000, 1_700_000_000, 1_750_000_000, u64::MAX];

fn configured() -> Vec<ApiKey> {
    KEYS.iter()
        .enumerate()
        .map(|(i, (plain, role, not_before, expires_at))| {
            let hex = api_key::hash_key(plain);
            let mut sha256 = [0u8; 32];
            for (j, byte) in sha256.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&hex[2 * j..2 * j + 2], 16).unwrap_or_default();
            }
            ApiKey {
                id: format!("key-{i}"),
                sha256,
                role: *role,
                not_before: *not_before,
                expires_at: *expires_at,
            }
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let (headers, _) = common::request_headers(data);
    let keys = configured();
    let sources = [
        KeySource {
            header: "x-api-key".into(),
            bearer: true,
        },
        KeySource {
            header: "x-custom-key".into(),
            bearer: false,
        },
    ];
    for source in &sources {
        let presented = match source.find(&headers) {
            Ok(Some(p)) => p,
            Ok(None) => continue,
            Err(why) => {
                common::check_reject(&why);
                continue;
            }
        };
        if presented.header == source.header {
            assert_eq!(headers.unique(&source.header), Ok(Some(presented.key)));
        } else {
            assert!(source.bearer, "a bearer token was taken with bearer off");
            assert_eq!(presented.header, "authorization");
            let auth = headers
                .unique("authorization")
                .ok()
                .flatten()
                .unwrap_or_default();
            assert!(auth.len() > 7 && auth[..7].eq_ignore_ascii_case(b"bearer "));
            assert_eq!(&auth[7..], presented.key);
        }
        for &now in NOWS {
            match api_key::authenticate(&keys, presented.key, now) {
                Ok(ok) => {
                    let (plain, _, not_before, expires_at) = KEYS[ok.index];
                    assert_eq!(presented.key.trim_ascii(), plain.as_bytes());
                    assert!(not_before.is_none_or(|t| now >= t));
                    assert!(expires_at.is_none_or(|t| now < t));
                    for roles in [&[][..], &[Role::Admin], &[Role::Client]] {
                        match api_key::authorize(roles, &keys[ok.index]) {
                            Ok(()) => {
                                assert!(roles.is_empty() || roles.contains(&keys[ok.index].role))
                            }
                            Err(why) => common::check_reject(&why),
                        }
                    }
                }
                Err(why) => common::check_reject(&why),
            }
        }
    }
});
