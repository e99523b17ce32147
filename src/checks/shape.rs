//! Request shape, per policy (`policies[i].request`): which methods, which content types, how
//! large a body, and which headers, in which form, a request must have.
//!
//! Everything here is decided from the request headers, before any body byte is read, except
//! the streamed body limit, which [`crate::engine::body::BodyWatch`] enforces as the bytes pass.
//! Header patterns are compiled once at load time; a refusal names the header (a name from
//! the configuration), never the value the client sent.

use regex_lite::{Regex, RegexBuilder};
use serde::Deserialize;

use crate::config::{err, validate_header_name, ConfigError};
use crate::headers::RequestHeaders;
use crate::reject::Reject;

/// Largest streamed body limit a policy may set: 1 TiB. Nothing is buffered, so the bound is
/// only there to catch a unit mistake.
pub const MAX_STREAMED_BODY_BYTES: u64 = 1 << 40;
/// Longest pattern source accepted, and the most memory one compiled pattern may take.
const MAX_PATTERN_LEN: usize = 1024;
const PATTERN_SIZE_LIMIT: usize = 256 * 1024;

/// `policies[i].request` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRequest {
    /// Methods the route accepts (uppercase); others get 405 with `Allow`. Empty: any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Media types a request body may have (`type/subtype`, compared case-insensitively,
    /// parameters ignored); others get 415. Empty: any. A request without a body is not
    /// checked; one with a body but no `Content-Type` is refused.
    #[serde(default)]
    pub content_types: Vec<String>,
    /// The largest body, in bytes, decided from `Content-Length` before any byte is read and
    /// counted as the body streams by (no buffering). Absent: no limit of its own (a signed
    /// route still has its buffered `max_body_bytes`; the smaller wins).
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// Headers that must be present (once), optionally in a given form.
    #[serde(default)]
    pub required_headers: Vec<RawRequiredHeader>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRequiredHeader {
    /// The header's name, lowercase.
    pub name: String,
    /// A regular expression (`regex-lite` syntax) the whole value must match; a value that is
    /// not UTF-8 never matches. Classes are ASCII
    /// (`\d` is `[0-9]`, `\w` is `[0-9A-Za-z_]`).
    #[serde(default)]
    pub pattern: Option<String>,
}

/// The compiled `request` section.
#[derive(Debug, Clone, Default)]
pub struct RequestShape {
    methods: Vec<String>,
    /// `Allow` header value, precomputed.
    allow: String,
    /// Lowercase `type/subtype`.
    content_types: Vec<String>,
    pub max_body_bytes: Option<u64>,
    required_headers: Vec<RequiredHeader>,
}

#[derive(Debug, Clone)]
struct RequiredHeader {
    name: String,
    pattern: Option<Regex>,
}

/// Compiles `raw` found at `field` (`policies[i].request`).
pub fn compile_request(raw: &RawRequest, field: &str) -> Result<RequestShape, ConfigError> {
    for (i, m) in raw.methods.iter().enumerate() {
        // RFC 9110 method token; uppercase as every registered method is, so the check is a
        // plain comparison.
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase() || b == b'-') {
            return Err(err(
                format!("{field}.methods[{i}]"),
                format!("`{m}` is not an uppercase HTTP method such as GET or POST"),
            ));
        }
        if raw.methods[..i].contains(m) {
            return Err(err(
                format!("{field}.methods[{i}]"),
                format!("`{m}` is listed twice"),
            ));
        }
    }
    let mut content_types = Vec::with_capacity(raw.content_types.len());
    for (i, t) in raw.content_types.iter().enumerate() {
        let at = format!("{field}.content_types[{i}]");
        let Some(media) = media_type(t.as_bytes()) else {
            return Err(err(
                at,
                format!("`{t}` is not a media type such as application/json"),
            ));
        };
        if t.contains(';') {
            return Err(err(
                at,
                format!("`{t}` has parameters; list the media type only (parameters are ignored)"),
            ));
        }
        content_types.push(media);
    }
    if let Some(limit) = raw.max_body_bytes {
        if limit == 0 || limit > MAX_STREAMED_BODY_BYTES {
            return Err(err(
                format!("{field}.max_body_bytes"),
                format!("must be between 1 and {MAX_STREAMED_BODY_BYTES} bytes, got {limit}"),
            ));
        }
    }
    let mut required_headers = Vec::with_capacity(raw.required_headers.len());
    for (j, h) in raw.required_headers.iter().enumerate() {
        let at = format!("{field}.required_headers[{j}]");
        validate_header_name(&format!("{at}.name"), &h.name)?;
        if raw.required_headers[..j].iter().any(|e| e.name == h.name) {
            return Err(err(
                format!("{at}.name"),
                format!("`{}` is listed twice", h.name),
            ));
        }
        let pattern = match &h.pattern {
            Some(p) => Some(compile_pattern(p, &format!("{at}.pattern"))?),
            None => None,
        };
        required_headers.push(RequiredHeader {
            name: h.name.clone(),
            pattern,
        });
    }
    Ok(RequestShape {
        allow: raw.methods.join(", "),
        methods: raw.methods.clone(),
        content_types,
        max_body_bytes: raw.max_body_bytes,
        required_headers,
    })
}

