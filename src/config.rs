//! The plugin configuration: the JSON a platform engineer writes in Envoy's `configuration` field,
//! and the compiled [`Config`] the filter runs on.
//!
//! `RawConfig` holds only what was typed (serde, unknown fields refused). [`Config::from_json`] is
//! the one way to build a `Config`: it parses, validates and resolves secrets, or fails with a
//! [`ConfigError`] naming the field. Each request then only looks policies up.
//!
//! Each concern owns its section: the raw serde type and the compile step sit beside its check
//! (`checks::signature`, `checks::cors`, ..., and `store` for the replay cache and the lockout),
//! and take the field path they are reached at, so their errors name the full path. This module
//! keeps the top level, the policies and their `match`, the checks that span sections (a policy
//! that requires a signature or a key when none is configured), and the helpers sections share.

use std::collections::HashSet;
use std::fmt;

use serde::Deserialize;

use crate::checks::api_key::{self, ApiKey, KeySource, PolicyApiKey, RawApiKeys, RawPolicyApiKey};
use crate::checks::cors::{self, Cors, RawCors};
use crate::checks::host::{self, HostPattern};
use crate::checks::ip::{self, IpRules, RawIp};
use crate::checks::response_headers::{self, Plan, RawSecurityHeaders};
use crate::checks::shape::{self, RawRequest, RequestShape};
use crate::checks::signature::{self, RawPolicySignature, RawSignature, Scheme, SigningKey};
use crate::checks::upload::{self, RawUpload, UploadPolicy};
use crate::events::{self, RawEvents};
use crate::idempotency::{self, PolicyIdempotency, RawIdempotencyStore, RawPolicyIdempotency};
use crate::remote::{self, RawRemoteState, RemoteState};
use crate::store::{self, LockoutSettings, RawLockout, RawReplay};

/// Default body limit for signed routes: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
/// Largest body limit a policy may set. Envoy buffers the whole body while it is verified.
pub const MAX_MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;

/// A configuration problem: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "invalid edge-warden configuration: {}", self.reason)
        } else {
            write!(
                f,
                "invalid edge-warden configuration: field `{}`: {}",
                self.field, self.reason
            )
        }
    }
}

impl std::error::Error for ConfigError {}

pub(crate) fn err(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        reason: reason.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// What the user writes.

/// The plugin configuration as written in Envoy's `configuration` field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Request-signature settings shared by every policy that requires a signature.
    #[serde(default)]
    pub signature: RawSignature,
    /// The nonce replay cache.
    #[serde(default)]
    pub replay: RawReplay,
    /// Body limit for policies that do not set their own, in bytes (default 1 MiB).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Security headers added to every response.
    #[serde(default)]
    pub security_headers: RawSecurityHeaders,
    /// API keys (hashes only) and where clients send them.
    #[serde(default)]
    pub api_keys: RawApiKeys,
    /// Brute-force lockout per client address.
    #[serde(default)]
    pub lockout: RawLockout,
    /// Fleet-wide replay and lockout state through the edge-warden-state service (absent: this
    /// Envoy's own memory only).
    #[serde(default)]
    pub remote_state: Option<RawRemoteState>,
    /// The table of idempotency keys shared by every policy that has an `idempotency` section.
    #[serde(default)]
    pub idempotency: RawIdempotencyStore,
    /// Headers in which edge-warden tells the upstream (and Envoy's rate limits) who called.
    #[serde(default)]
    pub identity: RawIdentity,
    /// Security events: flood control of identical ones.
    #[serde(default)]
    pub events: RawEvents,
    /// Ordered list of policies; the first whose `match` fits the request applies. A request
    /// that no policy matches is refused (`no_matching_policy`).
    pub policies: Vec<RawPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Name used in logs and metrics.
    pub name: String,
    /// Which requests this policy covers; an empty match covers every request.
    #[serde(rename = "match", default)]
    pub matcher: RawMatch,
    /// Whether requests must carry a valid signature, and in which scheme: `true` (default:
    /// fail closed) is the reference scheme, `false` none, an object names a scheme
    /// (`checks::signature::RawScheme`).
    #[serde(default)]
    pub signature: RawPolicySignature,
    /// Whether requests must carry a `Content-Digest` (RFC 9530, sha-256 or sha-512) that
    /// matches their body. Under an RFC 9421 scheme a Content-Digest that is sent is always
    /// checked.
    #[serde(default)]
    pub content_digest: bool,
    /// Body limit for this policy, in bytes; defaults to the top-level `max_body_bytes`.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// Cross-origin browser access; absent means no CORS headers and preflights refused.
    #[serde(default)]
    pub cors: Option<RawCors>,
    /// Allowed `Host` / `:authority` values; empty means any.
    #[serde(default)]
    pub trusted_hosts: Vec<String>,
    /// API key requirement for this policy; absent means no key is needed.
    #[serde(default)]
    pub api_key: Option<RawPolicyApiKey>,
    /// Client address allow and deny lists (CIDR or single addresses).
    #[serde(default)]
    pub ip: Option<RawIp>,
    /// Idempotency keys on this policy's requests; absent means keys are ignored.
    #[serde(default)]
    pub idempotency: Option<RawPolicyIdempotency>,
    /// File upload checks (names, extensions, declared types, magic numbers, sizes); absent
    /// means bodies are not inspected as uploads.
    #[serde(default)]
    pub upload: Option<RawUpload>,
    /// Request shape: allowed methods and content types, the streamed body limit, required
    /// headers (`checks::shape`).
    #[serde(default)]
    pub request: Option<RawRequest>,
    /// `enforce` (default): a failed check refuses the request. `report`: every check runs, a
    /// failed one is logged and counted with `"enforced": false`, and the request goes on with
    /// the codes in `x-edge-warden-would-reject`.
    #[serde(default)]
    pub mode: Mode,
}

