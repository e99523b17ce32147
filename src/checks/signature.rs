//! Request signatures, the scheme clients already use:
//!
//! ```text
//! X-Request-Signature = lowercase hex( HMAC-SHA256( secret, body ‖ timestamp ‖ nonce ) )
//! ```
//!
//! over the raw body bytes exactly as received, then the `X-Request-Timestamp` and
//! `X-Request-Nonce` header values exactly as sent. Because the body comes first, the MAC is fed
//! chunk by chunk as the body streams in and finished with timestamp and nonce at end of stream.

use std::collections::HashSet;

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::config::{check_id, err, validate_header_name, ConfigError};
use crate::headers::RequestHeaders;
use crate::reject::{Reject, NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crate::secret::Secret;

type HmacSha256 = Hmac<Sha256>;

/// Nonce length bounds, in characters of the URL-safe alphabet `[A-Za-z0-9_-]`.
pub const NONCE_MIN: usize = 16;
pub const NONCE_MAX: usize = 128;

/// The signature headers of one request, parsed and well-formed but not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRequest {
    mac: [u8; 32],
    /// The timestamp header exactly as sent: it is part of the signed bytes.
    timestamp_raw: Vec<u8>,
    pub timestamp: u64,
    /// The nonce exactly as sent (URL-safe ASCII, so also valid UTF-8).
    pub nonce: String,
}

/// Proof that a signature verified. Only [`Verifier::finish`] makes one, so code that takes it
/// (recording the nonce) cannot run for a request whose signature was not checked.
// The private field (not `#[non_exhaustive]`) is the point: it keeps construction inside this
// module, not merely inside this crate.
#[allow(clippy::manual_non_exhaustive)]
#[derive(Debug)]
pub struct SignatureVerified {
    /// Index into the configured keys of the key that matched.
    pub key_index: usize,
    _private: (),
}

impl SignatureVerified {
    /// For the other schemes' verifiers (RFC 9421, webhook presets), once their MAC matched
    /// the key at `key_index` of the keys they were given.
    pub(in crate::checks) fn by(key_index: usize) -> Self {
        Self {
            key_index,
            _private: (),
        }
    }
}

/// Reads the three signature headers. Absent, duplicated or malformed headers are refused here,
/// before any body is read.
pub fn parse_headers(headers: &RequestHeaders) -> Result<SignedRequest, Reject> {
    let signature = required(headers, "x-request-signature", SIGNATURE_HEADER)?;
    let timestamp = required(headers, "x-request-timestamp", TIMESTAMP_HEADER)?;
    let nonce = required(headers, "x-request-nonce", NONCE_HEADER)?;
    Ok(SignedRequest {
        mac: parse_mac(signature)?,
        timestamp: parse_timestamp(timestamp)?,
        timestamp_raw: timestamp.to_vec(),
        nonce: parse_nonce(nonce)?,
    })
}

fn required<'a>(
    headers: &'a RequestHeaders,
    name: &str,
    display: &'static str,
) -> Result<&'a [u8], Reject> {
    match headers.unique(name) {
        Err(_) => Err(Reject::DuplicatedHeader { header: display }),
        Ok(None) => Err(Reject::MissingSignature { header: display }),
        Ok(Some([])) => Err(Reject::MissingSignature { header: display }),
        Ok(Some(v)) => Ok(v),
    }
}

fn parse_mac(value: &[u8]) -> Result<[u8; 32], Reject> {
    let malformed = |reason| Reject::MalformedHeader {
        header: SIGNATURE_HEADER,
        reason,
    };
    if value.len() != 64 {
        return Err(malformed("must be 64 hex characters (HMAC-SHA256)"));
    }
    hex_mac(value).ok_or(malformed("must be hexadecimal"))
}

/// An HMAC-SHA256 as 64 hex characters (either case), the form every hex scheme sends.
pub(crate) fn hex_mac(value: &[u8]) -> Option<[u8; 32]> {
    let mut mac = [0u8; 32];
    (value.len() == 64 && hex::decode_to_slice(value, &mut mac).is_ok()).then_some(mac)
}

