//! Browser-facing protections through a real Envoy: CORS (preflight answered by edge-warden,
//! parsed-origin matching), security headers on every response, trusted hosts, and a real
//! headless Chromium as the judge of CORS.

use std::net::TcpListener;
use std::process::Command;

use crate::harness::{repo, Envoy, Options, Signed, SECRET};

const CORS_CONFIG: &str = r#"{
  "signature": {"secrets": [{"id": "primary", "env": "HMAC_SHARED_SECRET"}]},
  "policies": [
    {"name": "health", "match": {"path_prefix": "/health"}, "signature": false},
    {"name": "browser", "match": {"path_prefix": "/browser"}, "signature": false,
     "cors": {"allow_origins": ["https://*.workers.dev", "https://app.example.com", "http://localhost:PAGE_PORT"],
              "allow_methods": ["GET", "POST"],
              "allow_headers": ["content-type", "x-client-trace"],
              "expose_headers": ["x-total-count"],
              "allow_credentials": true}},
    {"name": "lenient", "match": {"path_prefix": "/lenient"}, "signature": false,
     "cors": {"allow_origins": ["https://app.example.com"], "disallowed": "omit"}},
    {"name": "signed",
     "cors": {"allow_origins": ["https://*.workers.dev"], "allow_origin_env": "WORKERS_ORIGIN"}}
  ]
}"#;

fn cors_envoy(page_port: u16) -> Envoy {
    let mut opts = Options::with_config(&CORS_CONFIG.replace("PAGE_PORT", &page_port.to_string()));
    opts.env
        .push(("WORKERS_ORIGIN".into(), "https://app.example.com".into()));
    Envoy::start(opts)
}

fn preflight<'a>(origin: &'a str, method: &'a str, headers: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("origin", origin),
        ("access-control-request-method", method),
        ("access-control-request-headers", headers),
    ]
}

#[test]
fn preflight_is_answered_by_edge_warden_and_never_reaches_the_upstream() {
    let envoy = cors_envoy(3000);
    let r = envoy.request(
        "OPTIONS",
        "/browser/items",
        &preflight(
            "https://tenant.workers.dev",
            "POST",
            "Content-Type, X-Client-Trace",
        ),
        b"",
    );
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.body.is_empty(), "the upstream's echo must not appear");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://tenant.workers.dev")
    );
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, POST"));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("content-type, x-client-trace")
    );
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        r.header("vary"),
        Some("Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
    );
    // The preflight counts as neither allowed nor rejected; one real request after it does.
    let r = envoy.request(
        "GET",
        "/browser/items",
        &[("origin", "https://tenant.workers.dev")],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(envoy.settled_total("edge_warden_allowed_total"), Some(1));
    assert_eq!(envoy.total("edge_warden_rejected_total"), Some(0));

    // A signed route's preflight needs no signature either: browsers cannot sign preflights.
    let r = envoy.request(
        "OPTIONS",
        "/orders",
        &preflight("https://a.workers.dev", "POST", "content-type"),
        b"",
    );
    assert_eq!(r.status, 204);
}

#[test]
fn preflights_for_disallowed_origins_methods_and_headers_are_403() {
    let envoy = cors_envoy(3000);
    for origin in [
        "https://evilworkers.dev",
        "https://workers.dev.evil.com",
        "https://x.workers.dev.",
        "https://user@x.workers.dev",
        "https://workers.dev",
        "http://x.workers.dev",
        "null",
    ] {
        let r = envoy.request(
            "OPTIONS",
            "/browser",
            &preflight(origin, "POST", "content-type"),
            b"",
        );
        assert_eq!(
            (r.status, r.code()),
            (403, "origin_not_allowed".into()),
            "{origin}"
        );
        assert!(r.header("access-control-allow-origin").is_none());
    }
    let cases = [
        ("/browser", "DELETE", "", "cors_method_not_allowed"),
        ("/browser", "POST", "x-admin", "cors_method_not_allowed"),
        // A route without CORS settings refuses every preflight.
        ("/health", "GET", "", "origin_not_allowed"),
    ];
    for (path, method, headers, code) in cases {
        let r = envoy.request(
            "OPTIONS",
            path,
            &preflight("https://a.workers.dev", method, headers),
            b"",
        );
        assert_eq!(
            (r.status, r.code()),
            (403, code.into()),
            "{path} {method} {headers}"
        );
    }
}

