//! RFC 9530 `Content-Digest`: the hash of the body as sent, e.g.
//! `sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:`.
//!
//! An RFC 9421 signature cannot cover the body itself, only headers; covering `content-digest`
//! binds the body through this header. That binding holds only if someone checks the header
//! against the bytes, so [`DigestCheck`] hashes the body as it streams and compares at the end.
//! Only `sha-256` and `sha-512` are checked (the two RFC 9530 registers as active); a field
//! holding neither proves nothing and is refused rather than waved through.

use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

use crate::engine::body::BodyInspector;
use crate::headers::RequestHeaders;
use crate::reject::Reject;

const HEADER: &str = "Content-Digest";

/// A digest algorithm edge-warden checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    /// The key in the Content-Digest dictionary (RFC 9530 §7.2).
    pub fn key(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha-256",
            Algorithm::Sha512 => "sha-512",
        }
    }

    fn len(self) -> usize {
        match self {
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
        }
    }
}

/// The Content-Digest a request sent, checked against its body as it passes (a BodyInspector).
pub struct DigestCheck {
    sha256: Option<(Sha256, Vec<u8>)>,
    sha512: Option<(Sha512, Vec<u8>)>,
}

impl std::fmt::Debug for DigestCheck {
    /// The expected digests are the client's; only which algorithms are checked is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestCheck")
            .field("sha256", &self.sha256.is_some())
            .field("sha512", &self.sha512.is_some())
            .finish()
    }
}

/// `Ok(None)`: no Content-Digest header. Several field lines are combined. Only sha-256 and
/// sha-512 are checked; others are ignored; none of those two present → MalformedHeader. A
/// wrong-length byte sequence → MalformedHeader.
pub fn parse(headers: &RequestHeaders) -> Result<Option<DigestCheck>, Reject> {
    let malformed = |reason| Reject::MalformedHeader {
        header: HEADER,
        reason,
    };
    let Some(value) = headers.combined("content-digest") else {
        return Ok(None);
    };
    let dict: sfv::Dictionary = sfv::Parser::new(&value)
        .parse()
        .map_err(|_| malformed("is not a valid structured-field dictionary (RFC 9530)"))?;
    let expected = |algorithm: Algorithm| -> Result<Option<Vec<u8>>, Reject> {
        let Some(member) = dict.get(algorithm.key()) else {
            return Ok(None);
        };
        let bytes = match member {
            sfv::ListEntry::Item(item) => item.bare_item.as_byte_sequence(),
            sfv::ListEntry::InnerList(_) => None,
        }
        .ok_or(malformed(
            "must give each digest as a byte sequence (:base64:)",
        ))?;
        if bytes.len() != algorithm.len() {
            return Err(malformed(
                "holds a digest of the wrong length for its algorithm",
            ));
        }
        Ok(Some(bytes.to_vec()))
    };
    let sha256 = expected(Algorithm::Sha256)?.map(|d| (Sha256::new(), d));
    let sha512 = expected(Algorithm::Sha512)?.map(|d| (Sha512::new(), d));
    if sha256.is_none() && sha512.is_none() {
        return Err(malformed(
            "must hold a sha-256 or sha-512 digest (RFC 9530)",
        ));
    }
    Ok(Some(DigestCheck { sha256, sha512 }))
}

impl BodyInspector for DigestCheck {
    fn feed(&mut self, chunk: &[u8]) -> Result<(), Reject> {
        if let Some((hasher, _)) = &mut self.sha256 {
            hasher.update(chunk);
        }
        if let Some((hasher, _)) = &mut self.sha512 {
            hasher.update(chunk);
        }
        Ok(())
    }

    /// Every digest sent must match: one wrong digest beside a right one is still a body that
    /// is not what the client described.
    fn finish(&mut self) -> Result<(), Reject> {
        let mut same = true;
        if let Some((hasher, expected)) = self.sha256.take() {
            same &= bool::from(hasher.finalize()[..].ct_eq(&expected));
        }
        if let Some((hasher, expected)) = self.sha512.take() {
            same &= bool::from(hasher.finalize()[..].ct_eq(&expected));
        }
        if same {
            Ok(())
        } else {
            Err(Reject::ContentDigestMismatch)
        }
    }
}