/// What a policy does with a failed check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Refuse the request.
    #[default]
    Enforce,
    /// Log and count it, let the request go on, and tell the upstream.
    Report,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    /// The matched API key's id (default `x-edge-warden-api-key-id`).
    #[serde(default = "default_api_key_id_header")]
    pub api_key_id_header: String,
    /// The matched API key's role (default `x-edge-warden-role`).
    #[serde(default = "default_role_header")]
    pub role_header: String,
    /// Who the caller is, for rate-limit descriptors: `key:<id>` when an API key matched, else
    /// `ip:<address>` (default `x-edge-warden-client`).
    #[serde(default = "default_client_header")]
    pub client_header: String,
}

impl Default for RawIdentity {
    fn default() -> Self {
        Self {
            api_key_id_header: default_api_key_id_header(),
            role_header: default_role_header(),
            client_header: default_client_header(),
        }
    }
}

/// Checks the header names of the `identity` section at `field`.
fn check_identity(raw: &RawIdentity, field: &str) -> Result<(), ConfigError> {
    validate_header_name(
        &format!("{field}.api_key_id_header"),
        &raw.api_key_id_header,
    )?;
    validate_header_name(&format!("{field}.role_header"), &raw.role_header)?;
    validate_header_name(&format!("{field}.client_header"), &raw.client_header)
}

fn default_api_key_id_header() -> String {
    "x-edge-warden-api-key-id".to_string()
}
fn default_role_header() -> String {
    "x-edge-warden-role".to_string()
}
fn default_client_header() -> String {
    "x-edge-warden-client".to_string()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// Envoy route name (the `name` of a route in the route configuration).
    #[serde(default)]
    pub route: Option<String>,
    /// Path prefix, matched on whole segments: `/health` covers `/health` and `/health/x`, not
    /// `/healthz`. A prefix ending in `/` covers everything below it.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Exact path (query string ignored).
    #[serde(default)]
    pub path: Option<String>,
    /// Methods covered (uppercase); empty means all.
    #[serde(default)]
    pub methods: Vec<String>,
}

pub(crate) fn default_true() -> bool {
    true
}
fn default_max_body_bytes() -> u64 {
    DEFAULT_MAX_BODY_BYTES
}

// ---------------------------------------------------------------------------------------------
// What the filter runs on.

