//! Path safety and request shape: `path::check` on a fuzzed request target, `path::decode`,
//! `path::header_value_is_clean` and `shape::media_type` on the same bytes, and a fixed
//! `RequestShape` checking fuzzed headers.
//!
//! Input: the raw request target (arbitrary bytes). Checks: a refusal is a well-formed 400
//! `invalid_path` / `invalid_characters`; a target that passes has no control byte, no `//`,
//! and, by an independent naive decoder applied up to three times, no `.` or `..` segment
//! (with `/` and `\` as separators) and no control byte at any level; one decoding round
//! never grows the input and decodes exactly when a valid escape is present; a media type
//! that parses is its own lowercase normal form.
#![no_main]

mod common;

use std::sync::OnceLock;

use edge_warden::checks::path;
use edge_warden::checks::shape::{self, RequestShape};
use edge_warden::headers::RequestHeaders;
use edge_warden::reject::Reject;
use libfuzzer_sys::fuzz_target;

fn shape() -> &'static RequestShape {
    static S: OnceLock<RequestShape> = OnceLock::new();
    S.get_or_init(|| {
        let raw = serde_json::from_str(
            r#"{"methods": ["GET", "POST"], "content_types": ["application/json", "multipart/form-data"],
                "max_body_bytes": 4096,
                "required_headers": [{"name": "x-device-id", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                                     {"name": "x-any"}]}"#,
        )
        .expect("fixed raw request");
        shape::compile_request(&raw, "request").expect("fixed request")
    })
}

/// A decoder written differently from `path::decode`: byte by byte into a new vector.
fn naive_decode(input: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::new();
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' && i + 2 < input.len() {
            if let (Some(h), Some(l)) = (hex(input[i + 1]), hex(input[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

fn has_dot_segment(p: &[u8]) -> bool {
    p.split(|b| *b == b'/' || *b == b'\\')
        .map(|s| s.split(|b| *b == b';').next().unwrap_or(s))
        .any(|s| s == b"." || s == b"..")
}

fn has_control(p: &[u8]) -> bool {
    p.iter().any(|b| *b < 0x20 || *b == 0x7f)
}

fuzz_target!(|data: &[u8]| {
    match path::check(data) {
        Ok(()) => {
            assert!(!has_control(data), "a control byte passed");
            let end = data
                .iter()
                .position(|b| *b == b'?' || *b == b'#')
                .unwrap_or(data.len());
            let mut level = data[..end].to_vec();
            assert!(!level.windows(2).any(|w| w == b"//"), "`//` passed");
            for _ in 0..=path::MAX_DECODES {
                assert!(!has_dot_segment(&level), "a dot segment passed: {level:?}");
                assert!(!has_control(&level), "an encoded control byte passed");
                level = naive_decode(&level);
            }
        }
        Err(why) => {
            assert!(
                matches!(why, Reject::InvalidPath | Reject::InvalidCharacters { .. }),
                "{why:?}"
            );
            common::check_reject(&why);
        }
    }

    match path::decode(data) {
        Some(once) => {
            assert!(once.len() < data.len());
            assert_eq!(once, naive_decode(data));
        }
        None => assert_eq!(naive_decode(data), data),
    }

    if !path::header_value_is_clean(data) {
        assert!(data
            .iter()
            .any(|b| (*b < 0x20 && *b != b'\t') || *b == 0x7f));
    }

    if let Some(media) = shape::media_type(data) {
        assert_eq!(media, media.to_ascii_lowercase());
        assert_eq!(
            shape::media_type(media.as_bytes()).as_deref(),
            Some(media.as_str())
        );
    }

    // The same bytes as every header a fixed shape looks at, and as the method.
    let headers = RequestHeaders::new(vec![
        ("x-device-id".to_string(), data.to_vec()),
        ("x-any".to_string(), data.to_vec()),
        ("content-type".to_string(), data.to_vec()),
    ]);
    let method = String::from_utf8_lossy(data);
    for has_body in [false, true] {
        if let Err(why) = shape().check(&method, &headers, has_body) {
            common::check_reject(&why);
            // Everything a refusal says comes from the configuration, never from the request.
            match &why {
                Reject::MethodNotAllowed { allow } => assert_eq!(allow, "GET, POST"),
                Reject::UnsupportedMediaType { accepted } => {
                    assert_eq!(accepted, "application/json, multipart/form-data")
                }
                Reject::MissingHeader { header } | Reject::InvalidHeader { header, .. } => {
                    assert!(header == "x-device-id" || header == "x-any", "{header:?}")
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
});
