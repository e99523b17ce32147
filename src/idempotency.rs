//! Idempotency keys (draft-ietf-httpapi-idempotency-key-header): the first request with a key
//! goes upstream, a duplicate gets the stored response (or 409 while the first is in flight),
//! and a key sent with another request is refused (422). The configuration sections, the key's
//! parsing, the fingerprints, and the local table in shared data live here; the engine decides
//! when each runs, and the fleet store (`remote`) answers the same questions across Envoys.
//!
//! The local table is a fixed set of bucket keys in the host's shared data, each holding up to
//! [`RECORDS_PER_BUCKET`] whole records (response body included), updated with compare-and-swap.
//! A key's record can only live in one bucket, so one CAS decides every race between workers.
//! A full bucket gives up its expired records first, then its oldest completed one; a bucket
//! whose records are all in flight refuses the claim (503). Memory is bounded by design: at
//! most `capacity` records of at most `RECORD_HEADER + 256 + max_response_bytes` bytes.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::{err, ConfigError};
use crate::headers::RequestHeaders;
use crate::reject::Reject;
use crate::store::{ensure_keys, SetError, SharedStore};

/// The draft's header (a structured-field string, `"..."`; a bare token is accepted too).
pub const HEADER: &str = "idempotency-key";
/// The reference services' header (a bare token).
pub const LEGACY_HEADER: &str = "x-idempotency-key";
/// Longest key accepted, in characters.
pub const MAX_KEY_LEN: usize = 255;
/// Largest response body a policy may store.
pub const MAX_RESPONSE_BYTES: u32 = 1024 * 1024;
/// Longest stored content type.
pub const MAX_CONTENT_TYPE: usize = 256;
/// Records per bucket of the local table.
pub const RECORDS_PER_BUCKET: u32 = 4;
/// Bytes of a record before its content type and body.
pub const RECORD_HEADER: usize = 1 + 16 + 16 + 16 + 8 + 2 + 2 + 4;
const MAX_ATTEMPTS: usize = 32;

// ---------------------------------------------------------------------------------------------
// Configuration.

/// The top-level `idempotency` section: the local table shared by every policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdempotencyStore {
    /// Records the local table holds at most (in flight and completed).
    #[serde(default = "default_capacity")]
    pub capacity: u32,
}

impl Default for RawIdempotencyStore {
    fn default() -> Self {
        Self {
            capacity: default_capacity(),
        }
    }
}

fn default_capacity() -> u32 {
    2048
}

/// A policy's `idempotency` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicyIdempotency {
    /// Methods whose requests carry a key (default POST, PUT, PATCH, DELETE).
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// Whether those requests must carry one (false: a key is honoured when sent).
    #[serde(default = "crate::config::default_true")]
    pub required: bool,
    /// How long a completed response is replayed, in seconds (default 24 h).
    #[serde(default = "default_ttl")]
    pub ttl_seconds: u64,
    /// Largest response body stored for replay, in bytes (default 16 KiB).
    #[serde(default = "default_max_response")]
    pub max_response_bytes: u32,
    /// How long a request in flight holds its key before another attempt may take it over
    /// (it may have died with its Envoy), in seconds (default 60).
    #[serde(default = "default_in_flight")]
    pub in_flight_seconds: u64,
}

fn default_methods() -> Vec<String> {
    ["POST", "PUT", "PATCH", "DELETE"]
        .map(String::from)
        .to_vec()
}
fn default_ttl() -> u64 {
    86_400
}
fn default_max_response() -> u32 {
    16 * 1024
}
fn default_in_flight() -> u64 {
    60
}

/// A policy's compiled idempotency settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyIdempotency {
    pub methods: Vec<String>,
    pub required: bool,
    pub ttl_seconds: u64,
    pub max_response_bytes: u32,
    pub in_flight_seconds: u64,
}

impl PolicyIdempotency {
    /// Whether a request of `method` takes part.
    pub fn covers(&self, method: &str) -> bool {
        self.methods.iter().any(|m| m == method)
    }
}

pub fn compile_store(raw: &RawIdempotencyStore, field: &str) -> Result<u32, ConfigError> {
    if !(RECORDS_PER_BUCKET..=1_000_000).contains(&raw.capacity) {
        return Err(err(
            format!("{field}.capacity"),
            format!(
                "must be between {RECORDS_PER_BUCKET} and 1000000 records, got {}",
                raw.capacity
            ),
        ));
    }
    Ok(raw.capacity)
}

