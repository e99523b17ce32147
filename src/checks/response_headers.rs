//! Security headers on every response: the upstream's, edge-warden's own rejections and Envoy's
//! local replies (404, 413, 429, 503) all pass through the filter's response path.
//!
//! The plan is computed once from the configuration; per response it is one pass over the
//! headers Envoy hands over, and the result is written back in a single host call.

use serde::Deserialize;

use crate::config::{default_true, err, ConfigError};
use crate::headers::replace;

/// What to do with one response header.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum HeaderAction {
    /// Replace whatever the upstream sent.
    Set(String),
    /// Set only if the upstream did not send the header.
    SetIfAbsent(String),
    /// Remove the header.
    Remove,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// The OWASP Secure Headers Project's recommendations for an API.
    #[default]
    Owasp,
    /// Exactly the eight headers of the reference services' audit document.
    Compat,
    /// No headers besides the explicit ones.
    None,
}

/// Server banners that only help an attacker fingerprint the stack.
pub const BANNERS: &[&str] = &[
    "x-powered-by",
    "x-aspnet-version",
    "x-aspnetmvc-version",
    "x-runtime",
    "x-generator",
];

const HSTS: &str = "max-age=31536000; includeSubDomains";

fn preset_rules(preset: Preset, hsts_preload: bool) -> Vec<(String, HeaderAction)> {
    use HeaderAction::{Remove, Set};
    let set = |n: &str, v: &str| (n.to_string(), Set(v.to_string()));
    let hsts = if hsts_preload {
        format!("{HSTS}; preload")
    } else {
        HSTS.to_string()
    };
    match preset {
        Preset::Owasp => vec![
            set("strict-transport-security", &hsts),
            set("x-frame-options", "DENY"),
            set("x-content-type-options", "nosniff"),
            set("content-security-policy", "default-src 'none'; frame-ancestors 'none'"),
            set("x-permitted-cross-domain-policies", "none"),
            set("referrer-policy", "no-referrer"),
            set("cross-origin-opener-policy", "same-origin"),
            set("cross-origin-resource-policy", "same-origin"),
            set(
                "permissions-policy",
                "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), \
                 microphone=(), payment=(), usb=()",
            ),
            set("x-xss-protection", "0"),
            ("server".to_string(), Remove),
        ],
        // The audit document's values verbatim (its HSTS carries `preload`), with the CSP of the
        // reference services' default configuration.
        Preset::Compat => vec![
            set("strict-transport-security", "max-age=31536000; includeSubDomains; preload"),
            set("x-frame-options", "DENY"),
            set("x-content-type-options", "nosniff"),
            set("x-xss-protection", "1; mode=block"),
            set(
                "content-security-policy",
                "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline';",
            ),
            set("referrer-policy", "strict-origin-when-cross-origin"),
            set(
                "permissions-policy",
                "geolocation=(), microphone=(), camera=(), payment=(), usb=(), magnetometer=()",
            ),
            set("server", "Unknown"),
        ],
        Preset::None => Vec::new(),
    }
}

/// The compiled response-header rules.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    rules: Vec<(String, HeaderAction)>,
    no_store_on_error: bool,
}

impl Plan {
    /// `overrides` (lowercase names) replace the preset's rule for the same header.
    pub fn new(
        preset: Preset,
        hsts_preload: bool,
        remove_banners: bool,
        overrides: Vec<(String, HeaderAction)>,
    ) -> Plan {
        let mut rules = preset_rules(preset, hsts_preload);
        if remove_banners {
            rules.extend(
                BANNERS
                    .iter()
                    .map(|b| (b.to_string(), HeaderAction::Remove)),
            );
        }
        for (name, action) in overrides {
            rules.retain(|(n, _)| *n != name);
            rules.push((name, action));
        }
        Plan {
            rules,
            no_store_on_error: preset == Preset::Owasp,
        }
    }

