//! A secret that cannot leak through `Debug` or `Display`.

use std::fmt;

/// Key material for request signatures. `Debug` prints only its length, so a secret never reaches a
/// log line by accident (a config dump, an error, a panic message).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The key bytes, for the MAC and nothing else.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_contains_the_secret() {
        let s = Secret::new(b"super-secret-value-that-is-long-enough".to_vec());
        let shown = format!("{s:?}");
        assert!(!shown.contains("super-secret"));
        assert!(shown.contains("38 bytes"));
    }
}