#[derive(Debug, Clone)]
pub struct Config {
    pub keys: Vec<SigningKey>,
    pub window_seconds: u64,
    pub key_id_header: String,
    pub replay_capacity: u32,
    pub policies: Vec<Policy>,
    /// Whether any policy matches on the Envoy route name (read only then: it is a host call).
    pub uses_route_names: bool,
    /// Response headers applied to every response.
    pub response_headers: Plan,
    /// Things that load but deserve the operator's attention; logged at load time.
    pub warnings: Vec<String>,
    pub api_keys: Vec<ApiKey>,
    pub key_source: KeySource,
    pub strip_api_key: bool,
    pub lockout: Option<LockoutSettings>,
    /// The fleet's shared state, asked after the local store.
    pub remote: Option<RemoteState>,
    /// Records of the local idempotency table, when some policy uses idempotency keys.
    pub idempotency_capacity: Option<u32>,
    pub api_key_id_header: String,
    pub role_header: String,
    pub client_header: String,
    /// Seconds during which identical security events from one client are counted instead of
    /// written.
    pub event_suppress_seconds: u64,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    matcher: Matcher,
    /// The scheme requests must be signed with; `None`: no signature.
    pub signature: Option<Scheme>,
    /// A matching `Content-Digest` is required.
    pub content_digest: bool,
    pub max_body_bytes: u64,
    pub cors: Option<Cors>,
    pub trusted_hosts: Vec<HostPattern>,
    pub api_key: Option<PolicyApiKey>,
    pub ip: IpRules,
    pub idempotency: Option<PolicyIdempotency>,
    pub upload: Option<UploadPolicy>,
    pub request: RequestShape,
    pub mode: Mode,
}

impl Policy {
    /// Whether the policy asks for a credential (and so is subject to the lockout).
    pub fn requires_credential(&self) -> bool {
        self.signature.is_some() || self.api_key.as_ref().is_some_and(|k| k.required)
    }

