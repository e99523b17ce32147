//! The demo upstream: answers every request with JSON describing what it received (method, path,
//! headers, body length and SHA-256), so you can see what edge-warden let through and which
//! identity headers it added. The body is read to its end and hashed as it streams in, never
//! held whole, so it can count a body of any size.
//!
//! Usage: demo-upstream [--listen 127.0.0.1:8080]. With port 0 it picks a free port; either way
//! it prints `listening on ADDR` as its first line.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::Arc;

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
    let echo = serde_json::json!({
        "method": request.method().as_str(),
        "path": request.url(),
        "headers": headers,
        "body_length": length,
        "body_sha256": hex::encode(hasher.finalize()),
        "body_complete": read.is_ok(),
    });
    let json = serde_json::to_vec_pretty(&echo).unwrap_or_default();
    let mut response = tiny_http::Response::from_data(json);
    if let Ok(h) = tiny_http::Header::from_bytes(&b"content-type"[..], &b"application/json"[..]) {
        response = response.with_header(h);
    }
    let _ = request.respond(response);
}
