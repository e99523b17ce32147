//! Path safety: a request target that means one thing to edge-warden's policy selection and
//! another to the upstream is refused, before any policy is selected.
//!
//! Policies are selected on `:path` as Envoy hands it over. Envoy's `normalize_path` (RFC 3986
//! dot-segment removal, decoding of unreserved `%XX`), `merge_slashes` and
//! `path_with_escaped_slashes_action` rewrite that path first when they are on; when they are
//! off, or for spellings they leave alone (`%252e`, backslashes, overlong UTF-8, `..;`), an
//! upstream that decodes again, or treats `\` as `/`, would walk out of the route the policy
//! was chosen for. So this layer decodes the path itself, up to [`MAX_DECODES`] times, and at
//! every level refuses:
//! - a `.` or `..` segment (also `..;param`, Tomcat's spelling), with `/` and `\` as separators;
//! - overlong UTF-8 (`%c0%ae` is a `.` to a lenient decoder) and IIS's `%u002e` escapes;
//! - an empty segment (`//`) in the path as sent;
//! - control characters (C0 and DEL, including NUL and TAB) in the path or the query, raw or
//!   percent-encoded (`%00`, `%0a`, `%250a`).
//!
//! It never rewrites the path: the policy is selected on the same bytes the upstream receives.

use crate::reject::Reject;

/// How many times a component is percent-decoded; a component still holding escapes after
/// that many rounds is refused (nobody encodes a path four times by accident).
pub const MAX_DECODES: usize = 3;

/// Checks a request target (`:path`, query included). Pure and allocation-light: a plain path
/// without `%` is scanned once.
pub fn check(target: &[u8]) -> Result<(), Reject> {
    let end = target
        .iter()
        .position(|b| matches!(b, b'?' | b'#'))
        .unwrap_or(target.len());
    let (path, rest) = target.split_at(end);
    component(path, true)?;
    component(rest, false)
}

/// Whether a header value holds a control character other than horizontal tab (RFC 9110
/// §5.5: field values are visible characters, spaces, tabs and obs-text).
pub fn header_value_is_clean(value: &[u8]) -> bool {
    !value
        .iter()
        .any(|b| (*b < 0x20 && *b != b'\t') || *b == 0x7f)
}

fn component(raw: &[u8], is_path: bool) -> Result<(), Reject> {
    let part = if is_path { "path" } else { "query" };
    if is_path && raw.windows(2).any(|w| w == b"//") {
        return Err(Reject::InvalidPath);
    }
    let mut level = std::borrow::Cow::Borrowed(raw);
    for _ in 0..=MAX_DECODES {
        if level.iter().any(|b| *b < 0x20 || *b == 0x7f) {
            return Err(Reject::InvalidCharacters { part });
        }
        if is_path && (has_dot_segment(&level) || has_overlong_utf8(&level) || has_u_escape(&level))
        {
            return Err(Reject::InvalidPath);
        }
        match decode(&level) {
            Some(next) => level = std::borrow::Cow::Owned(next),
            None => return Ok(()),
        }
    }
    Err(if is_path {
        Reject::InvalidPath
    } else {
        Reject::InvalidCharacters { part }
    })
}