pub fn compile_policy(
    raw: &RawPolicyIdempotency,
    field: &str,
) -> Result<PolicyIdempotency, ConfigError> {
    if raw.methods.is_empty() {
        return Err(err(
            format!("{field}.methods"),
            "must name at least one method (e.g. POST)",
        ));
    }
    for (i, m) in raw.methods.iter().enumerate() {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(err(
                format!("{field}.methods[{i}]"),
                format!("`{m}` is not an uppercase HTTP method such as POST"),
            ));
        }
    }
    let range = |name: &str, value: u64, max: u64| {
        if value == 0 || value > max {
            return Err(err(
                format!("{field}.{name}"),
                format!("must be between 1 and {max} seconds, got {value}"),
            ));
        }
        Ok(())
    };
    range("ttl_seconds", raw.ttl_seconds, 604_800)?;
    range("in_flight_seconds", raw.in_flight_seconds, 3600)?;
    if raw.max_response_bytes > MAX_RESPONSE_BYTES {
        return Err(err(
            format!("{field}.max_response_bytes"),
            format!(
                "must be at most {MAX_RESPONSE_BYTES} bytes, got {}",
                raw.max_response_bytes
            ),
        ));
    }
    Ok(PolicyIdempotency {
        methods: raw.methods.clone(),
        required: raw.required,
        ttl_seconds: raw.ttl_seconds,
        max_response_bytes: raw.max_response_bytes,
        in_flight_seconds: raw.in_flight_seconds,
    })
}

// ---------------------------------------------------------------------------------------------
// The key on the wire.

/// The request's idempotency key: `Ok(None)` when it sent none. Either header may carry it;
/// both may if they agree. Copies, bad characters and over-long keys are refused.
pub fn find_key(headers: &RequestHeaders) -> Result<Option<String>, Reject> {
    let draft = headers
        .unique(HEADER)
        .map_err(|_| Reject::IdempotencyKeyInvalid)?
        .map(parse_draft)
        .transpose()?;
    let legacy = headers
        .unique(LEGACY_HEADER)
        .map_err(|_| Reject::IdempotencyKeyInvalid)?
        .map(|v| parse_token(trim(v)))
        .transpose()?;
    match (draft, legacy) {
        (Some(a), Some(b)) if a != b => Err(Reject::IdempotencyKeyInvalid),
        (Some(a), _) => Ok(Some(a)),
        (None, b) => Ok(b),
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = v.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    match (start, end) {
        (Some(s), Some(e)) => &v[s..=e],
        _ => &[],
    }
}

/// `"..."` (an RFC 9651 string: printable ASCII, `\"` and `\\` escapes) or a bare token.
fn parse_draft(value: &[u8]) -> Result<String, Reject> {
    let value = trim(value);
    let Some(inner) = value.strip_prefix(b"\"") else {
        return parse_token(value);
    };
    let mut key = String::new();
    let mut bytes = inner.iter();
    loop {
        match bytes.next() {
            None => return Err(Reject::IdempotencyKeyInvalid),
            Some(b'"') => break,
            Some(b'\\') => match bytes.next() {
                Some(&c @ (b'"' | b'\\')) => key.push(char::from(c)),
                _ => return Err(Reject::IdempotencyKeyInvalid),
            },
            Some(&c) if (0x20..0x7f).contains(&c) => key.push(char::from(c)),
            Some(_) => return Err(Reject::IdempotencyKeyInvalid),
        }
    }
    // Nothing may follow the closing quote (parameters are not part of this header).
    if bytes.next().is_some() || key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(Reject::IdempotencyKeyInvalid);
    }
    Ok(key)
}

/// Visible ASCII without quotes or backslashes, 1 to [`MAX_KEY_LEN`] characters.
fn parse_token(value: &[u8]) -> Result<String, Reject> {
    let ok = !value.is_empty()
        && value.len() <= MAX_KEY_LEN
        && value
            .iter()
            .all(|b| (0x21..0x7f).contains(b) && *b != b'"' && *b != b'\\');
    if !ok {
        return Err(Reject::IdempotencyKeyInvalid);
    }
    Ok(value.iter().map(|&b| char::from(b)).collect())
}

// ---------------------------------------------------------------------------------------------
// Fingerprints: the table and the fleet store hold these, never the key or the body.

pub type Fingerprint = [u8; 16];