/// Unix seconds as 1 to 12 plain decimal digits (12 reach the year 33658, far enough).
pub(crate) fn unix_seconds(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 12 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |acc, d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

fn parse_timestamp(value: &[u8]) -> Result<u64, Reject> {
    let malformed = |reason| Reject::MalformedHeader {
        header: TIMESTAMP_HEADER,
        reason,
    };
    let seconds = unix_seconds(value).ok_or(malformed("must be the unix time in whole seconds"))?;
    // Only the canonical form: the timestamp is signed as sent, right after the body, so with
    // leading zeros allowed a signature over body `B0` and timestamp `T` would also hold for body
    // `B` and timestamp `0T`.
    if value.len() > 1 && value.first() == Some(&b'0') {
        return Err(malformed(
            "must be the unix time in whole seconds, without leading zeros",
        ));
    }
    Ok(seconds)
}

fn parse_nonce(value: &[u8]) -> Result<String, Reject> {
    let malformed = |reason| Reject::MalformedHeader {
        header: NONCE_HEADER,
        reason,
    };
    if value.len() < NONCE_MIN || value.len() > NONCE_MAX {
        return Err(malformed(
            "must be 16 to 128 characters long (letters, digits, '-' and '_')",
        ));
    }
    if !value
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
    {
        return Err(malformed(
            "may only contain letters, digits, '-' and '_' (URL-safe base64 or a UUID)",
        ));
    }
    // Checked ASCII above, so this conversion cannot fail; map the error anyway rather than unwrap.
    String::from_utf8(value.to_vec()).map_err(|_| malformed("must be ASCII"))
}

/// Refuses a timestamp further than `window` seconds from `now`, in either direction.
pub fn check_window(timestamp: u64, now: u64, window: u64) -> Result<(), Reject> {
    check_window_of(timestamp, now, window, TIMESTAMP_HEADER)
}

/// [`check_window`] for another scheme's timestamp, named `what` in the detail.
pub fn check_window_of(
    timestamp: u64,
    now: u64,
    window: u64,
    what: &'static str,
) -> Result<(), Reject> {
    let skew = i128::from(timestamp) - i128::from(now);
    if skew.unsigned_abs() > u128::from(window) {
        let skew = i64::try_from(skew).unwrap_or(if skew < 0 { i64::MIN } else { i64::MAX });
        return Err(Reject::TimestampOutOfWindow { skew, window, what });
    }
    Ok(())
}

/// One active signing secret.
#[derive(Debug, Clone)]
pub struct SigningKey {
    pub id: String,
    pub secret: Secret,
}

/// The signing secrets as keyed HMAC states, made once per configuration. Each request clones
/// them instead of hashing the key pads again (two SHA-256 blocks per secret per request).
#[derive(Clone)]
pub struct Keyring {
    macs: Vec<HmacSha256>,
}

impl Keyring {
    pub fn new(keys: &[SigningKey]) -> Self {
        let macs = keys
            .iter()
            // HMAC accepts keys of any length, so this never fails; keys that somehow did would
            // simply never match (fail closed).
            .filter_map(|k| HmacSha256::new_from_slice(k.secret.expose()).ok())
            .collect();
        Self { macs }
    }
}

impl std::fmt::Debug for Keyring {
    /// Keyed states are as secret as the keys: only their number is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring({} secrets)", self.macs.len())
    }
}

/// Incremental verification against every active key (several during a rotation).
#[derive(Clone)]
pub struct Verifier {
    macs: Vec<HmacSha256>,
    body_len: u64,
}

impl Verifier {
    pub fn new(keyring: &Keyring) -> Self {
        Self {
            macs: keyring.macs.clone(),
            body_len: 0,
        }
    }

    /// A verifier whose MACs start with `prefix` (a webhook preset's `"{t}."`, say), which
    /// does not count as body.
    pub fn with_prefix(keyring: &Keyring, prefix: &[u8]) -> Self {
        let mut verifier = Self::new(keyring);
        for mac in &mut verifier.macs {
            mac.update(prefix);
        }
        verifier
    }

    /// Feeds the next body bytes.
    pub fn update(&mut self, chunk: &[u8]) {
        self.body_len += chunk.len() as u64;
        for mac in &mut self.macs {
            mac.update(chunk);
        }
    }

    pub fn body_len(&self) -> u64 {
        self.body_len
    }

