//! CORS: which origins may call a route from a browser, the preflight answer, and the headers an
//! allowed cross-origin response carries (Fetch standard, "CORS protocol").
//!
//! Origins are compared parsed (scheme, host, port), never as strings: `https://evilworkers.dev`,
//! `https://workers.dev.evil.com`, `https://x.workers.dev.` and `https://u@x.workers.dev` do not
//! match `https://*.workers.dev`.

use serde::Deserialize;

use crate::config::{err, ConfigError};
use crate::reject::Reject;

/// A parsed, normalised origin: lowercase scheme and host, explicit port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

impl Origin {
    /// Parses `scheme://host[:port]` as browsers serialise an origin: ASCII, no path, no
    /// userinfo, no trailing dot. `None` for anything else (including `null`).
    pub fn parse(s: &str) -> Option<Origin> {
        let (scheme, rest) = s.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let mut chars = scheme.bytes();
        if !chars.next()?.is_ascii_alphabetic()
            || !chars.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        {
            return None;
        }
        let (host, port) = split_host_port(rest)?;
        let port = match port {
            Some(p) => p,
            None => default_port(&scheme)?,
        };
        Some(Origin { scheme, host, port })
    }
}

/// Splits `host[:port]`, validating the host as a DNS name, IPv4 or bracketed IPv6 address.
/// Shared with the trusted-host check.
pub fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        if v6.is_empty()
            || !v6
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (format!("[{}]", v6.to_ascii_lowercase()), port)
    } else {
        let (host, port) = match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        let host = host.to_ascii_lowercase();
        let labels_ok = !host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !labels_ok {
            return None;
        }
        (host, port)
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok().filter(|p| *p != 0)?)
        }
        Some(_) => return None,
    };
    Some((host, port))
}

/// One entry of `allow_origins`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    /// `https://app.example.com[:port]`
    Exact(Origin),
    /// `https://*.workers.dev[:port]`: any subdomain (at any depth) of `suffix`, not the suffix
    /// itself.
    Subdomains {
        scheme: String,
        suffix: String,
        port: u16,
    },
    /// `null`: opaque origins (sandboxed frames, `file:`). Only when listed explicitly.
    Null,
}

impl OriginPattern {
    pub fn parse(s: &str) -> Result<OriginPattern, &'static str> {
        if s == "null" {
            return Ok(OriginPattern::Null);
        }
        // The reason follows the value in the config error (``field `…`: `*` is not …``), so it
        // reads as the rest of that sentence.
        if s == "*" {
            return Err(
                "is not supported as an origin: list the allowed origins, or use a \
                        subdomain wildcard such as https://*.example.com",
            );
        }
        if let Some((scheme, rest)) = s.split_once("://*.") {
            let origin = Origin::parse(&format!("{scheme}://{rest}"))
                .ok_or("is not an origin such as https://*.example.com")?;
            if origin.host.starts_with('[')
                || origin.host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            {
                return Err("a wildcard needs a domain name, not an IP address");
            }
            return Ok(OriginPattern::Subdomains {
                scheme: origin.scheme,
                suffix: origin.host,
                port: origin.port,
            });
        }
        Origin::parse(s)
            .map(OriginPattern::Exact)
            .ok_or("is not an origin: scheme://host[:port], no path, no userinfo")
    }

    pub fn matches(&self, raw: &str, origin: Option<&Origin>) -> bool {
        match (self, origin) {
            (OriginPattern::Null, _) => raw == "null",
            (OriginPattern::Exact(want), Some(o)) => want == o,
            (
                OriginPattern::Subdomains {
                    scheme,
                    suffix,
                    port,
                },
                Some(o),
            ) => {
                o.scheme == *scheme
                    && o.port == *port
                    && o.host.len() > suffix.len() + 1
                    && o.host.ends_with(suffix.as_str())
                    && o.host.as_bytes()[o.host.len() - suffix.len() - 1] == b'.'
            }
            _ => false,
        }
    }

    /// For a wildcard, the domain it covers the subdomains of.
    pub fn wildcard_suffix(&self) -> Option<&str> {
        match self {
            OriginPattern::Subdomains { suffix, .. } => Some(suffix),
            _ => None,
        }
    }
}

/// What to do with an actual request from an origin that is not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disallowed {
    /// 403 `origin_not_allowed` (the reference services' behaviour).
    Reject,
    /// Let it through without CORS headers; the browser then withholds the response.
    Omit,
}