fn fingerprint(parts: &[&[u8]]) -> Fingerprint {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    let digest = hash.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// The record's name: the caller's scope (`sig:<id>`, `key:<id>`, `ip:<address>`) and the key.
pub fn record_key(scope: &str, key: &str) -> Fingerprint {
    fingerprint(&[
        b"edge-warden idempotency key",
        scope.as_bytes(),
        key.as_bytes(),
    ])
}

/// What makes two requests "the same request": method, path with query, and body digest.
pub fn request_fingerprint(method: &str, path: &str, body_sha256: &[u8]) -> Fingerprint {
    fingerprint(&[
        b"edge-warden request",
        method.as_bytes(),
        path.as_bytes(),
        body_sha256,
    ])
}

/// A token that names one attempt (its Complete and Release must present it). Unique, not
/// secret: it never leaves the Envoys and the state service.
pub fn attempt_token(record: &Fingerprint, request_id: Option<&str>, now: u64) -> Fingerprint {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let address = std::ptr::addr_of!(COUNTER) as usize as u64;
    fingerprint(&[
        b"edge-warden attempt",
        record,
        request_id.unwrap_or("").as_bytes(),
        &now.to_be_bytes(),
        &n.to_be_bytes(),
        &address.to_be_bytes(),
    ])
}

/// Whether a content type can be stored and replayed as it was: printable ASCII, at most
/// [`MAX_CONTENT_TYPE`] bytes (a header value edge-warden can write back unchanged).
pub fn replayable_content_type(value: &[u8]) -> bool {
    value.len() <= MAX_CONTENT_TYPE && value.iter().all(|b| (0x20..0x7f).contains(b))
}

// ---------------------------------------------------------------------------------------------
// Records.

/// A stored response, replayed as it was (status, content type, body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// What beginning an attempt with a key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begun {
    /// This attempt holds the key: send the request upstream.
    Claimed,
    /// Another attempt with the key is in flight.
    InProgress,
    /// Done before: replay this.
    Completed(StoredResponse),
    /// Done before, its response too large to keep.
    CompletedNotStored,
    /// The key was used with another request.
    Mismatch,
    /// No room: every record of the key's bucket is in flight.
    Full,
    /// The table could not be read or written.
    Unavailable,
}

const IN_FLIGHT: u8 = 1;
const COMPLETED: u8 = 2;
const NOT_STORED: u8 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    state: u8,
    key: Fingerprint,
    request: Fingerprint,
    token: Fingerprint,
    expires_at: u64,
    response: StoredResponse,
}

impl Record {
    fn encode(&self, out: &mut Vec<u8>) {
        let ct = self.response.content_type.as_bytes();
        let ct = &ct[..ct.len().min(MAX_CONTENT_TYPE)];
        out.push(self.state);
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.request);
        out.extend_from_slice(&self.token);
        out.extend_from_slice(&self.expires_at.to_be_bytes());
        out.extend_from_slice(&self.response.status.to_be_bytes());
        out.extend_from_slice(&(ct.len() as u16).to_be_bytes());
        out.extend_from_slice(&(self.response.body.len() as u32).to_be_bytes());
        out.extend_from_slice(ct);
        out.extend_from_slice(&self.response.body);
    }

    /// Every record of a bucket value; a value that does not parse holds none.
    fn decode_all(mut value: &[u8]) -> Vec<Record> {
        let mut records = Vec::new();
        while !value.is_empty() {
            let Some((record, rest)) = Self::decode(value) else {
                return Vec::new();
            };
            records.push(record);
            value = rest;
        }
        records
    }

    fn decode(value: &[u8]) -> Option<(Record, &[u8])> {
        let header = value.get(..RECORD_HEADER)?;
        let fp = |at: usize| -> Option<Fingerprint> { header.get(at..at + 16)?.try_into().ok() };
        let u = |at: usize, n: usize| -> Option<u64> {
            let mut x = 0u64;
            for b in header.get(at..at + n)? {
                x = (x << 8) | u64::from(*b);
            }
            Some(x)
        };
        let ct_len = usize::try_from(u(59, 2)?).ok()?;
        let body_len = usize::try_from(u(61, 4)?).ok()?;
        let rest = value.get(RECORD_HEADER..)?;
        let ct = rest.get(..ct_len)?;
        let body = rest.get(ct_len..ct_len.checked_add(body_len)?)?;
        let record = Record {
            state: *header.first()?,
            key: fp(1)?,
            request: fp(17)?,
            token: fp(33)?,
            expires_at: u(49, 8)?,
            response: StoredResponse {
                status: u16::try_from(u(57, 2)?).ok()?,
                content_type: String::from_utf8(ct.to_vec()).ok()?,
                body: body.to_vec(),
            },
        };
        Some((record, rest.get(ct_len + body_len..)?))
    }
}

/// The local table: `capacity` records in buckets of [`RECORDS_PER_BUCKET`].
#[derive(Debug, Clone)]
pub struct Table {
    buckets: u32,
}

impl Table {
    pub fn new(capacity: u32) -> Self {
        Self {
            buckets: (capacity / RECORDS_PER_BUCKET).max(1),
        }
    }

    pub fn capacity(&self) -> u32 {
        self.buckets * RECORDS_PER_BUCKET
    }

    /// The bound on the table's bytes with responses of at most `max_response_bytes`.
    pub fn max_bytes(&self, max_response_bytes: u32) -> u64 {
        u64::from(self.capacity())
            * (RECORD_HEADER + MAX_CONTENT_TYPE + max_response_bytes as usize) as u64
    }