/// A pattern that must match a whole header value.
fn compile_pattern(pattern: &str, field: &str) -> Result<Regex, ConfigError> {
    if pattern.is_empty() || pattern.len() > MAX_PATTERN_LEN {
        return Err(err(
            field,
            format!("must be 1 to {MAX_PATTERN_LEN} characters"),
        ));
    }
    // Anchored here, so `[0-9]+` cannot pass `12<script>` by matching a part of it.
    RegexBuilder::new(&format!(r"\A(?:{pattern})\z"))
        .size_limit(PATTERN_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            // The parser's message quotes the pattern with a caret under the error; keep the
            // last line, the reason.
            let text = e.to_string();
            let reason = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid")
                .trim()
                .trim_start_matches("error: ")
                .to_string();
            err(field, format!("not a valid regular expression: {reason}"))
        })
}

/// The lowercase `type/subtype` of a media type, parameters dropped; `None` when it is not
/// `token/token` (RFC 9110 §8.3.1).
pub fn media_type(value: &[u8]) -> Option<String> {
    let essence = value.split(|b| *b == b';').next().unwrap_or(value);
    let essence = essence.trim_ascii();
    let slash = essence.iter().position(|b| *b == b'/')?;
    let (kind, subtype) = (&essence[..slash], &essence[slash + 1..]);
    if kind.is_empty() || subtype.is_empty() || !kind.iter().chain(subtype).all(|b| is_tchar(*b)) {
        return None;
    }
    // All tchars are ASCII, so this is valid UTF-8.
    String::from_utf8(essence.to_ascii_lowercase()).ok()
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl RequestShape {
    /// The header checks, in order: method, required headers, content type, declared length.
    /// `has_body`: the headers did not end the stream and `Content-Length` is not 0.
    pub fn check(
        &self,
        method: &str,
        headers: &RequestHeaders,
        has_body: bool,
    ) -> Result<(), Reject> {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == method) {
            return Err(Reject::MethodNotAllowed {
                allow: self.allow.clone(),
            });
        }
        for required in &self.required_headers {
            let value = match headers.unique(&required.name) {
                Ok(Some(v)) if !v.is_empty() => v,
                Ok(_) => {
                    return Err(Reject::MissingHeader {
                        header: required.name.clone(),
                    })
                }
                Err(_) => {
                    return Err(Reject::InvalidHeader {
                        header: required.name.clone(),
                        reason: "must be sent exactly once",
                    })
                }
            };
            if let Some(pattern) = &required.pattern {
                if !std::str::from_utf8(value).is_ok_and(|v| pattern.is_match(v)) {
                    return Err(Reject::InvalidHeader {
                        header: required.name.clone(),
                        reason: "does not have the form this route requires",
                    });
                }
            }
        }
        if has_body && !self.content_types.is_empty() {
            let media = headers.first("content-type").and_then(media_type);
            if !media.is_some_and(|m| self.content_types.contains(&m)) {
                return Err(Reject::UnsupportedMediaType {
                    accepted: self.content_types.join(", "),
                });
            }
        }
        Ok(())
    }
}