    /// Applies the rules, then sets `cors` headers and merges `vary` tokens. Returns the new
    /// header list (pseudo-headers kept in place).
    pub fn apply(
        &self,
        mut headers: Vec<(String, Vec<u8>)>,
        cors: &[(&'static str, String)],
        vary: &[&str],
    ) -> Vec<(String, Vec<u8>)> {
        let status = headers
            .iter()
            .find(|(n, _)| n == ":status")
            .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<u16>().ok())
            .unwrap_or(0);
        let set = |headers: &mut Vec<(String, Vec<u8>)>, name: &str, value: &str| {
            replace(headers, name, Some(value.as_bytes()));
        };
        for (name, action) in &self.rules {
            match action {
                HeaderAction::Set(v) => set(&mut headers, name, v),
                HeaderAction::SetIfAbsent(v) => {
                    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
                        headers.push((name.clone(), v.as_bytes().to_vec()));
                    }
                }
                HeaderAction::Remove => replace(&mut headers, name, None),
            }
        }
        // A rate limiter's 429 (Envoy's local_ratelimit) says when its bucket refills in
        // x-ratelimit-reset; clients and SDKs look for the standard Retry-After.
        if status == 429
            && !headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("retry-after"))
        {
            let reset = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("x-ratelimit-reset"))
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_empty() && v.iter().all(u8::is_ascii_digit));
            if let Some(reset) = reset {
                headers.push(("retry-after".to_string(), reset));
            }
        }
        // Error bodies are never worth caching, and may hold request-specific detail.
        if self.no_store_on_error && status >= 400 {
            set(&mut headers, "cache-control", "no-store");
        }
        for (name, value) in cors {
            set(&mut headers, name, value);
        }
        if !vary.is_empty() {
            merge_vary(&mut headers, vary);
        }
        headers
    }
}

/// Adds tokens to `Vary` without duplicating what the upstream already listed.
fn merge_vary(headers: &mut Vec<(String, Vec<u8>)>, tokens: &[&str]) {
    let existing: Vec<String> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("vary"))
        .flat_map(|(_, v)| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(|t| t.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|t| !t.is_empty())
        .collect();
    if existing.iter().any(|t| t == "*") {
        return;
    }
    let mut all = existing.clone();
    for t in tokens {
        if !all.iter().any(|e| e.eq_ignore_ascii_case(t)) {
            all.push(t.to_string());
        }
    }
    if all.len() == existing.len() {
        return;
    }
    headers.retain(|(n, _)| !n.eq_ignore_ascii_case("vary"));
    headers.push(("vary".to_string(), all.join(", ").into_bytes()));
}

// ---------------------------------------------------------------------------------------------
// Configuration: the `security_headers` section, and its compile step.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecurityHeaders {
    /// `owasp` (default), `compat` or `none`.
    #[serde(default)]
    pub preset: Preset,
    /// Add `preload` to Strict-Transport-Security (owasp preset).
    #[serde(default)]
    pub hsts_preload: bool,
    /// Remove X-Powered-By and similar banners (default true).
    #[serde(default = "default_true")]
    pub remove_banners: bool,
    /// Per-header overrides: `{"set": "v"}`, `{"set_if_absent": "v"}` or `"remove"`.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, HeaderAction>,
}

impl Default for RawSecurityHeaders {
    fn default() -> Self {
        Self {
            preset: Preset::Owasp,
            hsts_preload: false,
            remove_banners: true,
            headers: Default::default(),
        }
    }
}