    // The bucket count is in the name: a reload with another capacity starts a table of its
    // own instead of reading records hashed for another layout.
    fn bucket_key(&self, key: &Fingerprint) -> String {
        let index = u32::from_be_bytes([key[12], key[13], key[14], key[15]]) % self.buckets;
        format!("edge-warden/idempotency/{}/{index}", self.buckets)
    }

    /// Creates the bucket keys, so that every later write is a compare-and-swap.
    pub fn ensure_buckets(&self, store: &dyn SharedStore) -> Result<(), SetError> {
        let buckets = self.buckets;
        ensure_keys(
            store,
            |i| format!("edge-warden/idempotency/{buckets}/{i}"),
            buckets,
        )
    }

    /// Claims `key` for this attempt (`token`), or says why not.
    pub fn begin(
        &self,
        store: &dyn SharedStore,
        key: &Fingerprint,
        request: &Fingerprint,
        token: &Fingerprint,
        in_flight_seconds: u64,
        now: u64,
    ) -> Begun {
        let bucket = self.bucket_key(key);
        for _ in 0..MAX_ATTEMPTS {
            let Ok((value, cas)) = store.get(&bucket) else {
                return Begun::Unavailable;
            };
            let mut records = Record::decode_all(&value.unwrap_or_default());
            records.retain(|r| r.expires_at > now);
            if let Some(found) = records.iter().find(|r| &r.key == key) {
                return match found.state {
                    _ if &found.request != request => Begun::Mismatch,
                    IN_FLIGHT => Begun::InProgress,
                    NOT_STORED => Begun::CompletedNotStored,
                    _ => Begun::Completed(found.response.clone()),
                };
            }
            if records.len() >= RECORDS_PER_BUCKET as usize {
                let oldest = records
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.state != IN_FLIGHT)
                    .min_by_key(|(_, r)| r.expires_at)
                    .map(|(i, _)| i);
                match oldest {
                    Some(i) => {
                        records.swap_remove(i);
                    }
                    None => return Begun::Full,
                }
            }
            records.push(Record {
                state: IN_FLIGHT,
                key: *key,
                request: *request,
                token: *token,
                expires_at: now.saturating_add(in_flight_seconds),
                response: StoredResponse {
                    status: 0,
                    content_type: String::new(),
                    body: Vec::new(),
                },
            });
            match self.write(store, &bucket, &records, cas) {
                Ok(()) => return Begun::Claimed,
                Err(SetError::CasMismatch) => continue,
                Err(SetError::Failed) => return Begun::Unavailable,
            }
        }
        Begun::Unavailable
    }

    /// Turns this attempt's claim into a completed record kept until `now + ttl_seconds`
    /// (`None`: completed, response not kept). False when the claim was no longer ours.
    pub fn complete(
        &self,
        store: &dyn SharedStore,
        key: &Fingerprint,
        token: &Fingerprint,
        response: Option<StoredResponse>,
        ttl_seconds: u64,
        now: u64,
    ) -> bool {
        self.update(store, key, token, now, |record| {
            record.expires_at = now.saturating_add(ttl_seconds);
            match response {
                Some(ref response) => {
                    record.state = COMPLETED;
                    record.response = response.clone();
                }
                None => record.state = NOT_STORED,
            }
            true
        })
    }

    /// Gives this attempt's claim up. False when it was no longer ours.
    pub fn release(
        &self,
        store: &dyn SharedStore,
        key: &Fingerprint,
        token: &Fingerprint,
        now: u64,
    ) -> bool {
        self.update(store, key, token, now, |_| false)
    }

    /// Finds this attempt's live in-flight record and keeps (`true`) or drops it.
    fn update(
        &self,
        store: &dyn SharedStore,
        key: &Fingerprint,
        token: &Fingerprint,
        now: u64,
        mut change: impl FnMut(&mut Record) -> bool,
    ) -> bool {
        let bucket = self.bucket_key(key);
        for _ in 0..MAX_ATTEMPTS {
            let Ok((value, cas)) = store.get(&bucket) else {
                return false;
            };
            let mut records = Record::decode_all(&value.unwrap_or_default());
            records.retain(|r| r.expires_at > now);
            let Some(i) = records
                .iter()
                .position(|r| &r.key == key && &r.token == token && r.state == IN_FLIGHT)
            else {
                return false;
            };
            if !change(&mut records[i]) {
                records.swap_remove(i);
            }
            match self.write(store, &bucket, &records, cas) {
                Ok(()) => return true,
                Err(SetError::CasMismatch) => continue,
                Err(SetError::Failed) => return false,
            }
        }
        false
    }

    fn write(
        &self,
        store: &dyn SharedStore,
        bucket: &str,
        records: &[Record],
        cas: Option<u32>,
    ) -> Result<(), SetError> {
        let mut out = Vec::new();
        for r in records {
            r.encode(&mut out);
        }
        store.set(bucket, &out, cas)
    }
}

#[cfg(test)]
mod tests;