    /// Finishes with timestamp ‖ nonce and compares in constant time against each key.
    pub fn finish(self, request: &SignedRequest) -> Result<SignatureVerified, Reject> {
        let mut matched = None;
        for (index, mut mac) in self.macs.into_iter().enumerate() {
            mac.update(&request.timestamp_raw);
            mac.update(request.nonce.as_bytes());
            // verify_slice compares in constant time. Every key is tried, so timing does not
            // reveal which key matched either.
            if mac.verify_slice(&request.mac).is_ok() && matched.is_none() {
                matched = Some(index);
            }
        }
        matched
            .map(|key_index| SignatureVerified {
                key_index,
                _private: (),
            })
            .ok_or(Reject::InvalidSignature)
    }
}

impl Verifier {
    /// Finishes with `suffix` and compares, in constant time, every key's MAC with every
    /// candidate the request sent (a provider may send several, one per active secret). `wrong`
    /// is the rejection when none matches. With the proof comes the message's MAC under the
    /// first key, whichever key matched: what a preset without a delivery id deduplicates on.
    /// (The MAC that matched would not do: a sender signing with two secrets during a rotation
    /// sends two, and a copy with only the second would be a new claim.)
    pub fn finish_any(
        self,
        suffix: &[u8],
        candidates: &[Vec<u8>],
        wrong: Reject,
    ) -> Result<(SignatureVerified, Vec<u8>), Reject> {
        let mut matched = None;
        let mut fingerprint = Vec::new();
        for (index, mut mac) in self.macs.into_iter().enumerate() {
            mac.update(suffix);
            let expected = mac.finalize().into_bytes();
            if index == 0 {
                fingerprint = expected.to_vec();
            }
            for candidate in candidates {
                // Every pair is compared, so timing does not tell which matched.
                let same: bool =
                    subtle::ConstantTimeEq::ct_eq(&expected[..], &candidate[..]).into();
                if same && matched.is_none() {
                    matched = Some(index);
                }
            }
        }
        matched
            .map(|index| (SignatureVerified::by(index), fingerprint))
            .ok_or(wrong)
    }
}