#[test]
fn actual_cross_origin_requests_get_cors_headers_or_are_rejected_or_omitted() {
    let envoy = cors_envoy(3000);
    let r = envoy.request(
        "GET",
        "/browser/x",
        &[("origin", "https://app.example.com")],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("x-total-count")
    );
    assert_eq!(r.header("vary"), Some("Origin"));

    let r = envoy.request(
        "GET",
        "/browser/x",
        &[("origin", "https://evilworkers.dev")],
        b"",
    );
    assert_eq!((r.status, r.code()), (403, "origin_not_allowed".into()));

    // `omit`: passes, without CORS headers (the browser then withholds the response).
    let r = envoy.request(
        "GET",
        "/lenient",
        &[("origin", "https://evil.example")],
        b"",
    );
    assert_eq!(r.status, 200);
    assert!(r.header("access-control-allow-origin").is_none());

    // No Origin (server to server): the CORS check does not apply.
    assert_eq!(envoy.request("GET", "/browser/x", &[], b"").status, 200);

    // The origin from WORKERS_ORIGIN is allowed on the signed route, and CORS headers also land
    // on edge-warden's own 401 so the page can read the error.
    let r = envoy.request(
        "POST",
        "/orders",
        &[("origin", "https://app.example.com")],
        b"{}",
    );
    assert_eq!((r.status, r.code()), (401, "missing_signature".into()));
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let s = Signed::new(SECRET, b"{}");
    let mut headers = s.headers();
    headers.push(("origin", "https://app.example.com"));
    assert_eq!(
        envoy.request("POST", "/orders", &headers, b"{}").status,
        200
    );
}

#[test]
fn a_public_suffix_wildcard_loads_with_a_warning() {
    let envoy = cors_envoy(3000);
    let warning = "CORS origin wildcard `*.workers.dev` covers a public suffix";
    let log = envoy.log_once_it_has(warning);
    assert!(log.contains(warning), "no warning in the log");
    // A wildcard under a registrable domain is not a public suffix: no warning for it.
    assert!(!log.contains("`*.example.com` covers a public suffix"));
}

#[test]
fn security_headers_land_on_upstream_responses_rejections_and_envoy_404s() {
    // Envoy routes only /health and /api here, so /nowhere is Envoy's own 404.
    let config = r#"{
      "signature": {"secrets": [{"id": "primary", "env": "HMAC_SHARED_SECRET"}]},
      "policies": [{"name": "signed", "match": {"path_prefix": "/api/signed"}},
                   {"name": "open", "signature": false}]
    }"#;
    let envoy = Envoy::start(Options {
        route_prefix: Some("/api".into()),
        ..Options::with_config(config)
    });
    let upstream = envoy.request("GET", "/api/x", &[], b"");
    let rejected = envoy.request("GET", "/api/signed", &[], b"");
    let not_found = envoy.request("GET", "/nowhere", &[], b"");
    assert_eq!(
        (upstream.status, rejected.status, not_found.status),
        (200, 401, 404)
    );
    for r in [&upstream, &rejected, &not_found] {
        assert_eq!(r.header("x-frame-options"), Some("DENY"), "{}", r.status);
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("x-xss-protection"), Some("0"));
        assert_eq!(
            r.header("strict-transport-security"),
            Some("max-age=31536000; includeSubDomains")
        );
        assert_eq!(
            r.header("content-security-policy"),
            Some("default-src 'none'; frame-ancestors 'none'")
        );
        assert!(r.header("referrer-policy").is_some());
        assert!(r.header("permissions-policy").is_some());
        assert!(r.header("cross-origin-opener-policy").is_some());
        assert!(r.header("cross-origin-resource-policy").is_some());
        assert!(
            r.header("server").is_none(),
            "Server banner on {}",
            r.status
        );
    }
    assert_eq!(rejected.header("cache-control"), Some("no-store"));
    assert_eq!(not_found.header("cache-control"), Some("no-store"));
    assert!(upstream.header("cache-control").is_none());
}

