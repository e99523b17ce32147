//! Uploads: `upload::start` on the request headers, then `UploadInspector::feed` and `finish`
//! over the body.
//!
//! Input: an HTTP/1-style head (`content-type:` / `content-disposition:` lines), an empty line,
//! then one byte that picks the chunk sizes, then the body. Checks: no panic; the verdict is the
//! same whether the body comes whole or in chunks (boundaries split anywhere); what the inspector
//! holds stays within the part-header cap, the magic window and the boundary; a refusal is a
//! well-formed 4xx.
#![no_main]

mod common;

use std::sync::OnceLock;

use edge_warden::checks::upload::{self, RawUpload, UploadPolicy, MAGIC_WINDOW};
use edge_warden::headers::RequestHeaders;
use edge_warden::reject::Reject;
use libfuzzer_sys::fuzz_target;

fn policy() -> &'static UploadPolicy {
    static P: OnceLock<UploadPolicy> = OnceLock::new();
    P.get_or_init(|| {
        let raw: RawUpload = serde_json::from_str(
            r#"{"allowed_extensions": ["mp3", "wav", "flac", "ogg", "m4a", "aac", "wma", "png",
                 "jpg", "gif", "webp", "pdf"],
                "max_file_bytes": 3000, "max_files": 3, "max_parts": 6,
                "max_part_header_bytes": 256}"#,
        )
        .expect("fixed upload section");
        upload::compile_upload(&raw, "upload").expect("fixed upload section compiles")
    })
}

/// 70-byte boundary, 4 delimiter bytes, the header cap, the window.
const HELD: usize = 74 + 256 + MAGIC_WINDOW;

fn verdict(headers: &RequestHeaders, body: &[u8], sizes: Option<u8>) -> Option<Result<(), Reject>> {
    let mut inspector = match upload::start(policy(), headers) {
        Ok(Some(i)) => i,
        Ok(None) => return None,
        Err(why) => return Some(Err(why)),
    };
    let mut rest = body;
    let mut k = 0usize;
    while !rest.is_empty() {
        let n = match sizes {
            None => rest.len(),
            Some(seed) => (usize::from(seed).wrapping_mul(k + 7) % 97 + 1).min(rest.len()),
        };
        k += 1;
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let fed = inspector.feed(chunk);
        assert!(
            inspector.held_bytes() <= HELD,
            "holds {}",
            inspector.held_bytes()
        );
        if let Err(why) = fed {
            assert_eq!(
                inspector.finish(),
                Err(why.clone()),
                "a refusal does not stick"
            );
            return Some(Err(why));
        }
    }
    Some(inspector.finish())
}

fuzz_target!(|data: &[u8]| {
    let (headers, body) = common::request_headers(data);
    let (seed, body) = match body.split_first() {
        Some((seed, body)) => (*seed, body),
        None => (1, body),
    };
    let whole = verdict(&headers, body, None);
    let chunked = verdict(&headers, body, Some(seed));
    assert_eq!(whole, chunked, "the verdict depends on the chunking");
    if let Some(Err(why)) = &whole {
        common::check_reject(why);
    }
});
