//! Property tests over inputs an attacker controls: whatever the bytes, parsers return a value
//! or a rejection, never a panic (a panic in the VM disables the filter on that worker). A small
//! deterministic generator keeps the runs reproducible without extra dependencies.

use crate::checks::api_key::{authenticate, ApiKey, KeySource, Role};
use crate::checks::cors::{Cors, Disallowed, Origin, OriginPattern};
use crate::checks::host::{check as check_host, HostPattern};
use crate::checks::ip::{parse_net, parse_source};
use crate::checks::signature::parse_headers;
use crate::config::Config;
use crate::headers::RequestHeaders;

/// splitmix64: enough randomness to wander through odd inputs, same sequence every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Bytes biased toward the characters the parsers care about, plus anything at all.
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        const INTERESTING: &[u8] = b"0123456789abcdefABCDEF:/.[]*@%-_ \t\r\n\0{}\",";
        let len = (self.next() % (max as u64 + 1)) as usize;
        (0..len)
            .map(|_| {
                let r = self.next();
                if r.is_multiple_of(3) {
                    (r >> 8) as u8
                } else {
                    INTERESTING[(r >> 8) as usize % INTERESTING.len()]
                }
            })
            .collect()
    }

    fn text(&mut self, max: usize) -> String {
        String::from_utf8_lossy(&self.bytes(max)).into_owned()
    }
}

#[test]
fn signature_headers_never_panic() {
    let mut rng = Rng(1);
    for _ in 0..50_000 {
        let mut pairs = Vec::new();
        for name in [
            "x-request-signature",
            "x-request-timestamp",
            "x-request-nonce",
        ] {
            for _ in 0..(rng.next() % 3) {
                pairs.push((name.to_string(), rng.bytes(140)));
            }
        }
        let _ = parse_headers(&RequestHeaders::new(pairs));
    }
}

#[test]
fn origins_hosts_and_addresses_never_panic() {
    let mut rng = Rng(2);
    let cors = Cors {
        origins: vec![
            OriginPattern::parse("https://*.workers.dev").unwrap_or(OriginPattern::Null),
            OriginPattern::Null,
        ],
        allow_methods: vec!["GET".into()],
        allow_headers: vec!["content-type".into()],
        expose_headers: vec![],
        allow_credentials: true,
        max_age: 600,
        disallowed: Disallowed::Reject,
    };
    let hosts = vec![HostPattern::parse("*.example.com").unwrap_or_else(|_| unreachable!())];
    for _ in 0..50_000 {
        let prefix = ["https://", "http://", "", "https://x.", "["][(rng.next() % 5) as usize];
        let s = format!("{prefix}{}", rng.text(40));
        let _ = Origin::parse(&s);
        let _ = OriginPattern::parse(&s);
        let _ = cors.check(Some(s.as_bytes()));
        let _ = cors.preflight(s.as_bytes(), &rng.bytes(8), Some(&rng.bytes(40)));
        let _ = check_host(&hosts, Some(s.as_bytes()));
        let _ = HostPattern::parse(&s);
        let _ = parse_net(&s);
        let _ = parse_source(&s);
    }
}

#[test]
fn api_key_lookups_never_panic() {
    let mut rng = Rng(3);
    let keys = [ApiKey {
        id: "k".into(),
        sha256: [7; 32],
        role: Role::Client,
        not_before: Some(10),
        expires_at: Some(20),
    }];
    let source = KeySource {
        header: "x-api-key".into(),
        bearer: true,
    };
    for _ in 0..50_000 {
        let mut pairs = vec![("authorization".to_string(), rng.bytes(60))];
        if rng.next().is_multiple_of(2) {
            pairs.push(("x-api-key".to_string(), rng.bytes(60)));
        }
        let headers = RequestHeaders::new(pairs);
        if let Ok(Some(presented)) = source.find(&headers) {
            let _ = authenticate(&keys, presented.key, rng.next() % 30);
        }
    }
}

#[test]
fn plugin_configurations_never_panic() {
    let mut rng = Rng(4);
    let env = |_: &str| Some("s".repeat(40));
    let skeleton = r#"{"signature": {"secrets": [{"id": "a", "env": "S"}]}, "policies": [{"name": "p", "cors": {"allow_origins": ["X"]}, "trusted_hosts": ["X"], "ip": {"allow": ["X"]}}]}"#;
    for _ in 0..20_000 {
        // Random bytes, and the skeleton with random values where an X stands.
        let _ = Config::from_json(&rng.bytes(200), &env);
        let filled = skeleton.replace('X', &rng.text(30).replace(['"', '\\'], ""));
        let _ = Config::from_json(filled.as_bytes(), &env);
    }
}