/// One round of percent-decoding; `None` when there is no valid `%XX` escape left. Invalid
/// escapes (`%zz`, a trailing `%`) are kept as they are.
pub fn decode(input: &[u8]) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b == b'%' {
            if let (Some(h), Some(l)) = (
                input.get(i + 1).and_then(|c| hex(*c)),
                input.get(i + 2).and_then(|c| hex(*c)),
            ) {
                let buf = out.get_or_insert_with(|| {
                    let mut v = Vec::with_capacity(input.len());
                    v.extend_from_slice(&input[..i]);
                    v
                });
                buf.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        if let Some(buf) = out.as_mut() {
            buf.push(b);
        }
        i += 1;
    }
    out
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// A `.` or `..` segment, separators `/` and `\`, path parameters (`;...`) ignored.
fn has_dot_segment(path: &[u8]) -> bool {
    path.split(|b| matches!(b, b'/' | b'\\')).any(|segment| {
        let name = segment.split(|b| *b == b';').next().unwrap_or(segment);
        name == b"." || name == b".."
    })
}

/// Overlong UTF-8 lead sequences: C0 and C1 (two-byte forms of ASCII), E0 80–9F and F0 80–8F
/// (three- and four-byte forms of shorter code points). No valid UTF-8 holds them.
fn has_overlong_utf8(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().any(|(i, b)| {
        let next = bytes.get(i + 1).copied().unwrap_or(0);
        matches!(b, 0xc0 | 0xc1)
            || (*b == 0xe0 && (0x80..=0x9f).contains(&next))
            || (*b == 0xf0 && (0x80..=0x8f).contains(&next))
    })
}

/// IIS's non-standard `%uXXXX` escape (`%u002e` is `.` to IIS).
fn has_u_escape(bytes: &[u8]) -> bool {
    bytes.windows(6).any(|w| {
        w[0] == b'%' && (w[1] == b'u' || w[1] == b'U') && w[2..].iter().all(|c| hex(*c).is_some())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_paths_and_queries_pass() {
        for ok in [
            &b"/"[..],
            b"/api/orders/42",
            b"/api/orders/",
            b"/.well-known/openid-configuration",
            b"/files/..hidden/a.b..c",
            b"/search?q=a..b&next=/x/../y",
            b"/caf%C3%A9",
            b"/a%20b",
            b"/group%2Fproject",
            b"/p?x=%25",
            b"/bad%zzescape",
            b"*",
        ] {
            assert_eq!(check(ok), Ok(()), "{}", String::from_utf8_lossy(ok));
        }
    }

    #[test]
    fn traversal_in_every_disguise_is_an_invalid_path() {
        for bad in [
            &b"/a/../b"[..],
            b"/..",
            b"/a/./b",
            b"/a/%2e%2e/b",
            b"/a/%2E%2E/b",
            b"/a/%2E./b",
            b"/a/.%2e/b",
            b"/a/%252e%252e/b",
            b"/a/%25252e%25252e/b",
            b"/a/..%2fb",
            b"/a/..%2Fb",
            b"/a/%2e%2e%2fb",
            b"/a/..\\b",
            b"/a\\..\\b",
            b"/a/..%5cb",
            b"/a/%c0%ae%c0%ae/b",
            b"/a/%C0%AE./b",
            b"/a/%e0%80%ae/b",
            b"/a/%u002e%u002e/b",
            b"/a/..;/b",
            b"/a/..;jsessionid=1/b",
            b"//admin",
            b"/a//b",
            b"/a/%2525252e/b",
        ] {
            assert_eq!(
                check(bad),
                Err(Reject::InvalidPath),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn control_characters_raw_or_encoded_are_refused_in_path_and_query() {
        for (bad, part) in [
            (&b"/a%00b"[..], "path"),
            (b"/a%0ab", "path"),
            (b"/a%0Db", "path"),
            (b"/a%7fb", "path"),
            (b"/a%09b", "path"),
            (b"/a%250ab", "path"),
            (b"/a\x01b", "path"),
            (b"/a?x=%00", "query"),
            (b"/a?x=1%0d%0aSet-Cookie:%20a", "query"),
            (b"/a?x=%2500", "query"),
            (b"/a?x=\x7f", "query"),
            (b"/a?x=%2525252500", "query"),
        ] {
            assert_eq!(
                check(bad),
                Err(Reject::InvalidCharacters { part }),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn decoding_keeps_invalid_escapes_and_reports_when_nothing_changed() {
        assert_eq!(decode(b"/plain"), None);
        assert_eq!(decode(b"/100%"), None);
        assert_eq!(decode(b"/%zz%4"), None);
        assert_eq!(decode(b"/%41%zz%2"), Some(b"/A%zz%2".to_vec()));
        assert_eq!(decode(b"%252e"), Some(b"%2e".to_vec()));
    }

    #[test]
    fn header_values_allow_tab_and_obs_text_but_no_other_control() {
        assert!(header_value_is_clean(b"a\tb c\xe9"));
        for bad in [&b"a\x00"[..], b"\x01", b"a\x7f", b"a\x1bb", b"a\rb"] {
            assert!(!header_value_is_clean(bad), "{bad:?}");
        }
    }
}