/// A policy's compiled CORS settings.
#[derive(Debug, Clone)]
pub struct Cors {
    pub origins: Vec<OriginPattern>,
    /// Uppercase methods.
    pub allow_methods: Vec<String>,
    /// Lowercase header names.
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub allow_credentials: bool,
    pub max_age: u32,
    pub disallowed: Disallowed,
}

/// The outcome of the CORS check on an actual (non-preflight) request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No `Origin` header: not a browser cross-origin request; nothing to add.
    NoOrigin,
    /// Allowed: the response gets CORS headers for this origin (as the browser sent it).
    Allow(String),
    /// Not allowed, policy says omit: no CORS headers.
    Omit,
}

/// The `Vary` a preflight answer carries: the answer depends on all three request headers.
pub const PREFLIGHT_VARY: &str =
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";

impl Cors {
    pub fn allows_origin(&self, raw: &str) -> bool {
        let parsed = Origin::parse(raw);
        self.origins.iter().any(|p| p.matches(raw, parsed.as_ref()))
    }

    /// The check for an actual request carrying `origin` (bytes as received).
    pub fn check(&self, origin: Option<&[u8]>) -> Result<Outcome, Reject> {
        let Some(origin) = origin else {
            return Ok(Outcome::NoOrigin);
        };
        match std::str::from_utf8(origin) {
            Ok(o) if self.allows_origin(o) => Ok(Outcome::Allow(o.to_string())),
            _ if self.disallowed == Disallowed::Omit => Ok(Outcome::Omit),
            _ => Err(Reject::OriginNotAllowed),
        }
    }

    /// The answer to a preflight: the response headers of a 204, or the rejection.
    pub fn preflight(
        &self,
        origin: &[u8],
        method: &[u8],
        request_headers: Option<&[u8]>,
    ) -> Result<Vec<(&'static str, String)>, Reject> {
        let origin = std::str::from_utf8(origin)
            .ok()
            .filter(|o| self.allows_origin(o))
            .ok_or(Reject::OriginNotAllowed)?;
        let method = std::str::from_utf8(method).unwrap_or("");
        if !self.allow_methods.iter().any(|m| m == method) {
            return Err(Reject::CorsMethodNotAllowed {
                what: "method",
                allowed: self.allow_methods.join(", "),
            });
        }
        // Access-Control-Request-Headers: a comma-separated list of lowercase names. Answer with
        // exactly the requested ones, and only if every one is allowed.
        let mut requested = Vec::new();
        if let Some(list) = request_headers {
            let list = std::str::from_utf8(list).map_err(|_| Reject::CorsMethodNotAllowed {
                what: "header",
                allowed: self.allow_headers.join(", "),
            })?;
            for name in list.split(',').map(|h| h.trim().to_ascii_lowercase()) {
                if name.is_empty() {
                    continue;
                }
                if !self.allow_headers.contains(&name) {
                    return Err(Reject::CorsMethodNotAllowed {
                        what: "header",
                        allowed: self.allow_headers.join(", "),
                    });
                }
                requested.push(name);
            }
        }
        let mut headers = vec![
            ("access-control-allow-origin", origin.to_string()),
            (
                "access-control-allow-methods",
                self.allow_methods.join(", "),
            ),
            ("access-control-max-age", self.max_age.to_string()),
            ("vary", PREFLIGHT_VARY.to_string()),
        ];
        if !requested.is_empty() {
            headers.push(("access-control-allow-headers", requested.join(", ")));
        }
        if self.allow_credentials {
            headers.push(("access-control-allow-credentials", "true".to_string()));
        }
        Ok(headers)
    }

