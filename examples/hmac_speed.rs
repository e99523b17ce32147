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
    let mut rounds = 0u64;
    let start = Instant::now();
    let mut sink = 0u8;
    // At least 0.5 s and 8 rounds, so small sizes are not dominated by timer resolution.
    while rounds < 8 || start.elapsed().as_secs_f64() < 0.5 {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
        mac.update(&body);
        mac.update(b"1700000000");
        mac.update(b"nonce-0123456789abcdef");
        sink ^= mac.finalize().into_bytes()[0];
        rounds += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let mb = (rounds as f64) * (size as f64) / 1e6;
    println!(
        "{{\"size\": {size}, \"mb_per_s\": {:.1}, \"sink\": {sink}}}",
        mb / secs
    );
}
