//! The demo upstream: answers every request with JSON describing what it received (method, path,
//! headers, body length and SHA-256), so you can see what edge-warden let through and which
//! identity headers it added. `receipt` numbers the requests it received (1, 2, ...), so a
//! response replayed for an idempotency key shows the receipt of the one request that came.
//! Two request headers shape the answer, to try what edge-warden does with slow or failing
//! upstreams: `x-demo-status: 503` (any 200-599) and `x-demo-delay-ms: 500` (at most 10000);
//! `x-demo-pad-bytes: N` (at most 4 MiB) adds a `pad` of N bytes, for a large response. The
//! body is read to its end and hashed as it streams in, never held whole, so it can count a
//! body of any size.
//!
//! Usage: demo-upstream [--listen 127.0.0.1:8080]. With port 0 it picks a free port; either way
//! it prints `listening on ADDR` as its first line.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

fn main() {
    let mut listen = "127.0.0.1:8080".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().unwrap_or(listen),
            "-h" | "--help" => {
                println!("usage: demo-upstream [--listen HOST:PORT]   (default 127.0.0.1:8080)");
                return;
            }
            other => {
                eprintln!("demo-upstream: unknown argument {other}; see --help");
                std::process::exit(2);
            }
        }
    }
    let server = match tiny_http::Server::http(&listen) {
        Ok(server) => Arc::new(server),
        Err(e) => {
            eprintln!("demo-upstream: cannot listen on {listen}: {e}");
            std::process::exit(1);
        }
    };
    let addr = server
        .server_addr()
        .to_ip()
        .map_or(listen.clone(), |a| a.to_string());
    println!("listening on {addr}");
    let _ = std::io::stdout().flush();

    let workers: Vec<_> = (0..8)
        .map(|_| {
            let server = Arc::clone(&server);
            std::thread::spawn(move || {
                for request in server.incoming_requests() {
                    answer(request);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
}

static RECEIPTS: AtomicU64 = AtomicU64::new(0);

/// Reads the whole body in 64 KiB pieces, hashing and counting as it goes, so that a body of
/// any size (the 500 MB upload test) costs the upstream no more memory than one piece.
fn read_body(reader: &mut dyn Read) -> (u64, Sha256, std::io::Result<()>) {
    let mut hasher = Sha256::new();
    let mut length = 0u64;
    let mut piece = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut piece) {
            Ok(0) => return (length, hasher, Ok(())),
            Ok(n) => {
                hasher.update(&piece[..n]);
                length += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return (length, hasher, Err(e)),
        }
    }
}

fn answer(mut request: tiny_http::Request) {
    let receipt = RECEIPTS.fetch_add(1, Ordering::SeqCst) + 1;
    let (length, hasher, read) = read_body(request.as_reader());
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for h in request.headers() {
        headers
            .entry(h.field.as_str().as_str().to_ascii_lowercase())
            .or_default()
            .push(h.value.as_str().to_string());
    }
    let headers: BTreeMap<String, String> = headers
        .into_iter()
        .map(|(k, v)| (k, v.join(", ")))
        .collect();
    let pad = headers
        .get("x-demo-pad-bytes")
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map_or(0, |n| n.min(4 << 20));
    let echo = serde_json::json!({
        "method": request.method().as_str(),
        "path": request.url(),
        "headers": headers,
        "body_length": length,
        "body_sha256": hex::encode(hasher.finalize()),
        "body_complete": read.is_ok(),
        "receipt": receipt,
        "pad": "x".repeat(pad),
    });
    let number = |name: &str| headers.get(name).and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(ms) = number("x-demo-delay-ms") {
        std::thread::sleep(Duration::from_millis(ms.min(10_000)));
    }
    let status = number("x-demo-status")
        .filter(|s| (200..=599).contains(s))
        .map_or(200, |s| s as u16);
    let json = serde_json::to_vec_pretty(&echo).unwrap_or_default();
    let mut response = tiny_http::Response::from_data(json).with_status_code(status);
    if let Ok(h) = tiny_http::Header::from_bytes(&b"content-type"[..], &b"application/json"[..]) {
        response = response.with_header(h);
    }
    let _ = request.respond(response);
}