    /// Headers for the response to an allowed actual request (`Vary: Origin` is merged by the
    /// response writer).
    pub fn response_headers(&self, origin: &str) -> Vec<(&'static str, String)> {
        let mut headers = vec![("access-control-allow-origin", origin.to_string())];
        if self.allow_credentials {
            headers.push(("access-control-allow-credentials", "true".to_string()));
        }
        if !self.expose_headers.is_empty() {
            headers.push((
                "access-control-expose-headers",
                self.expose_headers.join(", "),
            ));
        }
        headers
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration: a policy's `cors` section, and its compile step.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    /// Exact origins (`https://app.example.com`), wildcard subdomains (`https://*.workers.dev`)
    /// or `null`.
    #[serde(default)]
    pub allow_origins: Vec<String>,
    /// Environment variable holding one more allowed origin (used when set and non-empty). It
    /// must be listed in `host_env_keys`.
    #[serde(default)]
    pub allow_origin_env: Option<String>,
    /// Methods a cross-origin request may use (default GET, HEAD, POST).
    #[serde(default = "default_cors_methods")]
    pub allow_methods: Vec<String>,
    /// Request headers a cross-origin request may send (default: content-type and the signature
    /// and idempotency headers).
    #[serde(default = "default_cors_headers")]
    pub allow_headers: Vec<String>,
    /// Response headers the browser may read beyond the safelisted ones.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Whether cookies and credentials may be sent (`Access-Control-Allow-Credentials: true`).
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer, in seconds (default 600).
    #[serde(default = "default_max_age")]
    pub max_age: u32,
    /// An actual request from an origin not allowed: `reject` (403 `origin_not_allowed`,
    /// default) or `omit` (pass without CORS headers).
    #[serde(default = "default_disallowed")]
    pub disallowed: String,
}

fn default_cors_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"].map(String::from).to_vec()
}
fn default_cors_headers() -> Vec<String> {
    [
        "content-type",
        "x-request-signature",
        "x-request-timestamp",
        "x-request-nonce",
        "idempotency-key",
        "x-idempotency-key",
    ]
    .map(String::from)
    .to_vec()
}
fn default_max_age() -> u32 {
    600
}
fn default_disallowed() -> String {
    "reject".to_string()
}