    /// The body limit that applies: the streamed `request.max_body_bytes`, and on a signed
    /// route also the buffered `max_body_bytes`; the smaller wins. `None`: no limit of ours.
    pub fn body_limit(&self) -> Option<u64> {
        let streamed = self.request.max_body_bytes;
        if self.signature.is_some() {
            Some(streamed.map_or(self.max_body_bytes, |s| s.min(self.max_body_bytes)))
        } else {
            streamed
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Matcher {
    route: Option<String>,
    path: Option<PathMatch>,
    methods: Vec<String>,
}

#[derive(Debug, Clone)]
enum PathMatch {
    Exact(String),
    Prefix(String),
}

impl Config {
    /// Parses and validates the plugin configuration. `env` looks up environment variables (the
    /// VM's, or the shell's for `warden check-config`).
    pub fn from_json(
        json: &[u8],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let raw = parse_raw(json)?;
        Self::compile(raw, env)
    }

    /// Validates a parsed configuration and resolves its secrets.
    pub fn compile(
        raw: RawConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        // The plain settings are checked before any secret is read from the environment: the
        // order decides which mistake is reported when a configuration holds several.
        let sig = &raw.signature;
        signature::check_settings(sig, "signature")?;
        check_body_limit("max_body_bytes", raw.max_body_bytes)?;
        let capacity = store::compile_replay(&raw.replay, "replay")?;

        let keys = signature::compile_secrets(
            &sig.secrets,
            "signature.secrets",
            env,
            signature::MIN_SECRET_LEN,
        )?;
        let api_keys = api_key::compile_api_keys(&raw.api_keys, "api_keys")?;
        check_identity(&raw.identity, "identity")?;
        let event_suppress_seconds = events::compile_events(&raw.events, "events")?;
        let lockout = store::compile_lockout(&raw.lockout, "lockout")?;
        let idempotency_capacity = idempotency::compile_store(&raw.idempotency, "idempotency")?;
        let remote = match &raw.remote_state {
            Some(r) => Some(remote::compile_remote_state(r, "remote_state")?),
            None => None,
        };

        if raw.policies.is_empty() {
            return Err(err("policies", "at least one policy is required"));
        }
        let mut warnings = Vec::new();
        let response_headers =
            response_headers::compile_security_headers(&raw.security_headers, "security_headers")?;
        let mut names = HashSet::new();
        let mut policies = Vec::with_capacity(raw.policies.len());
        for (i, p) in raw.policies.into_iter().enumerate() {
            let at = |f: &str| format!("policies[{i}].{f}");
            if p.name.trim().is_empty() {
                return Err(err(at("name"), "must not be empty"));
            }
            if !names.insert(p.name.clone()) {
                return Err(err(
                    at("name"),
                    format!("`{}` is used by an earlier policy", p.name),
                ));
            }
            let max_body_bytes = p.max_body_bytes.unwrap_or(raw.max_body_bytes);
            check_body_limit(&at("max_body_bytes"), max_body_bytes)?;
            let scheme = signature::compile_policy(
                &p.signature,
                &at("signature"),
                sig.window_seconds,
                env,
                &mut warnings,
            )?;
            if scheme.as_ref().is_some_and(Scheme::uses_shared_secrets) && keys.is_empty() {
                return Err(err(
                    "signature.secrets",
                    format!(
                        "policy `{}` requires signatures but no secret is configured",
                        p.name
                    ),
                ));
            }
            let cors = match &p.cors {
                Some(c) => Some(cors::compile_cors(
                    c,
                    &at("cors"),
                    env,
                    &p.name,
                    &mut warnings,
                )?),
                None => None,
            };
            let trusted_hosts =
                host::compile_trusted_hosts(&p.trusted_hosts, &at("trusted_hosts"))?;
            let api_key = p.api_key.as_ref().map(api_key::compile_policy_api_key);
            if api_key.as_ref().is_some_and(|k| k.required) && api_keys.is_empty() {
                return Err(err(
                    "api_keys.keys",
                    format!(
                        "policy `{}` requires an API key but no key is configured",
                        p.name
                    ),
                ));
            }
            let ip = match &p.ip {
                Some(raw_ip) => ip::compile_ip(raw_ip, &at("ip"))?,
                None => IpRules::default(),
            };
            let idempotency = match &p.idempotency {
                Some(i) => Some(idempotency::compile_policy(i, &at("idempotency"))?),
                None => None,
            };
            let upload = match &p.upload {
                Some(u) => Some(upload::compile_upload(u, &at("upload"))?),
                None => None,
            };
            let request = match &p.request {
                Some(r) => shape::compile_request(r, &at("request"))?,
                None => RequestShape::default(),
            };
            policies.push(Policy {
                name: p.name,
                matcher: compile_match(&p.matcher, &at("match"))?,
                signature: scheme,
                content_digest: p.content_digest,
                max_body_bytes,
                cors,
                trusted_hosts,
                api_key,
                ip,
                idempotency,
                upload,
                request,
                mode: p.mode,
            });
        }
        for (j, later) in policies.iter().enumerate() {
            if let Some(earlier) = policies[..j]
                .iter()
                .find(|e| e.matcher.covers(&later.matcher))
            {
                warnings.push(format!(
                    "policy `{}` (policies[{j}]) never applies: the earlier policy `{}` matches \
                     every request it would, and the first match wins; move it above `{}`",
                    later.name, earlier.name, earlier.name
                ));
            }
        }
        let uses_route_names = policies.iter().any(|p| p.matcher.route.is_some());
        let idempotency_capacity = policies
            .iter()
            .any(|p| p.idempotency.is_some())
            .then_some(idempotency_capacity);
        Ok(Config {
            keys,
            window_seconds: sig.window_seconds,
            key_id_header: sig.key_id_header.clone(),
            replay_capacity: capacity,
            policies,
            uses_route_names,
            response_headers,
            warnings,
            api_keys,
            key_source: KeySource {
                header: raw.api_keys.header.clone(),
                bearer: raw.api_keys.allow_bearer,
            },
            strip_api_key: raw.api_keys.strip,
            lockout,
            remote,
            idempotency_capacity,
            api_key_id_header: raw.identity.api_key_id_header.clone(),
            role_header: raw.identity.role_header.clone(),
            client_header: raw.identity.client_header.clone(),
            event_suppress_seconds,
        })
    }

    /// The first policy whose match fits the request. `path` may carry a query string.
    pub fn select(&self, route: Option<&str>, method: &str, path: &str) -> Option<&Policy> {
        self.select_index(route, method, path)
            .map(|i| &self.policies[i])
    }

    /// [`Config::select`], as an index into `policies`.
    pub fn select_index(&self, route: Option<&str>, method: &str, path: &str) -> Option<usize> {
        let path = path.split(['?', '#']).next().unwrap_or(path);
        self.policies
            .iter()
            .position(|p| p.matcher.fits(route, method, path))
    }
}

/// Parses JSON into `RawConfig`, naming the field (as a path) when it fails.
pub fn parse_raw(json: &[u8]) -> Result<RawConfig, ConfigError> {
    let de = &mut serde_json::Deserializer::from_slice(json);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        err(field, e.into_inner().to_string())
    })
}

fn check_body_limit(field: &str, limit: u64) -> Result<(), ConfigError> {
    if limit == 0 || limit > MAX_MAX_BODY_BYTES {
        return Err(err(
            field,
            format!("must be between 1 and {MAX_MAX_BODY_BYTES} bytes, got {limit}"),
        ));
    }
    Ok(())
}

/// Ids are public names (logged, sent upstream): short, plain, and unique within their list.
pub(crate) fn check_id<'a>(
    seen: &mut HashSet<&'a str>,
    id: &'a str,
    field: String,
    what: &str,
) -> Result<(), ConfigError> {
    let plain = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if id.is_empty() || id.len() > 64 || !plain {
        return Err(err(
            field,
            "must be 1 to 64 characters of letters, digits, '-', '_' and '.'",
        ));
    }
    if !seen.insert(id) {
        return Err(err(field, format!("`{id}` is used by an earlier {what}")));
    }
    Ok(())
}