#[test]
fn security_headers_land_on_envoys_503_when_the_upstream_is_down() {
    let envoy = Envoy::start(Options {
        dead_upstream: true,
        ..Options::default()
    });
    let r = envoy.request("GET", "/health", &[], b"");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(r.header("server").is_none());
}

#[test]
fn compat_preset_and_overrides_shape_the_headers() {
    let config = r#"{
      "policies": [{"name": "open", "signature": false}],
      "security_headers": {
        "preset": "compat",
        "headers": {
          "X-Download-Options": {"set": "noopen"},
          "Referrer-Policy": "remove",
          "Content-Type": {"set_if_absent": "text/plain"},
          "X-Frame-Options": {"set_if_absent": "SAMEORIGIN"}
        }
      }
    }"#;
    let envoy = Envoy::start(Options::with_config(config));
    let r = envoy.request("GET", "/anything", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("server"), Some("Unknown"));
    assert_eq!(r.header("x-xss-protection"), Some("1; mode=block"));
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000; includeSubDomains; preload")
    );
    assert_eq!(
        r.header("permissions-policy"),
        Some("geolocation=(), microphone=(), camera=(), payment=(), usb=(), magnetometer=()")
    );
    assert_eq!(r.header("x-download-options"), Some("noopen"));
    assert!(r.header("referrer-policy").is_none());
    // set_if_absent keeps what the upstream sent.
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-frame-options"), Some("SAMEORIGIN"));
}

#[test]
fn trusted_hosts_refuse_other_host_headers() {
    let config = r#"{
      "policies": [{"name": "open", "signature": false,
                    "trusted_hosts": ["api.example.com", "*.example.org", "localhost:10000"]}]
    }"#;
    let envoy = Envoy::start(Options::with_config(config));
    for ok in [
        "api.example.com",
        "api.example.com:8443",
        "a.example.org",
        "localhost:10000",
    ] {
        assert_eq!(
            envoy.request("GET", "/", &[("host", ok)], b"").status,
            200,
            "{ok}"
        );
    }
    for bad in [
        "evil.com",
        "example.org",
        "api.example.com.evil.com",
        "localhost:9999",
    ] {
        let r = envoy.request("GET", "/", &[("host", bad)], b"");
        assert_eq!(
            (r.status, r.code()),
            (400, "host_not_allowed".into()),
            "{bad}"
        );
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_real_browser_accepts_the_allowed_origin_and_blocks_the_other() {
    let (page_port, other_port) = (free_port(), free_port());
    let envoy = cors_envoy(page_port);
    let out = Command::new("node")
        .arg(repo().join("tests/node/browser-cors.mjs"))
        .args([
            "--api",
            &format!("http://127.0.0.1:{}/browser/echo", envoy.port),
        ])
        .args(["--page-port", &page_port.to_string()])
        .args(["--other-port", &other_port.to_string()])
        .current_dir(repo().join("tests/node"))
        .output()
        .expect("node");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "runner failed: {stderr}");
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).expect("runner JSON");
    let allowed = &result["allowed"];
    assert_eq!(allowed["ok"], true, "{result}\n{stderr}");
    assert_eq!(allowed["status"], 200, "{result}");
    let echo: serde_json::Value =
        serde_json::from_str(allowed["body"].as_str().unwrap_or("{}")).expect("echo JSON");
    assert_eq!(echo["headers"]["x-client-trace"], "e2e");
    assert_eq!(
        echo["headers"]["origin"],
        format!("http://localhost:{page_port}")
    );
    assert_eq!(result["disallowed"]["ok"], false, "{result}");
    assert!(
        stderr.contains("blocked by CORS policy"),
        "the browser did not report a CORS block: {stderr}"
    );
}
