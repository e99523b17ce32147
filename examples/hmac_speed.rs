//! HMAC-SHA256 throughput of the crates edge-warden uses, for `make bench`: built natively and
//! for wasm32-wasip1 (run under Node's WASI, i.e. V8, the engine Envoy embeds), so the two
//! numbers compare the same code. Prints one JSON line: {"size": .., "mb_per_s": ..}.
use std::time::Instant;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

fn main() {
    let size: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1 << 20);
    let body = vec![0x5au8; size];
    let key = b"bench-secret-bench-secret-bench-secret";
    let mut sink = 0u8;
    // The first 0.3 s are not counted: V8 compiles hot wasm functions with its optimizing tier
    // in the background, and a cold CPU ramps up.
    run(&body, key, 0.3, &mut sink);
    // Then at least 1 s and 8 rounds, so small sizes are not dominated by timer resolution.
    let (rounds, secs) = run(&body, key, 1.0, &mut sink);
    let mb = (rounds as f64) * (size as f64) / 1e6;
    println!(
        "{{\"size\": {size}, \"mb_per_s\": {:.1}, \"sink\": {sink}}}",
        mb / secs
    );
}

/// HMACs `body` (plus a timestamp and nonce, like a request) for `seconds`: (rounds, seconds).
fn run(body: &[u8], key: &[u8], seconds: f64, sink: &mut u8) -> (u64, f64) {
    let mut rounds = 0u64;
    let start = Instant::now();
    while rounds < 8 || start.elapsed().as_secs_f64() < seconds {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
        mac.update(body);
        mac.update(b"1700000000");
        mac.update(b"nonce-0123456789abcdef");
        *sink ^= mac.finalize().into_bytes()[0];
        rounds += 1;
    }
    (rounds, start.elapsed().as_secs_f64())
}