fn compile_match(raw: &RawMatch, field: &str) -> Result<Matcher, ConfigError> {
    let path = match (&raw.path, &raw.path_prefix) {
        (Some(_), Some(_)) => {
            return Err(err(
                field,
                "`path` and `path_prefix` cannot both be set; use one of them",
            ))
        }
        (Some(p), None) => Some(PathMatch::Exact(check_path(p, &format!("{field}.path"))?)),
        (None, Some(p)) => Some(PathMatch::Prefix(check_path(
            p,
            &format!("{field}.path_prefix"),
        )?)),
        (None, None) => None,
    };
    if let Some(route) = &raw.route {
        if route.is_empty() {
            return Err(err(format!("{field}.route"), "must not be empty"));
        }
    }
    for (i, m) in raw.methods.iter().enumerate() {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(err(
                format!("{field}.methods[{i}]"),
                format!("`{m}` is not an uppercase HTTP method such as GET or POST"),
            ));
        }
    }
    Ok(Matcher {
        route: raw.route.clone(),
        path,
        methods: raw.methods.clone(),
    })
}

fn check_path(p: &str, field: &str) -> Result<String, ConfigError> {
    if !p.starts_with('/') || p.contains(['?', '#']) {
        return Err(err(
            field,
            format!("`{p}` must start with `/` and hold no query"),
        ));
    }
    Ok(p.to_string())
}

pub(crate) fn validate_header_name(field: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        return Err(err(
            field,
            format!("`{name}` must be a lowercase header name (letters, digits, '-')"),
        ));
    }
    if name.starts_with("x-request-") {
        return Err(err(
            field,
            format!("`{name}` clashes with the signature headers"),
        ));
    }
    Ok(())
}

impl Matcher {
    /// Whether every request `other` matches is matched by `self` too.
    fn covers(&self, other: &Matcher) -> bool {
        let route = self.route.is_none() || self.route == other.route;
        let methods = self.methods.is_empty()
            || (!other.methods.is_empty()
                && other.methods.iter().all(|m| self.methods.contains(m)));
        let path = match (&self.path, &other.path) {
            (None, _) => true,
            (Some(PathMatch::Exact(a)), Some(PathMatch::Exact(b))) => a == b,
            (Some(PathMatch::Prefix(p)), Some(PathMatch::Exact(b) | PathMatch::Prefix(b))) => {
                prefix_fits(p, b)
            }
            (Some(PathMatch::Exact(_)), Some(PathMatch::Prefix(_))) | (Some(_), None) => false,
        };
        route && methods && path
    }

    fn fits(&self, route: Option<&str>, method: &str, path: &str) -> bool {
        if let Some(want) = &self.route {
            if route != Some(want.as_str()) {
                return false;
            }
        }
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == method) {
            return false;
        }
        match &self.path {
            None => true,
            Some(PathMatch::Exact(p)) => path == p,
            Some(PathMatch::Prefix(p)) => prefix_fits(p, path),
        }
    }
}

/// Segment-aware prefix: `/health` covers `/health` and `/health/...` but not `/healthz`.
fn prefix_fits(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

#[cfg(test)]
mod tests;