/// The header value a client sends, e.g. `sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:`
/// (RFC 9530's example for `{"hello": "world"}`).
pub fn header_value(body: &[u8], algorithm: Algorithm) -> String {
    let digest = match algorithm {
        Algorithm::Sha256 => Sha256::digest(body).to_vec(),
        Algorithm::Sha512 => Sha512::digest(body).to_vec(),
    };
    let mut ser = sfv::DictSerializer::new();
    // The keys are fixed lowercase names, always valid structured-field keys.
    if let Ok(key) = sfv::KeyRef::from_str(algorithm.key()) {
        ser.bare_item(key, &digest[..]);
    }
    ser.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &[u8] = br#"{"hello": "world"}"#;
    const HELLO_256: &str = "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:";
    const HELLO_512: &str = "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:";

    fn headers(values: &[&str]) -> RequestHeaders {
        RequestHeaders::new(
            values
                .iter()
                .map(|v| ("content-digest".to_string(), v.as_bytes().to_vec()))
                .collect(),
        )
    }

    fn check(values: &[&str], chunks: &[&[u8]]) -> Result<(), Reject> {
        let mut check = parse(&headers(values))?.expect("a Content-Digest");
        for chunk in chunks {
            check.feed(chunk)?;
        }
        check.finish()
    }

    #[test]
    fn header_values_are_the_rfc_9530_examples() {
        assert_eq!(header_value(HELLO, Algorithm::Sha256), HELLO_256);
        assert_eq!(header_value(HELLO, Algorithm::Sha512), HELLO_512);
    }

    #[test]
    fn the_rfc_examples_verify_against_their_body() {
        assert_eq!(check(&[HELLO_256], &[HELLO]), Ok(()));
        assert_eq!(check(&[HELLO_512], &[HELLO]), Ok(()));
        assert_eq!(
            check(&[&format!("{HELLO_256}, {HELLO_512}")], &[HELLO]),
            Ok(())
        );
    }

    #[test]
    fn chunked_feeding_gives_the_same_verdict_as_the_whole_body() {
        let chunks: Vec<&[u8]> = HELLO.chunks(5).collect();
        assert_eq!(check(&[HELLO_256, HELLO_512], &chunks), Ok(()));
        let body: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let value = header_value(&body, Algorithm::Sha512);
        let chunks: Vec<&[u8]> = body.chunks(7).collect();
        assert_eq!(check(&[&value], &chunks), Ok(()));
    }

    #[test]
    fn a_changed_body_is_a_mismatch() {
        assert_eq!(
            check(&[HELLO_256], &[br#"{"hello": "World"}"#]),
            Err(Reject::ContentDigestMismatch)
        );
        assert_eq!(
            check(&[HELLO_512], &[HELLO, b" "]),
            Err(Reject::ContentDigestMismatch)
        );
    }

    #[test]
    fn one_wrong_digest_beside_a_right_one_is_a_mismatch() {
        let wrong_512 = header_value(b"other", Algorithm::Sha512);
        // Two field lines, combined as one dictionary.
        assert_eq!(
            check(&[HELLO_256, &wrong_512], &[HELLO]),
            Err(Reject::ContentDigestMismatch)
        );
        let wrong_256 = header_value(b"other", Algorithm::Sha256);
        assert_eq!(
            check(&[&format!("{wrong_256}, {HELLO_512}")], &[HELLO]),
            Err(Reject::ContentDigestMismatch)
        );
    }

    #[test]
    fn unknown_algorithms_are_ignored_but_not_enough() {
        let both = format!("md5=:mJPaBpaGfBv3ByHWMIDmeg==:, {HELLO_256}");
        assert_eq!(check(&[&both], &[HELLO]), Ok(()));
        assert_eq!(
            parse(&headers(&["md5=:mJPaBpaGfBv3ByHWMIDmeg==:, sha=:AAAA:"])).map(|_| ()),
            Err(Reject::MalformedHeader {
                header: HEADER,
                reason: "must hold a sha-256 or sha-512 digest (RFC 9530)"
            })
        );
    }

    #[test]
    fn malformed_values_are_refused_with_the_header_named() {
        for value in [
            "sha-256=:AAAA:",
            "sha-512=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
            "sha-256=\"X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=\"",
            "sha-256=(:AAAA:)",
            "sha-256=:not base64:",
            "SHA-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
            "",
        ] {
            match parse(&headers(&[value])) {
                Err(Reject::MalformedHeader { header, .. }) => assert_eq!(header, HEADER),
                other => panic!("{value:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn no_header_means_nothing_to_check() {
        assert!(matches!(parse(&RequestHeaders::default()), Ok(None)));
    }

    #[test]
    fn an_empty_body_has_its_own_digest() {
        let empty = header_value(b"", Algorithm::Sha256);
        assert_eq!(
            empty,
            "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"
        );
        assert_eq!(check(&[&empty], &[]), Ok(()));
        assert_eq!(check(&[HELLO_256], &[]), Err(Reject::ContentDigestMismatch));
    }
}
