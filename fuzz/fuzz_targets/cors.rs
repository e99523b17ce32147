//! CORS: `OriginPattern::parse` (configuration, but also reached through `allow_origin_env`), and
//! the compiled `Cors` of a fixed configuration against a client's `Origin`, preflight method and
//! `Access-Control-Request-Headers`.
//!
//! Input: `pattern\norigin\nmethod[\nrequest-headers]` (the fourth field is absent when there is
//! no third newline). Checks: a parsed pattern round-trips and matches what it names; a verdict
//! is consistent between `check`, `allows_origin` and `preflight`; an allowed preflight answers
//! with exactly the origin sent and only allowed methods and headers; no reply header carries a
//! control character (CR/LF would split the reply); refusals are well-formed 4xx.
#![no_main]

mod common;

use std::sync::OnceLock;

use edge_warden::checks::cors::{Cors, Disallowed, Origin, OriginPattern, Outcome};
use edge_warden::config::Config;
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = r#"{
  "policies": [
    {"name": "omit", "match": {"path_prefix": "/omit"}, "signature": false,
     "cors": {"allow_origins": ["https://app.example.com"], "disallowed": "omit"}},
    {"name": "web", "signature": false,
     "cors": {
       "allow_origins": ["https://app.example.com", "https://*.example.org", "http://localhost:3000",
                         "null", "https://[::1]:8443", "https://*.workers.dev", "http://10.0.0.1"],
       "allow_methods": ["GET", "POST", "PUT"],
       "allow_headers": ["content-type", "x-request-signature", "x-request-timestamp",
                         "x-request-nonce", "authorization", "X-Idempotency-Key"],
       "expose_headers": ["x-total-count"],
       "allow_credentials": true,
       "max_age": 600
     }}
  ]
}"#;

fn compiled() -> &'static [Cors] {
    static CORS: OnceLock<Vec<Cors>> = OnceLock::new();
    CORS.get_or_init(|| {
        let config =
            Config::from_json(CONFIG.as_bytes(), &|_| None).expect("the fixed config loads");
        config
            .policies
            .iter()
            .filter_map(|p| p.cors.clone())
            .collect()
    })
}

fn no_control(headers: &[(&'static str, String)]) {
    for (name, value) in headers {
        assert!(
            !value.bytes().any(|b| b.is_ascii_control()),
            "{name}: {value:?}"
        );
    }
}

fn check_pattern(s: &str) -> Option<OriginPattern> {
    let pattern = OriginPattern::parse(s).ok()?;
    match &pattern {
        OriginPattern::Null => assert_eq!(s, "null"),
        OriginPattern::Exact(o) => {
            let printed = format!("{}://{}:{}", o.scheme, o.host, o.port);
            assert_eq!(Origin::parse(&printed).as_ref(), Some(o), "{printed}");
            assert!(pattern.matches(s, Origin::parse(s).as_ref()));
            assert!(pattern.matches(&printed, Origin::parse(&printed).as_ref()));
        }
        OriginPattern::Subdomains {
            scheme,
            suffix,
            port,
        } => {
            assert!(!suffix.starts_with('['));
            let sub = format!("{scheme}://a.{suffix}:{port}");
            assert!(pattern.matches(&sub, Origin::parse(&sub).as_ref()), "{sub}");
            let apex = format!("{scheme}://{suffix}:{port}");
            assert!(
                !pattern.matches(&apex, Origin::parse(&apex).as_ref()),
                "{apex}"
            );
            assert_eq!(pattern.wildcard_suffix(), Some(suffix.as_str()));
        }
    }
    Some(pattern)
}

fn check_cors(cors: &Cors, origin: &[u8], method: &[u8], asked: Option<&[u8]>) {
    assert_eq!(cors.check(None), Ok(Outcome::NoOrigin));
    let allowed = std::str::from_utf8(origin).is_ok_and(|o| cors.allows_origin(o));
    match cors.check(Some(origin)) {
        Ok(Outcome::Allow(o)) => {
            assert!(allowed);
            assert_eq!(o.as_bytes(), origin);
            no_control(&cors.response_headers(&o));
        }
        Ok(Outcome::Omit) => assert!(!allowed && cors.disallowed == Disallowed::Omit),
        Ok(Outcome::NoOrigin) => panic!("NoOrigin for a present Origin"),
        Err(why) => {
            assert!(!allowed && cors.disallowed == Disallowed::Reject);
            common::check_reject(&why);
        }
    }
    match cors.preflight(origin, method, asked) {
        Ok(answer) => {
            assert!(allowed);
            no_control(&answer);
            let get = |n: &str| {
                answer
                    .iter()
                    .find(|(k, _)| *k == n)
                    .map(|(_, v)| v.as_str())
            };
            assert_eq!(
                get("access-control-allow-origin").map(str::as_bytes),
                Some(origin)
            );
            assert!(cors.allow_methods.iter().any(|m| m.as_bytes() == method));
            if let Some(list) = get("access-control-allow-headers") {
                for name in list.split(", ") {
                    assert!(cors.allow_headers.iter().any(|h| h == name), "{name}");
                }
            }
        }
        Err(why) => common::check_reject(&why),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |b| *b == b'\n');
    let pattern = parts.next().unwrap_or_default();
    let origin = parts.next().unwrap_or_default();
    let method = parts.next().unwrap_or_default();
    let asked = parts.next();

    let mut extra = None;
    if let Ok(s) = std::str::from_utf8(pattern) {
        extra = check_pattern(s);
        let _ = Origin::parse(s);
    }
    for cors in compiled() {
        check_cors(cors, origin, method, asked);
    }
    if let Some(p) = extra {
        let own = Cors {
            origins: vec![p.clone()],
            allow_methods: vec!["GET".into()],
            allow_headers: vec!["content-type".into()],
            expose_headers: Vec::new(),
            allow_credentials: false,
            max_age: 0,
            disallowed: Disallowed::Reject,
        };
        if let (Ok(s), OriginPattern::Exact(_) | OriginPattern::Null) =
            (std::str::from_utf8(pattern), &p)
        {
            assert!(
                own.allows_origin(s),
                "a pattern does not admit its own origin: {s:?}"
            );
        }
        check_cors(&own, origin, method, asked);
    }
});