/// The declared body length, if `Content-Length` holds one number (Envoy refuses conflicting
/// copies before the filter runs).
pub fn declared_length(headers: &RequestHeaders) -> Option<u64> {
    headers
        .first_str("content-length")
        .and_then(|v| v.trim().parse::<u64>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(json: &str) -> Result<RequestShape, ConfigError> {
        let raw: RawRequest = serde_json::from_str(json).unwrap();
        compile_request(&raw, "policies[0].request")
    }

    fn headers(pairs: &[(&str, &[u8])]) -> RequestHeaders {
        RequestHeaders::new(
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_vec()))
                .collect(),
        )
    }

    #[test]
    fn media_types_compare_without_case_or_parameters() {
        assert_eq!(
            media_type(b"Application/JSON; charset=utf-8").as_deref(),
            Some("application/json")
        );
        assert_eq!(
            media_type(b"  multipart/form-data;boundary=x").as_deref(),
            Some("multipart/form-data")
        );
        for bad in [
            &b""[..],
            b"json",
            b"/json",
            b"application/",
            b"a b/c",
            b"text/\xff",
        ] {
            assert_eq!(media_type(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_method_not_listed_gets_405_with_the_allowed_ones() {
        let s = shape(r#"{"methods": ["GET", "POST"]}"#).unwrap();
        assert_eq!(s.check("GET", &headers(&[]), false), Ok(()));
        assert_eq!(
            s.check("DELETE", &headers(&[]), false),
            Err(Reject::MethodNotAllowed {
                allow: "GET, POST".into()
            })
        );
    }

    #[test]
    fn content_types_apply_to_requests_with_a_body_only() {
        let s = shape(r#"{"content_types": ["application/json"]}"#).unwrap();
        let json = headers(&[("content-type", b"application/json; charset=UTF-8")]);
        let xml = headers(&[("content-type", b"application/xml")]);
        assert_eq!(s.check("POST", &json, true), Ok(()));
        assert!(matches!(
            s.check("POST", &xml, true),
            Err(Reject::UnsupportedMediaType { .. })
        ));
        assert!(matches!(
            s.check("POST", &headers(&[]), true),
            Err(Reject::UnsupportedMediaType { .. })
        ));
        // No body: nothing to describe.
        assert_eq!(s.check("POST", &xml, false), Ok(()));
        assert_eq!(s.check("GET", &headers(&[]), false), Ok(()));
    }

    #[test]
    fn required_headers_must_be_present_once_and_match_the_whole_pattern() {
        let s = shape(
            r#"{"required_headers": [{"name": "x-device-id", "pattern": "[A-Za-z0-9_-]{1,64}"}]}"#,
        )
        .unwrap();
        let ok = headers(&[("x-device-id", b"dev_42-a")]);
        assert_eq!(s.check("GET", &ok, false), Ok(()));
        let missing = Err(Reject::MissingHeader {
            header: "x-device-id".into(),
        });
        assert_eq!(s.check("GET", &headers(&[]), false), missing);
        assert_eq!(
            s.check("GET", &headers(&[("x-device-id", b"")]), false),
            missing
        );
        for bad in [
            &b"dev 42"[..],
            b"dev42<script>",
            b"dev42\n",
            &[b'a'; 65],
            b"\xff\xfe",
        ] {
            let r = s.check("GET", &headers(&[("x-device-id", bad)]), false);
            assert!(
                matches!(&r, Err(Reject::InvalidHeader { header, .. }) if header == "x-device-id"),
                "{bad:?}: {r:?}"
            );
        }
        let twice = headers(&[("x-device-id", b"a"), ("x-device-id", b"b")]);
        assert!(matches!(
            s.check("GET", &twice, false),
            Err(Reject::InvalidHeader { .. })
        ));
    }

    #[test]
    fn ascii_classes_work_without_unicode_tables() {
        let s =
            shape(r#"{"required_headers": [{"name": "x-n", "pattern": "\\d{3}-\\w+"}]}"#).unwrap();
        assert_eq!(
            s.check("GET", &headers(&[("x-n", b"123-ab_c")]), false),
            Ok(())
        );
        assert!(s
            .check("GET", &headers(&[("x-n", "123-é".as_bytes())]), false)
            .is_err());
    }

    #[test]
    fn bad_settings_are_refused_naming_the_field() {
        let cases = [
            (
                r#"{"required_headers": [{"name": "x-a"}, {"name": "x-b", "pattern": "([a-z]"}]}"#,
                "policies[0].request.required_headers[1].pattern",
            ),
            (
                r#"{"required_headers": [{"name": "X-Device"}]}"#,
                "policies[0].request.required_headers[0].name",
            ),
            (
                r#"{"required_headers": [{"name": "x-a"}, {"name": "x-a"}]}"#,
                "policies[0].request.required_headers[1].name",
            ),
            (
                r#"{"methods": ["GET", "get"]}"#,
                "policies[0].request.methods[1]",
            ),
            (
                r#"{"methods": ["GET", "GET"]}"#,
                "policies[0].request.methods[1]",
            ),
            (
                r#"{"content_types": ["json"]}"#,
                "policies[0].request.content_types[0]",
            ),
            (
                r#"{"content_types": ["text/plain; charset=utf-8"]}"#,
                "policies[0].request.content_types[0]",
            ),
            (
                r#"{"max_body_bytes": 0}"#,
                "policies[0].request.max_body_bytes",
            ),
            (
                r#"{"max_body_bytes": 1099511627777}"#,
                "policies[0].request.max_body_bytes",
            ),
        ];
        for (json, field) in cases {
            let e = shape(json).unwrap_err();
            assert_eq!(e.field, field, "{json}: {e}");
        }
        let e =
            shape(r#"{"required_headers": [{"name": "x-a", "pattern": "([a-z]"}]}"#).unwrap_err();
        assert!(
            e.reason.starts_with("not a valid regular expression"),
            "{e}"
        );
        assert!(shape(r#"{"max_body_bytes": 10737418240}"#).is_ok());
    }
}