/// The signature a client sends: used by the CLI and tests, never by the filter's request path.
pub fn sign(secret: &[u8], body: &[u8], timestamp: &str, nonce: &str) -> String {
    // HMAC takes keys of any length.
    let mut mac = match HmacSha256::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    mac.update(timestamp.as_bytes());
    mac.update(nonce.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

// ---------------------------------------------------------------------------------------------
// Configuration: the `signature` section, and its compile step.

/// Shortest HMAC secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 32;
/// At most this many secrets are active at once (each one costs an HMAC pass over the body).
pub const MAX_SECRETS: usize = 8;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSignature {
    /// Active secrets, tried in order. Several at once allow rotation without downtime.
    #[serde(default)]
    pub secrets: Vec<RawSecret>,
    /// Allowed distance between `X-Request-Timestamp` and Envoy's clock, in seconds (default 300).
    #[serde(default = "default_window")]
    pub window_seconds: u64,
    /// Request header in which edge-warden tells the upstream which secret matched. Any copy the
    /// client sends is removed first.
    #[serde(default = "default_key_id_header")]
    pub key_id_header: String,
}

impl Default for RawSignature {
    fn default() -> Self {
        Self {
            secrets: Vec::new(),
            window_seconds: default_window(),
            key_id_header: default_key_id_header(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecret {
    /// Public name of the secret; sent upstream in `key_id_header` when it matches.
    pub id: String,
    /// Environment variable holding the secret. It must be listed in Envoy's
    /// `vm_config.environment_variables.host_env_keys`.
    pub env: String,
    /// How the variable holds the secret: `raw` (default: its bytes are the key), `base64`
    /// (standard alphabet, padded or not) or `hex`, for secrets that are random bytes.
    #[serde(default)]
    pub encoding: Encoding,
}

/// How an environment variable holds a secret.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Raw,
    Base64,
    Hex,
}

impl Encoding {
    fn name(self) -> &'static str {
        match self {
            Encoding::Raw => "raw",
            Encoding::Base64 => "base64",
            Encoding::Hex => "hex",
        }
    }

    /// The key bytes; `None` when the value is not in this encoding.
    pub(crate) fn decode(self, value: &str) -> Option<Vec<u8>> {
        use base64::Engine as _;
        match self {
            Encoding::Raw => Some(value.as_bytes().to_vec()),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(value.trim().trim_end_matches('='))
                .ok(),
            Encoding::Hex => hex::decode(value.trim()).ok(),
        }
    }
}

/// A policy's `signature`: `true` (the reference scheme), `false` (none), or an object naming
/// a scheme and its settings: `{"scheme": "rfc9421", ...}`, `{"scheme": "stripe", ...}`.
#[derive(Debug)]
pub enum RawPolicySignature {
    Flag(bool),
    Scheme(RawScheme),
}

impl Default for RawPolicySignature {
    /// Fail closed: a policy that says nothing requires the reference scheme.
    fn default() -> Self {
        RawPolicySignature::Flag(true)
    }
}

impl<'de> Deserialize<'de> for RawPolicySignature {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawPolicySignature;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "true, false, or an object with a `scheme` (reference, rfc9421, stripe, \
                     github, slack, standard_webhooks)",
                )
            }
            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(RawPolicySignature::Flag(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                RawScheme::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawPolicySignature::Scheme)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// The signature schemes a policy can require.
#[derive(Debug, Deserialize)]
#[serde(tag = "scheme", rename_all = "snake_case")]
pub enum RawScheme {
    /// `X-Request-Signature` over body ‖ timestamp ‖ nonce (the same as `true`).
    Reference(RawReference),
    /// RFC 9421 HTTP Message Signatures, hmac-sha256, keys from `signature.secrets` by `keyid`.
    Rfc9421(crate::checks::rfc9421::RawRfc9421),
    Stripe(crate::checks::webhook::RawWebhook),
    Github(crate::checks::webhook::RawWebhook),
    Slack(crate::checks::webhook::RawWebhook),
    StandardWebhooks(crate::checks::webhook::RawWebhook),
}

/// `{"scheme": "reference"}` takes no settings: they are the top-level `signature` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReference {}

/// The scheme a policy's requests are verified with.
#[derive(Debug, Clone)]
pub enum Scheme {
    /// `X-Request-*`, with the top-level secrets and window.
    Reference,
    /// RFC 9421, with the top-level secrets (selected by `keyid`).
    Rfc9421(crate::checks::rfc9421::Rfc9421Settings),
    /// A webhook preset, with its own secrets.
    Webhook(Box<crate::checks::webhook::WebhookSettings>),
}

impl Scheme {
    /// Whether the scheme verifies with the top-level `signature.secrets`.
    pub fn uses_shared_secrets(&self) -> bool {
        matches!(self, Scheme::Reference | Scheme::Rfc9421(_))
    }
}

/// Compiles a policy's `signature` at `field`: `None` when the policy requires none.
pub(crate) fn compile_policy(
    raw: &RawPolicySignature,
    field: &str,
    window: u64,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<Option<Scheme>, ConfigError> {
    use crate::checks::webhook::{self, Preset};
    let webhook = |preset, raw| {
        webhook::compile(preset, raw, field, env).map(|w| Some(Scheme::Webhook(Box::new(w))))
    };
    match raw {
        RawPolicySignature::Flag(false) => Ok(None),
        RawPolicySignature::Flag(true) | RawPolicySignature::Scheme(RawScheme::Reference(_)) => {
            Ok(Some(Scheme::Reference))
        }
        RawPolicySignature::Scheme(RawScheme::Rfc9421(r)) => Ok(Some(Scheme::Rfc9421(
            crate::checks::rfc9421::compile(r, field, window, warnings)?,
        ))),
        RawPolicySignature::Scheme(RawScheme::Stripe(w)) => webhook(Preset::Stripe, w),
        RawPolicySignature::Scheme(RawScheme::Github(w)) => webhook(Preset::Github, w),
        RawPolicySignature::Scheme(RawScheme::Slack(w)) => webhook(Preset::Slack, w),
        RawPolicySignature::Scheme(RawScheme::StandardWebhooks(w)) => {
            webhook(Preset::StandardWebhooks, w)
        }
    }
}

fn default_window() -> u64 {
    300
}
fn default_key_id_header() -> String {
    "x-edge-warden-key-id".to_string()
}

/// Checks the window and the header name of the section at `field` (`signature`). The secrets
/// are resolved separately, by [`compile_secrets`], once every plain setting has been checked.
pub(crate) fn check_settings(raw: &RawSignature, field: &str) -> Result<(), ConfigError> {
    if !(1..=3600).contains(&raw.window_seconds) {
        return Err(err(
            format!("{field}.window_seconds"),
            format!(
                "must be between 1 and 3600 seconds, got {}",
                raw.window_seconds
            ),
        ));
    }
    validate_header_name(&format!("{field}.key_id_header"), &raw.key_id_header)
}

/// Reads the secrets listed at `field` (`signature.secrets`) from the environment; each must
/// be at least `min_len` bytes once decoded.
pub(crate) fn compile_secrets(
    raw: &[RawSecret],
    field: &str,
    env: &dyn Fn(&str) -> Option<String>,
    min_len: usize,
) -> Result<Vec<SigningKey>, ConfigError> {
    if raw.len() > MAX_SECRETS {
        return Err(err(
            field,
            format!(
                "at most {MAX_SECRETS} secrets may be active at once, got {}",
                raw.len()
            ),
        ));
    }
    let mut ids = HashSet::new();
    let mut keys = Vec::with_capacity(raw.len());
    for (i, s) in raw.iter().enumerate() {
        let at = |f: &str| format!("{field}[{i}].{f}");
        check_id(&mut ids, &s.id, at("id"), "secret")?;
        if s.env.is_empty()
            || !s
                .env
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(err(at("env"), "must be an environment variable name"));
        }
        // Never put the value in an error: only its name and length.
        let value = env(&s.env).ok_or_else(|| {
            err(
                at("env"),
                format!(
                    "environment variable {} is not set or not visible to the VM (list it in \
                     vm_config.environment_variables.host_env_keys)",
                    s.env
                ),
            )
        })?;
        let value = s.encoding.decode(&value).ok_or_else(|| {
            err(
                at("encoding"),
                format!("the value of {} is not {}", s.env, s.encoding.name()),
            )
        })?;
        if value.len() < min_len {
            return Err(err(
                at("env"),
                format!(
                    "the secret in {} is {} bytes; at least {min_len} are required",
                    s.env,
                    value.len()
                ),
            ));
        }
        keys.push(SigningKey {
            id: s.id.clone(),
            secret: Secret::new(value),
        });
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NONCE: &str = "nonce-0123456789abcdef";

    fn key(id: &str, secret: &[u8]) -> SigningKey {
        SigningKey {
            id: id.to_string(),
            secret: Secret::new(secret.to_vec()),
        }
    }

    fn headers(sig: &str, ts: &str, nonce: &str) -> RequestHeaders {
        RequestHeaders::new(vec![
            ("x-request-signature".into(), sig.as_bytes().to_vec()),
            ("x-request-timestamp".into(), ts.as_bytes().to_vec()),
            ("x-request-nonce".into(), nonce.as_bytes().to_vec()),
        ])
    }

    fn verify(keys: &[SigningKey], body: &[u8], h: &RequestHeaders) -> Result<usize, Reject> {
        let req = parse_headers(h)?;
        let mut v = Verifier::new(&Keyring::new(keys));
        v.update(body);
        v.finish(&req).map(|p| p.key_index)
    }

    #[test]
    fn matches_the_reference_python_formula() {
        // hmac.new(b"0123456789abcdef0123456789abcdef", b'{"a":1}' + b"1700000000" +
        //          b"nonce-0123456789abcdef", hashlib.sha256).hexdigest()
        let sig = sign(SECRET, br#"{"a":1}"#, "1700000000", NONCE);
        assert_eq!(
            sig,
            "311248377f8ce8244ad35a733156a188252465510c1c49360a7b295e4b82ba80"
        );
        let h = headers(&sig, "1700000000", NONCE);
        assert_eq!(verify(&[key("k", SECRET)], br#"{"a":1}"#, &h), Ok(0));
    }

    #[test]
    fn body_fed_in_chunks_verifies_like_the_whole_body() {
        let body: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let sig = sign(SECRET, &body, "1700000000", NONCE);
        let req = parse_headers(&headers(&sig, "1700000000", NONCE)).unwrap();
        let mut v = Verifier::new(&Keyring::new(&[key("k", SECRET)]));
        for chunk in body.chunks(7) {
            v.update(chunk);
        }
        assert_eq!(v.body_len(), 10_000);
        assert!(v.finish(&req).is_ok());
    }

    #[test]
    fn any_one_byte_change_fails_verification() {
        let body = b"hello world, this is the body".to_vec();
        let sig = sign(SECRET, &body, "1700000000", NONCE);
        let keys = [key("k", SECRET)];
        for i in 0..body.len() {
            let mut tampered = body.clone();
            tampered[i] ^= 0x01;
            let h = headers(&sig, "1700000000", NONCE);
            assert_eq!(verify(&keys, &tampered, &h), Err(Reject::InvalidSignature));
        }
        for i in 0..64 {
            let mut s = sig.clone().into_bytes();
            s[i] = if s[i] == b'0' { b'1' } else { b'0' };
            let h = headers(std::str::from_utf8(&s).unwrap(), "1700000000", NONCE);
            assert_eq!(verify(&keys, &body, &h), Err(Reject::InvalidSignature));
        }
        let h = headers(&sig, "1700000001", NONCE);
        assert_eq!(verify(&keys, &body, &h), Err(Reject::InvalidSignature));
        let h = headers(&sig, "1700000000", "nonce-0123456789abcdeF");
        assert_eq!(verify(&keys, &body, &h), Err(Reject::InvalidSignature));
    }

    #[test]
    fn rotation_reports_which_key_matched() {
        let old = b"old-secret-old-secret-old-secret-old".as_slice();
        let new = b"new-secret-new-secret-new-secret-new".as_slice();
        let keys = [key("new", new), key("old", old)];
        let sig = sign(old, b"", "1700000000", NONCE);
        assert_eq!(
            verify(&keys, b"", &headers(&sig, "1700000000", NONCE)),
            Ok(1)
        );
        let sig = sign(new, b"", "1700000000", NONCE);
        assert_eq!(
            verify(&keys, b"", &headers(&sig, "1700000000", NONCE)),
            Ok(0)
        );
        let sig = sign(
            b"another-secret-another-secret-12",
            b"",
            "1700000000",
            NONCE,
        );
        assert_eq!(
            verify(&keys, b"", &headers(&sig, "1700000000", NONCE)),
            Err(Reject::InvalidSignature)
        );
    }

    #[test]
    fn malformed_headers_are_refused_with_the_header_named() {
        let good_sig = "a".repeat(64);
        let cases: Vec<(RequestHeaders, &str)> = vec![
            (headers("zz", "1700000000", NONCE), SIGNATURE_HEADER),
            (
                headers(&"g".repeat(64), "1700000000", NONCE),
                SIGNATURE_HEADER,
            ),
            (
                headers(&"a".repeat(63), "1700000000", NONCE),
                SIGNATURE_HEADER,
            ),
            (headers(&good_sig, "17e8", NONCE), TIMESTAMP_HEADER),
            (headers(&good_sig, "-1", NONCE), TIMESTAMP_HEADER),
            (headers(&good_sig, "1700000000.5", NONCE), TIMESTAMP_HEADER),
            (headers(&good_sig, "01700000000", NONCE), TIMESTAMP_HEADER),
            (headers(&good_sig, "00", NONCE), TIMESTAMP_HEADER),
            (
                headers(&good_sig, "99999999999999999999", NONCE),
                TIMESTAMP_HEADER,
            ),
            (headers(&good_sig, "1700000000", "short"), NONCE_HEADER),
            (
                headers(&good_sig, "1700000000", &"n".repeat(129)),
                NONCE_HEADER,
            ),
            (
                headers(&good_sig, "1700000000", "nonce with spaces!!"),
                NONCE_HEADER,
            ),
            (
                headers(&good_sig, "1700000000", "nonce/with+slash=="),
                NONCE_HEADER,
            ),
        ];
        for (h, header) in cases {
            match parse_headers(&h) {
                Err(Reject::MalformedHeader { header: got, .. }) => assert_eq!(got, header),
                other => panic!("expected malformed {header}, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_signature_cannot_move_a_body_digit_into_the_timestamp() {
        // Signed: body `amount=10` ‖ `1700000000`. Replayed as body `amount=1` with timestamp
        // `01700000000`: the same signed bytes, but not the canonical timestamp.
        let sig = sign(SECRET, b"amount=10", "1700000000", NONCE);
        let keys = [key("k", SECRET)];
        assert_eq!(
            sign(SECRET, b"amount=1", "01700000000", NONCE),
            sig,
            "the forgery this test is about"
        );
        let forged = headers(&sig, "01700000000", NONCE);
        assert!(matches!(
            verify(&keys, b"amount=1", &forged),
            Err(Reject::MalformedHeader {
                header: TIMESTAMP_HEADER,
                ..
            })
        ));
        assert!(parse_headers(&headers(&sig, "0", NONCE)).is_ok());
    }

    #[test]
    fn nonce_length_bounds_are_inclusive() {
        let sig = "a".repeat(64);
        assert!(parse_headers(&headers(&sig, "1", &"n".repeat(16))).is_ok());
        assert!(parse_headers(&headers(&sig, "1", &"n".repeat(128))).is_ok());
        assert!(parse_headers(&headers(&sig, "1", &"n".repeat(15))).is_err());
    }

    #[test]
    fn missing_and_duplicated_headers_are_named() {
        let h = RequestHeaders::new(vec![("x-request-timestamp".into(), b"1".to_vec())]);
        assert_eq!(
            parse_headers(&h),
            Err(Reject::MissingSignature {
                header: SIGNATURE_HEADER
            })
        );
        let mut pairs = vec![
            ("x-request-signature".into(), b"a".repeat(64)),
            ("x-request-timestamp".into(), b"1".to_vec()),
            ("x-request-nonce".into(), NONCE.as_bytes().to_vec()),
        ];
        pairs.push(("x-request-nonce".into(), NONCE.as_bytes().to_vec()));
        assert_eq!(
            parse_headers(&RequestHeaders::new(pairs)),
            Err(Reject::DuplicatedHeader {
                header: NONCE_HEADER
            })
        );
    }

    #[test]
    fn window_boundary_is_inclusive_on_both_sides() {
        let now = 1_700_000_000;
        assert!(check_window(now - 300, now, 300).is_ok());
        assert!(check_window(now + 300, now, 300).is_ok());
        assert_eq!(
            check_window(now - 301, now, 300),
            Err(Reject::TimestampOutOfWindow {
                skew: -301,
                window: 300,
                what: TIMESTAMP_HEADER
            })
        );
        assert_eq!(
            check_window(now + 301, now, 300),
            Err(Reject::TimestampOutOfWindow {
                skew: 301,
                window: 300,
                what: TIMESTAMP_HEADER
            })
        );
        assert!(check_window(0, now, 300).is_err());
    }

    // The `signature` section, compiled through the whole configuration so the paths are the ones
    // an operator sees.

    fn env(name: &str) -> Option<String> {
        let secret = std::str::from_utf8(SECRET).unwrap();
        match name {
            "HMAC_SHARED_SECRET" => Some(secret.to_string()),
            "OLD_SECRET" => Some(format!("old-{secret}")),
            "SHORT_SECRET" => Some("too-short".to_string()),
            _ => None,
        }
    }

    fn load(json: &str) -> Result<crate::config::Config, ConfigError> {
        crate::config::Config::from_json(json.as_bytes(), &env)
    }

    #[test]
    fn invalid_signature_settings_name_the_field() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"signature": {"secrets": [{"id": "k", "env": "MISSING"}]}, "policies": [{"name": "a"}]}"#,
                "signature.secrets[0].env",
            ),
            (
                r#"{"signature": {"secrets": [{"id": "k", "env": "SHORT_SECRET"}]}, "policies": [{"name": "a"}]}"#,
                "signature.secrets[0].env",
            ),
            (
                r#"{"signature": {"secrets": [{"id": "k", "env": "HMAC_SHARED_SECRET"}, {"id": "k", "env": "OLD_SECRET"}]}, "policies": [{"name": "a"}]}"#,
                "signature.secrets[1].id",
            ),
            (
                r#"{"signature": {"window_seconds": 0}, "policies": [{"name": "a", "signature": false}]}"#,
                "signature.window_seconds",
            ),
            (
                r#"{"signature": {"key_id_header": "X-Key"}, "policies": [{"name": "a", "signature": false}]}"#,
                "signature.key_id_header",
            ),
        ];
        for (json, field) in cases {
            let e = load(json).expect_err(json);
            assert_eq!(&e.field, field, "{json}: {e}");
            assert!(e.to_string().contains(field), "{e}");
        }
    }

    #[test]
    fn a_short_secret_error_gives_its_length_not_its_value() {
        let e = load(
            r#"{"signature": {"secrets": [{"id": "k", "env": "SHORT_SECRET"}]}, "policies": [{"name": "a"}]}"#,
        )
        .unwrap_err();
        assert!(e.reason.contains("9 bytes"), "{e}");
        assert!(!e.to_string().contains("too-short"));
    }
}
