//! API keys. Configuration holds only the SHA-256 of each key, so a leaked configuration leaks
//! no credential. A presented key is hashed once and compared in constant time against every
//! configured hash (no early exit), so timing reveals neither which key nor how much matched.

use std::collections::HashSet;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{check_id, default_true, err, validate_header_name, ConfigError};
use crate::headers::RequestHeaders;
use crate::reject::Reject;

/// Roles a key can carry. `admin` passes wherever `client` does only if the policy lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Client,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Client => "client",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiKey {
    pub id: String,
    pub sha256: [u8; 32],
    pub role: Role,
    /// Unix seconds; the key is refused before this moment.
    pub not_before: Option<u64>,
    /// Unix seconds; the key is refused from this moment on.
    pub expires_at: Option<u64>,
}

/// Where clients put the key.
#[derive(Debug, Clone)]
pub struct KeySource {
    /// Lowercase header name (default `x-api-key`).
    pub header: String,
    /// Also accept `Authorization: Bearer <key>`.
    pub bearer: bool,
}

/// A key that matched: its index, for identity headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authenticated {
    pub index: usize,
}

/// Which header carried the key (so it can be removed before the request goes upstream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented<'a> {
    pub key: &'a [u8],
    pub header: String,
}

impl KeySource {
    /// Finds the presented key. Several copies, or a key in both places, are malformed.
    pub fn find<'a>(&self, headers: &'a RequestHeaders) -> Result<Option<Presented<'a>>, Reject> {
        let malformed = Reject::MalformedHeader {
            header: "API key",
            reason: "must be sent once, in one header",
        };
        let direct = headers
            .unique(&self.header)
            .map_err(|_| malformed.clone())?;
        let bearer = if self.bearer {
            match headers
                .unique("authorization")
                .map_err(|_| malformed.clone())?
            {
                Some(v) if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") => Some(&v[7..]),
                _ => None,
            }
        } else {
            None
        };
        match (direct, bearer) {
            (Some(_), Some(_)) => Err(malformed),
            (Some(k), None) => Ok(Some(Presented {
                key: k,
                header: self.header.clone(),
            })),
            (None, Some(k)) => Ok(Some(Presented {
                key: k,
                header: "authorization".to_string(),
            })),
            (None, None) => Ok(None),
        }
    }
}

/// Authenticates a presented key against the configured ones at time `now`.
pub fn authenticate(keys: &[ApiKey], presented: &[u8], now: u64) -> Result<Authenticated, Reject> {
    let digest = Sha256::digest(presented.trim_ascii());
    let mut found: Option<usize> = None;
    for (index, key) in keys.iter().enumerate() {
        // Every entry is compared; the result is combined without branching on earlier matches.
        let equal: bool = key.sha256.ct_eq(digest.as_slice()).into();
        if equal && found.is_none() {
            found = Some(index);
        }
    }
    let index = found.ok_or(Reject::InvalidApiKey)?;
    let key = &keys[index];
    if key.not_before.is_some_and(|t| now < t) {
        return Err(Reject::ApiKeyNotYetValid);
    }
    if key.expires_at.is_some_and(|t| now >= t) {
        return Err(Reject::ExpiredApiKey);
    }
    Ok(Authenticated { index })
}

/// Whether the key's role may use the route; an empty list admits every role.
pub fn authorize(roles: &[Role], key: &ApiKey) -> Result<(), Reject> {
    if roles.is_empty() || roles.contains(&key.role) {
        Ok(())
    } else {
        Err(Reject::InsufficientRole)
    }
}

/// The hash a configuration stores for `key`.
pub fn hash_key(key: &str) -> String {
    // The same trimming as `authenticate` (ASCII whitespace only): with `str::trim`, a key
    // ending in a Unicode space would hash differently here and never authenticate.
    hex::encode(Sha256::digest(key.as_bytes().trim_ascii()))
}

// ---------------------------------------------------------------------------------------------
// Configuration: the `api_keys` section and a policy's `api_key` section, and their compile steps.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKeys {
    /// Request header carrying the key (default `x-api-key`).
    #[serde(default = "default_api_key_header")]
    pub header: String,
    /// Also accept `Authorization: Bearer <key>`.
    #[serde(default)]
    pub allow_bearer: bool,
    /// Remove the raw key before the request goes upstream (default true).
    #[serde(default = "default_true")]
    pub strip: bool,
    /// The keys accepted, each by its SHA-256 only.
    #[serde(default)]
    pub keys: Vec<RawApiKey>,
}

