//! Helpers shared by the fuzz targets (each target includes this file as `mod common`).
//!
//! Inputs are laid out like an HTTP/1 head so that seeds are readable and libFuzzer's mutations
//! stay meaningful: header lines separated by `\n`, each `name:value` split at the first `:` after
//! the first byte (so `:authority:x` is the pseudo-header `:authority`), one optional space after
//! the colon dropped, then an empty line and the body. Values are raw bytes (anything but `\n`,
//! non-UTF-8 included); names are made UTF-8 lossily, as the host only ever hands over strings.
#![allow(dead_code)]

use edge_warden::headers::RequestHeaders;
use edge_warden::reject::{self, Reject};

/// Splits `data` into header pairs and the body after the first empty line.
pub fn split_request(data: &[u8]) -> (Vec<(String, Vec<u8>)>, &[u8]) {
    let (head, body) = match find(data, b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &data[data.len()..]),
    };
    let pairs = head
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(pair)
        .collect();
    (pairs, body)
}

pub fn request_headers(data: &[u8]) -> (RequestHeaders, &[u8]) {
    let (pairs, body) = split_request(data);
    (RequestHeaders::new(pairs), body)
}

fn pair(line: &[u8]) -> (String, Vec<u8>) {
    let colon = line.iter().skip(1).position(|b| *b == b':').map(|i| i + 1);
    let (name, value) = match colon {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &line[line.len()..]),
    };
    let value = value.strip_prefix(b" ").unwrap_or(value);
    (String::from_utf8_lossy(name).into_owned(), value.to_vec())
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The `n` first `\n`-separated fields of `data` (missing ones empty) and the rest.
pub fn fields<const N: usize>(data: &[u8]) -> ([&[u8]; N], &[u8]) {
    let mut out = [&data[..0]; N];
    let mut rest = data;
    for slot in out.iter_mut() {
        match rest.iter().position(|b| *b == b'\n') {
            Some(i) => {
                *slot = &rest[..i];
                rest = &rest[i + 1..];
            }
            None => {
                *slot = rest;
                rest = &rest[rest.len()..];
            }
        }
    }
    (out, rest)
}

/// A little-endian integer from up to 8 bytes (missing bytes are zero).
pub fn le_u64(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    let n = bytes.len().min(8);
    buf[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(buf)
}

/// Every rejection a fuzzed input produces must be a client error with a well-formed reply:
/// a 4xx status, and an RFC 9457 body that is valid JSON naming the same code and status.
pub fn check_reject(why: &Reject) {
    let status = why.status();
    assert!((400..500).contains(&status), "{why:?} has status {status}");
    check_reply(why, None);
}

/// `reject::respond` for `why` with `request_id`: status, headers and body agree.
pub fn check_reply(why: &Reject, request_id: Option<&str>) -> serde_json::Value {
    let resp = reject::respond(why, request_id);
    assert_eq!(resp.status, why.status());
    assert!(resp
        .headers
        .iter()
        .any(|(n, v)| *n == "content-type" && v == "application/problem+json"));
    for (name, value) in &resp.headers {
        // A header value with CR/LF or another control character would split or break the reply.
        assert!(
            !value.bytes().any(|b| b.is_ascii_control()),
            "header {name} has a control character: {value:?}"
        );
    }
    let body: serde_json::Value = match serde_json::from_slice(&resp.body) {
        Ok(v) => v,
        Err(e) => panic!(
            "reply body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&resp.body)
        ),
    };
    assert_eq!(body["code"], why.code());
    assert_eq!(body["status"], why.status());
    assert_eq!(
        body["type"].as_str(),
        Some(format!("urn:edge-warden:problem:{}", why.code()).as_str())
    );
    body
}