/// Compiles the `security_headers` section at `field` into the plan applied to every response.
pub(crate) fn compile_security_headers(
    raw: &RawSecurityHeaders,
    field: &str,
) -> Result<Plan, ConfigError> {
    let mut overrides = Vec::new();
    for (name, action) in &raw.headers {
        let field = format!("{field}.headers.{name}");
        let lower = name.to_ascii_lowercase();
        if lower.is_empty()
            || !lower
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(err(field, "is not a header name"));
        }
        if let HeaderAction::Set(v) | HeaderAction::SetIfAbsent(v) = action {
            if v.bytes().any(|b| b.is_ascii_control()) {
                return Err(err(field, "the value must not contain control characters"));
            }
        }
        overrides.push((lower, action.clone()));
    }
    Ok(Plan::new(
        raw.preset,
        raw.hsts_preload,
        raw.remove_banners,
        overrides,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn get<'a>(h: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a str> {
        h.iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    #[test]
    fn owasp_preset_sets_headers_removes_banners_and_server() {
        let plan = Plan::new(Preset::Owasp, false, true, vec![]);
        let h = plan.apply(
            response(&[
                (":status", "200"),
                ("server", "gunicorn"),
                ("x-powered-by", "PHP"),
                ("x-frame-options", "ALLOW"),
            ]),
            &[],
            &[],
        );
        assert_eq!(get(&h, "x-frame-options"), Some("DENY"));
        assert_eq!(get(&h, "x-xss-protection"), Some("0"));
        assert_eq!(get(&h, "strict-transport-security"), Some(HSTS));
        assert_eq!(get(&h, "server"), None);
        assert_eq!(get(&h, "x-powered-by"), None);
        assert_eq!(get(&h, "cache-control"), None);
        assert_eq!(get(&h, ":status"), Some("200"));
    }

    #[test]
    fn compat_preset_is_exactly_the_eight_reference_headers() {
        let plan = Plan::new(Preset::Compat, false, false, vec![]);
        let h = plan.apply(response(&[(":status", "200")]), &[], &[]);
        assert_eq!(h.len(), 9);
        assert_eq!(get(&h, "x-xss-protection"), Some("1; mode=block"));
        assert_eq!(get(&h, "server"), Some("Unknown"));
    }

    #[test]
    fn overrides_set_remove_and_set_if_absent() {
        let plan = Plan::new(
            Preset::Owasp,
            true,
            true,
            vec![
                ("x-frame-options".into(), HeaderAction::Remove),
                (
                    "content-security-policy".into(),
                    HeaderAction::SetIfAbsent("default-src 'self'".into()),
                ),
                ("server".into(), HeaderAction::Set("edge".into())),
            ],
        );
        let h = plan.apply(
            response(&[
                (":status", "404"),
                ("content-security-policy", "upstream's"),
            ]),
            &[],
            &[],
        );
        assert_eq!(get(&h, "x-frame-options"), None);
        assert_eq!(get(&h, "content-security-policy"), Some("upstream's"));
        assert_eq!(get(&h, "server"), Some("edge"));
        assert_eq!(get(&h, "cache-control"), Some("no-store"));
        assert!(get(&h, "strict-transport-security")
            .unwrap()
            .ends_with("; preload"));
    }

    #[test]
    fn a_rate_limited_reply_gets_retry_after_from_the_reset() {
        let plan = Plan::default();
        let h = plan.apply(
            response(&[(":status", "429"), ("x-ratelimit-reset", "42")]),
            &[],
            &[],
        );
        assert_eq!(get(&h, "retry-after"), Some("42"));
        let h = plan.apply(
            response(&[
                (":status", "429"),
                ("retry-after", "7"),
                ("x-ratelimit-reset", "42"),
            ]),
            &[],
            &[],
        );
        assert_eq!(get(&h, "retry-after"), Some("7"));
        let h = plan.apply(
            response(&[(":status", "200"), ("x-ratelimit-reset", "42")]),
            &[],
            &[],
        );
        assert_eq!(get(&h, "retry-after"), None);
    }

    #[test]
    fn vary_is_merged_not_duplicated() {
        let plan = Plan::default();
        let h = plan.apply(response(&[("vary", "Accept-Encoding")]), &[], &["Origin"]);
        assert_eq!(get(&h, "vary"), Some("Accept-Encoding, Origin"));
        let h = plan.apply(response(&[("vary", "origin")]), &[], &["Origin"]);
        assert_eq!(get(&h, "vary"), Some("origin"));
    }

    // The `security_headers` section, compiled through the whole configuration so the paths are
    // the ones an operator sees.

    #[test]
    fn bad_security_headers_name_the_entry() {
        for (json, field) in [
            (
                r#"{"policies": [{"name": "a", "signature": false}], "security_headers": {"preset": "strict"}}"#,
                "security_headers.preset",
            ),
            (
                r#"{"policies": [{"name": "a", "signature": false}], "security_headers": {"headers": {"X-A": {"add": "1"}}}}"#,
                "security_headers.headers.X-A",
            ),
        ] {
            let e = crate::config::Config::from_json(json.as_bytes(), &|_| None).expect_err(json);
            assert_eq!(e.field, field, "{e}");
        }
    }
}