impl Default for RawApiKeys {
    fn default() -> Self {
        Self {
            header: default_api_key_header(),
            allow_bearer: false,
            strip: true,
            keys: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    /// Public name of the key: logged and sent upstream, never secret.
    pub id: String,
    /// Lowercase hex SHA-256 of the key (`warden keygen` / `warden hash-key` print it).
    pub sha256: String,
    /// `admin` or `client`.
    pub role: Role,
    /// RFC 3339 time before which the key is refused.
    #[serde(default)]
    pub not_before: Option<String>,
    /// RFC 3339 time from which the key is refused.
    #[serde(default)]
    pub expires_at: Option<String>,
}

fn default_api_key_header() -> String {
    "x-api-key".to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicyApiKey {
    /// Whether a valid key is required (default true).
    #[serde(default = "default_true")]
    pub required: bool,
    /// Roles that may pass; empty admits every role.
    #[serde(default)]
    pub roles: Vec<Role>,
}

#[derive(Debug, Clone)]
pub struct PolicyApiKey {
    pub required: bool,
    pub roles: Vec<Role>,
}

/// Compiles the `api_keys` section at `field` (`api_keys`): the keys, then the header name.
pub(crate) fn compile_api_keys(raw: &RawApiKeys, field: &str) -> Result<Vec<ApiKey>, ConfigError> {
    let mut ids = HashSet::new();
    let mut hashes = HashSet::new();
    let mut keys = Vec::with_capacity(raw.keys.len());
    for (i, k) in raw.keys.iter().enumerate() {
        let at = |f: &str| format!("{field}.keys[{i}].{f}");
        check_id(&mut ids, &k.id, at("id"), "key")?;
        let mut sha256 = [0u8; 32];
        if k.sha256.len() != 64 || hex::decode_to_slice(&k.sha256, &mut sha256).is_err() {
            return Err(err(
                at("sha256"),
                "must be the 64-character hex SHA-256 of the key (see `warden hash-key`)",
            ));
        }
        if !hashes.insert(sha256) {
            return Err(err(at("sha256"), "the same key is listed twice"));
        }
        let time = |field: &str, value: &Option<String>| -> Result<Option<u64>, ConfigError> {
            value
                .as_deref()
                .map(|v| {
                    humantime::parse_rfc3339(v)
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_secs())
                        .ok_or_else(|| {
                            err(
                                at(field),
                                format!(
                                    "`{v}` is not an RFC 3339 time such as 2026-12-01T00:00:00Z"
                                ),
                            )
                        })
                })
                .transpose()
        };
        let not_before = time("not_before", &k.not_before)?;
        let expires_at = time("expires_at", &k.expires_at)?;
        if let (Some(a), Some(b)) = (not_before, expires_at) {
            if a >= b {
                return Err(err(at("expires_at"), "must be later than not_before"));
            }
        }
        keys.push(ApiKey {
            id: k.id.clone(),
            sha256,
            role: k.role,
            not_before,
            expires_at,
        });
    }
    validate_header_name(&format!("{field}.header"), &raw.header)?;
    Ok(keys)
}

/// Compiles a policy's `api_key` section. Whether any key is configured for it to require is
/// checked by `Config::compile`, which sees both sections.
pub(crate) fn compile_policy_api_key(raw: &RawPolicyApiKey) -> PolicyApiKey {
    PolicyApiKey {
        required: raw.required,
        roles: raw.roles.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, secret: &str, role: Role) -> ApiKey {
        let mut sha256 = [0u8; 32];
        hex::decode_to_slice(hash_key(secret), &mut sha256).unwrap();
        ApiKey {
            id: id.into(),
            sha256,
            role,
            not_before: None,
            expires_at: None,
        }
    }

    #[test]
    fn the_matching_key_is_found_and_others_refused() {
        let keys = [
            key("a", "ew_aaaa", Role::Client),
            key("b", "ew_bbbb", Role::Admin),
        ];
        assert_eq!(
            authenticate(&keys, b"ew_bbbb", 0),
            Ok(Authenticated { index: 1 })
        );
        assert_eq!(
            authenticate(&keys, b"ew_cccc", 0),
            Err(Reject::InvalidApiKey)
        );
        assert_eq!(authenticate(&keys, b"", 0), Err(Reject::InvalidApiKey));
    }

    #[test]
    fn validity_window_is_enforced_at_both_ends() {
        let mut k = key("a", "ew_aaaa", Role::Client);
        k.not_before = Some(100);
        k.expires_at = Some(200);
        let keys = [k];
        assert_eq!(
            authenticate(&keys, b"ew_aaaa", 99),
            Err(Reject::ApiKeyNotYetValid)
        );
        assert!(authenticate(&keys, b"ew_aaaa", 100).is_ok());
        assert!(authenticate(&keys, b"ew_aaaa", 199).is_ok());
        assert_eq!(
            authenticate(&keys, b"ew_aaaa", 200),
            Err(Reject::ExpiredApiKey)
        );
    }

    #[test]
    fn roles_gate_routes() {
        let admin = key("b", "x", Role::Admin);
        let client = key("a", "y", Role::Client);
        assert!(authorize(&[], &client).is_ok());
        assert!(authorize(&[Role::Admin], &admin).is_ok());
        assert_eq!(
            authorize(&[Role::Admin], &client),
            Err(Reject::InsufficientRole)
        );
    }

    #[test]
    fn keys_are_found_in_the_header_or_as_a_bearer_token() {
        let source = KeySource {
            header: "x-api-key".into(),
            bearer: true,
        };
        let h = RequestHeaders::new(vec![("authorization".into(), b"Bearer ew_x".to_vec())]);
        assert_eq!(source.find(&h).unwrap().unwrap().key, b"ew_x");
        let h = RequestHeaders::new(vec![
            ("authorization".into(), b"Bearer ew_x".to_vec()),
            ("x-api-key".into(), b"ew_y".to_vec()),
        ]);
        assert!(source.find(&h).is_err());
        let h = RequestHeaders::new(vec![("authorization".into(), b"Basic abc".to_vec())]);
        assert_eq!(source.find(&h), Ok(None));
    }

    // The `api_keys` section, compiled through the whole configuration so the paths are the ones an
    // operator sees.

    // Every case goes through format! so the table reads alike, with or without placeholders.
    #[allow(clippy::useless_format)]
    #[test]
    fn a_key_hashed_for_the_config_authenticates_whatever_whitespace_surrounds_it() {
        // Found by fuzzing: hash_key trimmed Unicode whitespace, authenticate only ASCII.
        for presented in ["ew_key\u{b}", "ew_key\u{a0}", " ew_key\t", "ew_key"] {
            let k = key("k", presented, Role::Client);
            assert_eq!(
                authenticate(&[k], presented.as_bytes(), 0),
                Ok(Authenticated { index: 0 }),
                "{presented:?}"
            );
        }
    }

    #[test]
    // Every row of the table is a `format!`, also the one without arguments, so they read alike.
    #[allow(clippy::useless_format)]
    fn invalid_api_key_settings_name_the_field() {
        let hash = "a".repeat(64);
        let cases = [
            (
                format!(
                    r#"{{"api_keys": {{"keys": [{{"id": "k", "sha256": "abc", "role": "client"}}]}}, "policies": [{{"name": "a", "signature": false}}]}}"#
                ),
                "api_keys.keys[0].sha256",
            ),
            (
                format!(
                    r#"{{"api_keys": {{"keys": [{{"id": "k", "sha256": "{hash}", "role": "root"}}]}}, "policies": [{{"name": "a", "signature": false}}]}}"#
                ),
                "api_keys.keys[0].role",
            ),
            (
                format!(
                    r#"{{"api_keys": {{"keys": [{{"id": "k", "sha256": "{hash}", "role": "client", "expires_at": "next year"}}]}}, "policies": [{{"name": "a", "signature": false}}]}}"#
                ),
                "api_keys.keys[0].expires_at",
            ),
            (
                format!(
                    r#"{{"api_keys": {{"keys": [{{"id": "k", "sha256": "{hash}", "role": "client", "not_before": "2027-01-01T00:00:00Z", "expires_at": "2026-01-01T00:00:00Z"}}]}}, "policies": [{{"name": "a", "signature": false}}]}}"#
                ),
                "api_keys.keys[0].expires_at",
            ),
            (
                format!(
                    r#"{{"api_keys": {{"keys": [{{"id": "k", "sha256": "{hash}", "role": "client"}}, {{"id": "k", "sha256": "{}", "role": "client"}}]}}, "policies": [{{"name": "a", "signature": false}}]}}"#,
                    "b".repeat(64)
                ),
                "api_keys.keys[1].id",
            ),
        ];
        for (json, field) in &cases {
            let e = crate::config::Config::from_json(json.as_bytes(), &|_| None).expect_err(json);
            assert_eq!(&e.field, field, "{e}");
        }
    }
}