/// Compiles the `cors` section at `field` (`policies[i].cors`) of the policy named `policy`.
/// Settings that load but deserve the operator's attention are pushed to `warnings`.
pub(crate) fn compile_cors(
    raw: &RawCors,
    field: &str,
    env: &dyn Fn(&str) -> Option<String>,
    policy: &str,
    warnings: &mut Vec<String>,
) -> Result<Cors, ConfigError> {
    let mut origins = Vec::new();
    for (i, o) in raw.allow_origins.iter().enumerate() {
        let pattern = OriginPattern::parse(o).map_err(|why| {
            err(
                format!("{field}.allow_origins[{i}]"),
                format!("`{o}` {why}"),
            )
        })?;
        origins.push(pattern);
    }
    if let Some(name) = &raw.allow_origin_env {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(err(
                format!("{field}.allow_origin_env"),
                "must be an environment variable name",
            ));
        }
        if let Some(value) = env(name).filter(|v| !v.trim().is_empty()) {
            let pattern = OriginPattern::parse(value.trim()).map_err(|why| {
                err(
                    format!("{field}.allow_origin_env"),
                    // Never the value: the variable may hold a secret by mistake, and a
                    // value with a newline could forge a log line. Its length is enough to
                    // tell an empty or truncated variable.
                    format!(
                        "the value of {name} ({} bytes) is not a usable origin: {why}",
                        value.trim().len()
                    ),
                )
            })?;
            origins.push(pattern);
        }
    }
    for o in &origins {
        if let Some(suffix) = o.wildcard_suffix() {
            // `*.workers.dev` admits every tenant of that platform: anyone can host a page there.
            if psl::suffix_str(suffix) == Some(suffix) {
                warnings.push(format!(
                    "policy `{policy}`: CORS origin wildcard `*.{suffix}` covers a public suffix, so \
                     any site hosted under {suffix} (anyone can create one) is an allowed origin; \
                     prefer exact origins, and require request signatures on these routes"
                ));
            }
        }
    }
    for (i, m) in raw.allow_methods.iter().enumerate() {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(err(
                format!("{field}.allow_methods[{i}]"),
                format!("`{m}` is not an uppercase HTTP method"),
            ));
        }
    }
    let lower_tokens = |list: &[String], what: &str| -> Result<Vec<String>, ConfigError> {
        list.iter()
            .enumerate()
            .map(|(i, h)| {
                let lower = h.to_ascii_lowercase();
                if lower.is_empty()
                    || !lower
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    Err(err(
                        format!("{field}.{what}[{i}]"),
                        format!("`{h}` is not a header name"),
                    ))
                } else {
                    Ok(lower)
                }
            })
            .collect()
    };
    let allow_headers = lower_tokens(&raw.allow_headers, "allow_headers")?;
    let expose_headers = lower_tokens(&raw.expose_headers, "expose_headers")?;
    let disallowed = match raw.disallowed.as_str() {
        "reject" => Disallowed::Reject,
        "omit" => Disallowed::Omit,
        other => {
            return Err(err(
                format!("{field}.disallowed"),
                format!("`{other}` must be `reject` or `omit`"),
            ))
        }
    };
    if raw.max_age > 86_400 {
        return Err(err(
            format!("{field}.max_age"),
            "must be at most 86400 seconds",
        ));
    }
    Ok(Cors {
        origins,
        allow_methods: raw.allow_methods.clone(),
        allow_headers,
        expose_headers,
        allow_credentials: raw.allow_credentials,
        max_age: raw.max_age,
        disallowed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str]) -> Cors {
        Cors {
            origins: origins
                .iter()
                .map(|o| OriginPattern::parse(o).unwrap())
                .collect(),
            allow_methods: vec!["GET".into(), "POST".into()],
            allow_headers: vec!["content-type".into(), "x-request-signature".into()],
            expose_headers: vec!["x-total-count".into()],
            allow_credentials: true,
            max_age: 600,
            disallowed: Disallowed::Reject,
        }
    }

    #[test]
    fn wildcard_matches_subdomains_on_the_parsed_origin_only() {
        let c = cors(&["https://*.workers.dev"]);
        for ok in [
            "https://a.workers.dev",
            "https://deep.er.workers.dev",
            "HTTPS://A.Workers.DEV",
            "https://a.workers.dev:443",
        ] {
            assert!(c.allows_origin(ok), "{ok}");
        }
        for bad in [
            "https://workers.dev",
            "https://evilworkers.dev",
            "https://workers.dev.evil.com",
            "https://x.workers.dev.",
            "https://user@x.workers.dev",
            "https://x.workers.dev@evil.com",
            "https://x.workers.dev/path",
            "http://x.workers.dev",
            "https://x.workers.dev:8443",
            "null",
            "",
            "https://x.workers.dev\u{0}",
        ] {
            assert!(!c.allows_origin(bad), "{bad}");
        }
    }

    #[test]
    fn exact_origins_are_port_aware_and_normalised() {
        let c = cors(&["https://app.example.com", "http://localhost:3000"]);
        assert!(c.allows_origin("https://app.example.com"));
        assert!(c.allows_origin("https://APP.example.com:443"));
        assert!(!c.allows_origin("https://app.example.com:8443"));
        assert!(!c.allows_origin("http://app.example.com"));
        assert!(c.allows_origin("http://localhost:3000"));
        assert!(!c.allows_origin("http://localhost:3001"));
        assert!(!c.allows_origin("http://localhost"));
    }

    #[test]
    fn null_matches_only_when_listed() {
        assert!(!cors(&["https://*.workers.dev"]).allows_origin("null"));
        assert!(cors(&["null"]).allows_origin("null"));
    }

    #[test]
    fn patterns_that_are_not_origins_are_refused() {
        for bad in [
            "*",
            "app.example.com",
            "https://a.com/",
            "https://*.1.2.3.4",
            "https://",
            "https://a..b",
        ] {
            assert!(OriginPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_star_origin_is_refused_with_what_to_write_instead() {
        let config = r#"{"policies": [{"name": "p", "signature": false, "cors": {"allow_origins": ["*"]}}]}"#;
        let error = crate::config::Config::from_json(config.as_bytes(), &|_| None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid edge-warden configuration: field `policies[0].cors.allow_origins[0]`: `*` is \
             not supported as an origin: list the allowed origins, or use a subdomain wildcard \
             such as https://*.example.com"
        );
    }

    #[test]
    fn preflight_answers_with_requested_allowed_headers_only() {
        let c = cors(&["https://a.workers.dev"]);
        let h = c
            .preflight(
                b"https://a.workers.dev",
                b"POST",
                Some(b"Content-Type, X-Request-Signature"),
            )
            .unwrap();
        let get = |n: &str| h.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        assert_eq!(
            get("access-control-allow-origin"),
            Some("https://a.workers.dev")
        );
        assert_eq!(
            get("access-control-allow-headers"),
            Some("content-type, x-request-signature")
        );
        assert_eq!(get("access-control-allow-methods"), Some("GET, POST"));
        assert_eq!(get("access-control-max-age"), Some("600"));
        assert_eq!(get("access-control-allow-credentials"), Some("true"));
        assert_eq!(get("vary"), Some(PREFLIGHT_VARY));
    }

    #[test]
    fn preflight_refuses_origin_method_and_header() {
        let c = cors(&["https://a.workers.dev"]);
        assert_eq!(
            c.preflight(b"https://evil.dev", b"POST", None),
            Err(Reject::OriginNotAllowed)
        );
        assert!(matches!(
            c.preflight(b"https://a.workers.dev", b"DELETE", None),
            Err(Reject::CorsMethodNotAllowed { what: "method", .. })
        ));
        assert!(matches!(
            c.preflight(b"https://a.workers.dev", b"POST", Some(b"x-secret-admin")),
            Err(Reject::CorsMethodNotAllowed { what: "header", .. })
        ));
    }

    #[test]
    fn actual_requests_are_allowed_rejected_or_omitted() {
        let mut c = cors(&["https://a.workers.dev"]);
        assert_eq!(c.check(None), Ok(Outcome::NoOrigin));
        assert_eq!(
            c.check(Some(b"https://a.workers.dev")),
            Ok(Outcome::Allow("https://a.workers.dev".into()))
        );
        assert_eq!(
            c.check(Some(b"https://b.dev")),
            Err(Reject::OriginNotAllowed)
        );
        c.disallowed = Disallowed::Omit;
        assert_eq!(c.check(Some(b"https://b.dev")), Ok(Outcome::Omit));
    }

    // The `cors` section, compiled through the whole configuration so the paths are the ones an
    // operator sees.

    fn load(json: &str) -> Result<crate::config::Config, ConfigError> {
        crate::config::Config::from_json(json.as_bytes(), &|_| None)
    }

    #[test]
    fn cors_settings_compile_and_bad_origins_name_the_entry() {
        let c = load(
            r#"{"policies": [{"name": "a", "signature": false,
                "cors": {"allow_origins": ["https://*.workers.dev", "https://app.example.com"]}}]}"#,
        )
        .unwrap();
        let cors = c.policies[0].cors.as_ref().unwrap();
        assert!(cors.allows_origin("https://x.workers.dev"));
        assert_eq!(cors.max_age, 600);
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].contains("*.workers.dev"), "{:?}", c.warnings);

        for (json, field) in [
            (
                r#"{"policies": [{"name": "a", "signature": false, "cors": {"allow_origins": ["app.example.com"]}}]}"#,
                "policies[0].cors.allow_origins[0]",
            ),
            (
                r#"{"policies": [{"name": "a", "signature": false, "cors": {"allow_origins": ["*"]}}]}"#,
                "policies[0].cors.allow_origins[0]",
            ),
            (
                r#"{"policies": [{"name": "a", "signature": false, "cors": {"disallowed": "drop"}}]}"#,
                "policies[0].cors.disallowed",
            ),
        ] {
            let e = load(json).expect_err(json);
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn an_exact_origin_under_a_registrable_domain_gives_no_warning() {
        let c = load(
            r#"{"policies": [{"name": "a", "signature": false,
                "cors": {"allow_origins": ["https://*.example.com", "https://app.example.com"]}}]}"#,
        )
        .unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn the_origin_from_the_environment_is_added_and_validated() {
        let env = |name: &str| match name {
            "WORKERS_ORIGIN" => Some("https://app.example.com".to_string()),
            "BAD_ORIGIN" => Some("app.example.com/path".to_string()),
            _ => None,
        };
        let json = |var: &str| {
            format!(
                r#"{{"policies": [{{"name": "a", "signature": false, "cors": {{"allow_origin_env": "{var}"}}}}]}}"#
            )
        };
        let c = crate::config::Config::from_json(json("WORKERS_ORIGIN").as_bytes(), &env).unwrap();
        assert!(c.policies[0]
            .cors
            .as_ref()
            .unwrap()
            .allows_origin("https://app.example.com"));
        let c = crate::config::Config::from_json(json("UNSET_ORIGIN").as_bytes(), &env).unwrap();
        assert!(!c.policies[0]
            .cors
            .as_ref()
            .unwrap()
            .allows_origin("https://app.example.com"));
        let e = crate::config::Config::from_json(json("BAD_ORIGIN").as_bytes(), &env).unwrap_err();
        assert_eq!(e.field, "policies[0].cors.allow_origin_env");
    }

    #[test]
    fn a_bad_origin_variable_is_named_but_its_value_never_shown() {
        // Found by fuzzing (fuzz/regressions/config_json/): pointed at the signing secret by
        // mistake, the old message put the secret in Envoy's log.
        let secret = "0123456789abcdef0123456789abcdef\ninjected log line";
        let env = |name: &str| (name == "HMAC_SHARED_SECRET").then(|| secret.to_string());
        let json = r#"{"policies": [{"name": "a", "signature": false,
                       "cors": {"allow_origin_env": "HMAC_SHARED_SECRET"}}]}"#;
        let e = crate::config::Config::from_json(json.as_bytes(), &env).unwrap_err();
        assert_eq!(e.field, "policies[0].cors.allow_origin_env");
        let text = e.to_string();
        assert!(text.contains("HMAC_SHARED_SECRET (50 bytes)"), "{text}");
        assert!(!text.contains("0123456789abcdef"), "{text}");
        assert!(!text.contains('\n'), "{text}");
    }
}
