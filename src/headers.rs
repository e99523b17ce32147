//! A read-only view of the request headers as the host hands them over: names lowercase (Envoy
//! normalises them), values as raw bytes because the client controls them and they need not be UTF-8.

/// Sets one header in a header list (request or response), replacing every copy whatever its
/// case; `None` only removes. The one way edge-warden edits a header map it writes back whole.
pub fn replace(pairs: &mut Vec<(String, Vec<u8>)>, name: &str, value: Option<&[u8]>) {
    pairs.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    if let Some(value) = value {
        pairs.push((name.to_string(), value.to_vec()));
    }
}

/// Whether a header name the client sent means `ours` (lowercase) to some server: the same name
/// in any case, or spelled with `_` for `-`, as WSGI/CGI-style servers fold both into one.
pub fn same_name(sent: &str, ours: &str) -> bool {
    sent.len() == ours.len()
        && sent.bytes().zip(ours.bytes()).all(|(s, o)| {
            let s = if s == b'_' {
                b'-'
            } else {
                s.to_ascii_lowercase()
            };
            s == o
        })
}

/// `value` without leading and trailing optional whitespace (spaces and tabs, RFC 9110 §5.6.3).
pub fn trim_ows(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| *b != b' ' && *b != b'\t')
        .map_or(start, |i| i + 1);
    value.get(start..end).unwrap_or_default()
}

/// A header that was sent more than once where exactly one copy is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duplicated;

#[derive(Debug, Default, Clone)]
pub struct RequestHeaders {
    pairs: Vec<(String, Vec<u8>)>,
}

impl RequestHeaders {
    pub fn new(pairs: Vec<(String, Vec<u8>)>) -> Self {
        Self { pairs }
    }

    /// The value of a header that must appear at most once. `name` must be lowercase.
    pub fn unique(&self, name: &str) -> Result<Option<&[u8]>, Duplicated> {
        let mut found = None;
        for (n, v) in &self.pairs {
            if n.eq_ignore_ascii_case(name) {
                if found.is_some() {
                    return Err(Duplicated);
                }
                found = Some(v.as_slice());
            }
        }
        Ok(found)
    }

    /// The first value of a header, for headers where duplicates carry no meaning to us.
    pub fn first(&self, name: &str) -> Option<&[u8]> {
        self.pairs
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// Every header, in order (with repeats).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.pairs.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// Every header name, in order (with repeats).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.pairs.iter().map(|(n, _)| n.as_str())
    }

    /// The pairs, for writing the map back after edits.
    pub fn into_pairs(self) -> Vec<(String, Vec<u8>)> {
        self.pairs
    }

    /// Applies edits (`None` removes every copy, `Some` replaces them with one value).
    pub fn apply(pairs: &mut Vec<(String, Vec<u8>)>, edits: &[(String, Option<String>)]) {
        for (name, value) in edits {
            replace(pairs, name, value.as_deref().map(str::as_bytes));
        }
    }

    /// Every field line of `name`, each trimmed of spaces and tabs, joined with ", ": the one
    /// value RFC 9110 §5.3 says several lines of a list-valued field stand for (RFC 9421 §2.1
    /// builds a covered field's value the same way). `None` when the field is absent.
    pub fn combined(&self, name: &str) -> Option<Vec<u8>> {
        let mut out: Option<Vec<u8>> = None;
        for (_, value) in self
            .pairs
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            let buf = match &mut out {
                Some(buf) => {
                    buf.extend_from_slice(b", ");
                    buf
                }
                None => out.insert(Vec::new()),
            };
            buf.extend_from_slice(trim_ows(value));
        }
        out
    }

    /// Headers from text pairs, for tests.
    #[cfg(test)]
    pub(crate) fn from_text(pairs: &[(&str, &str)]) -> Self {
        Self::new(
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
        )
    }

    /// `first`, as text; `None` when absent or not UTF-8.
    pub fn first_str(&self, name: &str) -> Option<&str> {
        self.first(name).and_then(|v| std::str::from_utf8(v).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &[u8])]) -> RequestHeaders {
        RequestHeaders::new(
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_vec()))
                .collect(),
        )
    }

    #[test]
    fn combined_joins_every_line_trimmed_in_order() {
        let h = headers(&[
            ("x-list", b" a, b "),
            ("x-other", b"z"),
            ("X-List", b"\tc"),
            ("x-empty", b"  "),
        ]);
        assert_eq!(h.combined("x-list"), Some(b"a, b, c".to_vec()));
        assert_eq!(h.combined("x-empty"), Some(Vec::new()));
        assert_eq!(h.combined("x-none"), None);
        assert_eq!(trim_ows(b" \t "), b"");
    }

    #[test]
    fn unique_finds_a_single_copy_and_refuses_two() {
        let h = headers(&[("x-a", b"1"), ("x-b", b"2"), ("x-b", b"3")]);
        assert_eq!(h.unique("x-a"), Ok(Some(&b"1"[..])));
        assert_eq!(h.unique("x-b"), Err(Duplicated));
        assert_eq!(h.unique("x-c"), Ok(None));
    }

    #[test]
    fn edits_replace_and_remove_every_copy() {
        let mut pairs = headers(&[
            ("x-id", b"spoofed"),
            ("x-id", b"again"),
            ("x-key", b"k"),
            ("a", b"1"),
        ])
        .into_pairs();
        RequestHeaders::apply(
            &mut pairs,
            &[("x-id".into(), Some("real".into())), ("x-key".into(), None)],
        );
        assert_eq!(
            pairs,
            vec![
                ("a".to_string(), b"1".to_vec()),
                ("x-id".to_string(), b"real".to_vec())
            ]
        );
    }

    #[test]
    fn underscore_and_case_spellings_name_the_same_header() {
        assert!(same_name("x_edge_warden_role", "x-edge-warden-role"));
        assert!(same_name("X_Edge-Warden_ROLE", "x-edge-warden-role"));
        assert!(same_name("x-edge-warden-role", "x-edge-warden-role"));
        assert!(!same_name("x-edge-warden-roles", "x-edge-warden-role"));
        assert!(!same_name("x.edge.warden.role", "x-edge-warden-role"));
    }

    #[test]
    fn non_utf8_values_are_kept_as_bytes() {
        let h = headers(&[("x-a", &[0xff, 0xfe])]);
        assert_eq!(h.first("x-a"), Some(&[0xff, 0xfe][..]));
        assert_eq!(h.first_str("x-a"), None);
    }
}
