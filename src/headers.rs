//! A read-only view of the request headers as the host hands them over: names lowercase (Envoy
//! normalises them), values as raw bytes because the client controls them and they need not be UTF-8.

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
    fn unique_finds_a_single_copy_and_refuses_two() {
        let h = headers(&[("x-a", b"1"), ("x-b", b"2"), ("x-b", b"3")]);
        assert_eq!(h.unique("x-a"), Ok(Some(&b"1"[..])));
        assert_eq!(h.unique("x-b"), Err(Duplicated));
        assert_eq!(h.unique("x-c"), Ok(None));
    }

    #[test]
    fn non_utf8_values_are_kept_as_bytes() {
        let h = headers(&[("x-a", &[0xff, 0xfe])]);
        assert_eq!(h.first("x-a"), Some(&[0xff, 0xfe][..]));
        assert_eq!(h.first_str("x-a"), None);
    }
}
