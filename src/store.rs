//! The shared-state seam. Envoy runs one VM per worker thread, so anything that must hold across
//! requests lives in the host's shared data, reached through the small [`SharedStore`] trait. The
//! wasm filter implements it over proxy-wasm host calls; [`MemoryStore`] is its twin in process
//! memory (the native runtime's store, and the native tests') and mirrors the host's semantics
//! (compare-and-swap, no "insert if absent", no deletion).
//!
//! # The replay cache
//!
//! Shared data never forgets a key and has no atomic insert-if-absent, so the cache is a fixed set
//! of `capacity / 64` shard keys, created once at configuration time and reused forever. Each
//! shard holds at most 64 records of 16 bytes: the first 12 bytes of SHA-256(nonce) and the unix
//! second at which the record expires (the request timestamp plus the window, the last moment a
//! replay could still pass the timestamp check). A nonce is recorded with get → modify →
//! set-with-CAS, retried on a CAS mismatch, so concurrent workers cannot both accept it.
//!
//! Memory is bounded by design: `capacity × 16` bytes of records plus a per-key overhead, whatever
//! the traffic. When a shard is full of live records, a new nonce for it is refused
//! (`replay_cache_full`, 429 with `Retry-After`) rather than evicting a live record, which would
//! re-open a replay.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::checks::signature::SignatureVerified;
use crate::config::{default_true, err, ConfigError};
use crate::reject::Reject;

/// Why a write to shared data did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetError {
    /// Someone else wrote the key since it was read.
    CasMismatch,
    /// The host refused for another reason.
    Failed,
}

/// The host's shared key-value store with compare-and-swap.
pub trait SharedStore {
    /// The value and its CAS token. A missing key is `(None, None)`; an empty value is
    /// `(None, Some(cas))`.
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), SetError>;
    /// Writes `value` if the key's CAS still equals `cas` (`None`: unconditionally).
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError>;
}

/// A store shared by reference (the native runtime's one process-wide store).
impl<T: SharedStore + ?Sized> SharedStore for &T {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), SetError> {
        (**self).get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        (**self).set(key, value, cas)
    }
}

/// Shared data in process memory, with the host's semantics (compare-and-swap, no "insert if
/// absent", no deletion): the store of the native runtime, whose worker threads share one
/// process, and of the native tests. Keys are spread over [`MEMORY_SHARDS`] mutexes so that
/// workers touching different replay shards do not wait for each other; each lock is held for
/// one map operation only.
#[derive(Debug)]
pub struct MemoryStore {
    shards: Vec<Mutex<Entries>>,
    next_cas: AtomicU32,
}

/// Values and their CAS tokens, by key.
type Entries = HashMap<String, (Vec<u8>, u32)>;

/// Mutexes of a [`MemoryStore`].
pub const MEMORY_SHARDS: usize = 64;

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            shards: (0..MEMORY_SHARDS).map(|_| Mutex::default()).collect(),
            next_cas: AtomicU32::new(1),
        }
    }
}

impl MemoryStore {
    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, Entries> {
        // FNV-1a: cheap, and keys are ours (not client input), so no flooding concern.
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let shard = &self.shards[(hash % MEMORY_SHARDS as u64) as usize];
        // A panic while holding the lock cannot leave a map half-written (each operation is one
        // insert or one clone), so a poisoned lock is still consistent: keep using it.
        shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every key and the length of its value, for tests of the memory bound.
    pub fn sizes(&self) -> Vec<(String, usize)> {
        self.shards
            .iter()
            .flat_map(|s| {
                let map = s.lock().unwrap_or_else(|p| p.into_inner());
                map.iter()
                    .map(|(k, (v, _))| (k.clone(), v.len()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), SetError> {
        Ok(match self.shard(key).get(key) {
            None => (None, None),
            Some((v, cas)) if v.is_empty() => (None, Some(*cas)),
            Some((v, cas)) => (Some(v.clone()), Some(*cas)),
        })
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        let mut map = self.shard(key);
        if let (Some(want), Some((_, have))) = (cas, map.get(key)) {
            if want != *have {
                return Err(SetError::CasMismatch);
            }
        }
        let next = self.next_cas.fetch_add(1, Ordering::Relaxed);
        map.insert(key.to_string(), (value.to_vec(), next));
        Ok(())
    }
}

/// Creates the missing keys among `key(0..count)`. Run at configuration time, before traffic: the
/// host has no atomic "create", so creating keys on the request path could race and drop a
/// record. Existing keys (a filter reload) are left as they are.
fn ensure_keys(
    store: &dyn SharedStore,
    key: fn(u32) -> String,
    count: u32,
) -> Result<(), SetError> {
    for i in 0..count {
        let key = key(i);
        if let (None, None) = store.get(&key)? {
            store.set(&key, &[], None)?;
        }
    }
    Ok(())
}

/// Which shard of `shards` a value belongs to, and a 12-byte fingerprint of it.
fn locate(value: &[u8], shards: u32) -> (u32, [u8; FINGERPRINT]) {
    let digest = Sha256::digest(value);
    let mut fingerprint = [0u8; FINGERPRINT];
    fingerprint.copy_from_slice(&digest[..FINGERPRINT]);
    let shard = u32::from_be_bytes([digest[28], digest[29], digest[30], digest[31]]) % shards;
    (shard, fingerprint)
}

/// Nonces per shard of the replay cache; see the module documentation.
pub const NONCES_PER_SHARD: u32 = 64;
const RECORD: usize = 16;
const FINGERPRINT: usize = 12;
/// CAS retries before giving up on a contended shard. Contention comes only from other workers
/// writing the same shard at the same instant, so a few retries suffice.
const MAX_ATTEMPTS: usize = 32;

/// What recording a nonce changed, for the cache gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// Live records in the shard after the insert.
    pub shard_len: usize,
    /// Expired records dropped from the shard while inserting.
    pub purged: usize,
}

/// The replay cache: see the module documentation.
#[derive(Debug, Clone)]
pub struct NonceCache {
    shards: u32,
}

impl NonceCache {
    pub fn new(capacity: u32) -> Self {
        Self {
            shards: (capacity / NONCES_PER_SHARD).max(1),
        }
    }

    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// Most bytes of records the cache can ever hold.
    pub fn max_record_bytes(&self) -> u64 {
        u64::from(self.shards) * u64::from(NONCES_PER_SHARD) * RECORD as u64
    }

    fn shard_key(index: u32) -> String {
        format!("edge-warden/nonce/{index}")
    }

    /// Creates missing shard keys; see [`ensure_keys`].
    pub fn ensure_shards(&self, store: &dyn SharedStore) -> Result<(), SetError> {
        ensure_keys(store, Self::shard_key, self.shards)
    }

    /// Records a verified nonce, or refuses it as a replay. `expires_at` is the unix second after
    /// which the nonce's timestamp could no longer pass the window check.
    pub fn record(
        &self,
        store: &dyn SharedStore,
        _proof: &SignatureVerified,
        nonce: &str,
        expires_at: u64,
        now: u64,
    ) -> Result<Recorded, Reject> {
        let digest = Sha256::digest(nonce.as_bytes());
        let mut fingerprint = [0u8; FINGERPRINT];
        fingerprint.copy_from_slice(&digest[..FINGERPRINT]);
        let shard =
            u32::from_be_bytes([digest[28], digest[29], digest[30], digest[31]]) % self.shards;
        let key = Self::shard_key(shard);
        let expires_at = u32::try_from(expires_at).unwrap_or(u32::MAX);

        for _ in 0..MAX_ATTEMPTS {
            let (value, cas) = store
                .get(&key)
                .map_err(|_| Reject::ReplayCheckUnavailable)?;
            let value = value.unwrap_or_default();
            let mut live = Vec::with_capacity(value.len() + RECORD);
            let mut purged = 0;
            let mut earliest = u32::MAX;
            for record in value.chunks_exact(RECORD) {
                let exp = u32::from_be_bytes([record[12], record[13], record[14], record[15]]);
                if u64::from(exp) < now {
                    purged += 1;
                    continue;
                }
                if record[..FINGERPRINT] == fingerprint {
                    return Err(Reject::NonceReplayed);
                }
                earliest = earliest.min(exp);
                live.extend_from_slice(record);
            }
            let count = live.len() / RECORD;
            if count >= NONCES_PER_SHARD as usize {
                let retry_after = u64::from(earliest).saturating_sub(now).max(1);
                return Err(Reject::ReplayCacheFull { retry_after });
            }
            live.extend_from_slice(&fingerprint);
            live.extend_from_slice(&expires_at.to_be_bytes());
            match store.set(&key, &live, cas) {
                Ok(()) => {
                    return Ok(Recorded {
                        shard_len: count + 1,
                        purged,
                    })
                }
                Err(SetError::CasMismatch) => continue,
                Err(SetError::Failed) => return Err(Reject::ReplayCheckUnavailable),
            }
        }
        Err(Reject::ReplayCheckUnavailable)
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration: the `replay` section, and its compile step.

pub const DEFAULT_REPLAY_CAPACITY: u32 = 524_288;
pub const MAX_REPLAY_CAPACITY: u32 = 16_777_216;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReplay {
    /// How many nonces the replay cache holds at most (a multiple of 64). Memory is bounded by
    /// capacity × 16 bytes plus a fixed per-shard overhead.
    #[serde(default = "default_replay_capacity")]
    pub capacity: u32,
}

impl Default for RawReplay {
    fn default() -> Self {
        Self {
            capacity: default_replay_capacity(),
        }
    }
}

fn default_replay_capacity() -> u32 {
    DEFAULT_REPLAY_CAPACITY
}

/// The capacity of the replay cache configured at `field` (`replay`).
pub(crate) fn compile_replay(raw: &RawReplay, field: &str) -> Result<u32, ConfigError> {
    let capacity = raw.capacity;
    if !(NONCES_PER_SHARD..=MAX_REPLAY_CAPACITY).contains(&capacity)
        || !capacity.is_multiple_of(NONCES_PER_SHARD)
    {
        return Err(err(
            format!("{field}.capacity"),
            format!(
                "must be a multiple of {NONCES_PER_SHARD} between {NONCES_PER_SHARD} and \
                 {MAX_REPLAY_CAPACITY}, got {capacity}"
            ),
        ));
    }
    Ok(capacity)
}

/// Failed authentications per client IP, shared by all workers: after `max_failures` within
/// `window` seconds of the first one, the IP is locked out until that window ends.
///
/// Same layout as the replay cache: `capacity / 64` fixed shard keys of at most 64 records of 20
/// bytes (IP fingerprint, window start, count). When a shard is full, expired records go first,
/// then the record whose window started earliest, so memory stays bounded under a flood of
/// source addresses (at the cost of forgetting the oldest counts first).
///
/// One more key holds the moment the latest lockout ends. While it lies in the past nobody is
/// locked out, so [`Lockout::check`] answers from those 8 bytes without reading the client's
/// address or its shard: the common case costs one small read per request.
#[derive(Debug, Clone)]
pub struct Lockout {
    shards: u32,
    pub max_failures: u32,
    pub window: u64,
    /// IPv6 addresses are counted by this prefix (see `ip::lockout_key`).
    pub ipv6_prefix: u8,
}

const FAILURE_RECORD: usize = 20;
/// One subscriber usually holds a whole /64.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;
const FAILURES_PER_SHARD: usize = 64;

struct FailureRecord {
    fingerprint: [u8; FINGERPRINT],
    start: u32,
    count: u32,
}

fn failure_records(value: &[u8]) -> Vec<FailureRecord> {
    value
        .chunks_exact(FAILURE_RECORD)
        .map(|r| {
            let mut fingerprint = [0u8; FINGERPRINT];
            fingerprint.copy_from_slice(&r[..FINGERPRINT]);
            FailureRecord {
                fingerprint,
                start: u32::from_be_bytes([r[12], r[13], r[14], r[15]]),
                count: u32::from_be_bytes([r[16], r[17], r[18], r[19]]),
            }
        })
        .collect()
}

impl Lockout {
    pub fn new(capacity: u32, max_failures: u32, window: u64) -> Self {
        Self {
            shards: (capacity / FAILURES_PER_SHARD as u32).max(1),
            max_failures,
            window,
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
        }
    }

    /// Counts IPv6 clients by their `/prefix` network.
    pub fn with_ipv6_prefix(mut self, prefix: u8) -> Self {
        self.ipv6_prefix = prefix;
        self
    }

    fn shard_key(index: u32) -> String {
        format!("edge-warden/lockout/{index}")
    }

    /// The unix second at which the latest lockout ends (empty: none yet).
    const ACTIVE_UNTIL_KEY: &'static str = "edge-warden/lockout/active-until";

    /// Creates the shard keys and the summary key (created here, like the shards, so that every
    /// later write of it is a compare-and-swap), then brings the summary up to the records
    /// already there: after a reload with a longer window or a lower limit, or an upgrade from a
    /// version without the summary, an address locked under the new settings stays locked.
    pub fn ensure_shards(&self, store: &dyn SharedStore) -> Result<(), SetError> {
        ensure_keys(store, Self::shard_key, self.shards)?;
        ensure_keys(store, |_| Self::ACTIVE_UNTIL_KEY.to_string(), 1)?;
        let mut until = 0;
        for shard in 0..self.shards {
            let (value, _) = store.get(&Self::shard_key(shard))?;
            for r in failure_records(&value.unwrap_or_default()) {
                if r.count >= self.max_failures {
                    until = until.max(u64::from(r.start) + self.window);
                }
            }
        }
        if until > 0 && !self.extend_active(store, until) {
            return Err(SetError::Failed);
        }
        Ok(())
    }

    /// Whether some address may be locked out at `now`. A store error answers yes, so the
    /// per-address check runs.
    fn any_active(&self, store: &dyn SharedStore, now: u64) -> bool {
        match store.get(Self::ACTIVE_UNTIL_KEY) {
            Ok((None, _)) => false,
            Ok((Some(value), _)) => <[u8; 8]>::try_from(value.as_slice())
                .map_or(true, |until| u64::from_be_bytes(until) > now),
            Err(_) => true,
        }
    }

    /// Moves the summary's end forward to `until` (never back), with CAS like the shards.
    /// False when the summary could not be brought that far.
    fn extend_active(&self, store: &dyn SharedStore, until: u64) -> bool {
        for _ in 0..MAX_ATTEMPTS {
            let Ok((value, cas)) = store.get(Self::ACTIVE_UNTIL_KEY) else {
                return false;
            };
            let current = value
                .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                .map_or(0, u64::from_be_bytes);
            if current >= until {
                return true;
            }
            match store.set(Self::ACTIVE_UNTIL_KEY, &until.to_be_bytes(), cas) {
                Ok(()) => return true,
                Err(SetError::CasMismatch) => continue,
                Err(SetError::Failed) => return false,
            }
        }
        false
    }

    fn live(&self, r: &FailureRecord, now: u64) -> bool {
        u64::from(r.start) + self.window > now
    }

    /// Refuses an IP that is locked out, with the seconds until its window ends. `ip` is asked
    /// for only when some lockout is in force (reading the client address is a host call). A
    /// store error lets the request on to authentication (which still has to succeed):
    /// availability over a counter we cannot read.
    pub fn check(
        &self,
        store: &dyn SharedStore,
        ip: impl FnOnce() -> Option<String>,
        now: u64,
    ) -> Result<(), Reject> {
        if !self.any_active(store, now) {
            return Ok(());
        }
        let Some(ip) = ip() else {
            return Ok(());
        };
        let (shard, fingerprint) = locate(ip.as_bytes(), self.shards);
        let Ok((Some(value), _)) = store.get(&Self::shard_key(shard)) else {
            return Ok(());
        };
        for r in failure_records(&value) {
            if r.fingerprint == fingerprint && self.live(&r, now) && r.count >= self.max_failures {
                let retry_after = (u64::from(r.start) + self.window)
                    .saturating_sub(now)
                    .max(1);
                return Err(Reject::TooManyAuthFailures { retry_after });
            }
        }
        Ok(())
    }

    /// Counts one failed authentication for `ip`; returns the count in the current window.
    ///
    /// A failure that locks the address out moves the summary forward *before* the shard is
    /// written, so no worker can see the lock in the shard while the summary still says nobody is
    /// locked (a summary ahead of the shards only costs a lookup). If the summary cannot be moved,
    /// the failure is not recorded at all, as when the shard itself cannot be written.
    pub fn record_failure(&self, store: &dyn SharedStore, ip: &str, now: u64) -> Option<u32> {
        let (shard, fingerprint) = locate(ip.as_bytes(), self.shards);
        let key = Self::shard_key(shard);
        let now32 = u32::try_from(now).unwrap_or(u32::MAX);
        for _ in 0..MAX_ATTEMPTS {
            let (value, cas) = store.get(&key).ok()?;
            let mut records = failure_records(&value.unwrap_or_default());
            let count = match records.iter_mut().find(|r| r.fingerprint == fingerprint) {
                Some(r) if self.live(r, now) => {
                    r.count = r.count.saturating_add(1);
                    r.count
                }
                Some(r) => {
                    r.start = now32;
                    r.count = 1;
                    1
                }
                None => {
                    if records.len() >= FAILURES_PER_SHARD {
                        records.retain(|r| self.live(r, now));
                    }
                    if records.len() >= FAILURES_PER_SHARD {
                        if let Some(oldest) = records
                            .iter()
                            .enumerate()
                            .min_by_key(|(_, r)| r.start)
                            .map(|(i, _)| i)
                        {
                            records.swap_remove(oldest);
                        }
                    }
                    records.push(FailureRecord {
                        fingerprint,
                        start: now32,
                        count: 1,
                    });
                    1
                }
            };
            if count >= self.max_failures {
                let start = records
                    .iter()
                    .find(|r| r.fingerprint == fingerprint)
                    .map_or(now, |r| u64::from(r.start));
                if !self.extend_active(store, start + self.window) {
                    return None;
                }
            }
            let mut out = Vec::with_capacity(records.len() * FAILURE_RECORD);
            for r in &records {
                out.extend_from_slice(&r.fingerprint);
                out.extend_from_slice(&r.start.to_be_bytes());
                out.extend_from_slice(&r.count.to_be_bytes());
            }
            match store.set(&key, &out, cas) {
                Ok(()) => return Some(count),
                Err(SetError::CasMismatch) => continue,
                Err(SetError::Failed) => return None,
            }
        }
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration: the `lockout` section, and its compile step.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLockout {
    /// Whether failed authentications are counted and addresses locked out (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Failed authentications (wrong key, wrong signature) that lock an address out (default 5).
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    /// Window from the first failure, in seconds (default 300); the lockout lasts until it ends.
    #[serde(default = "default_window")]
    pub window_seconds: u64,
    /// Addresses tracked at most (a multiple of 64; default 65536).
    #[serde(default = "default_lockout_capacity")]
    pub capacity: u32,
    /// IPv6 clients are counted by network of this prefix length (default 64: one subscriber
    /// usually holds a whole /64); 128 counts each address. IPv4 is counted per address.
    #[serde(default = "default_ipv6_prefix")]
    pub ipv6_prefix: u8,
}

impl Default for RawLockout {
    fn default() -> Self {
        Self {
            enabled: true,
            max_failures: default_max_failures(),
            window_seconds: default_window(),
            capacity: default_lockout_capacity(),
            ipv6_prefix: default_ipv6_prefix(),
        }
    }
}

fn default_max_failures() -> u32 {
    5
}
fn default_window() -> u64 {
    300
}
fn default_lockout_capacity() -> u32 {
    65_536
}
fn default_ipv6_prefix() -> u8 {
    DEFAULT_IPV6_PREFIX
}

#[derive(Debug, Clone, Copy)]
pub struct LockoutSettings {
    pub max_failures: u32,
    pub window_seconds: u64,
    pub capacity: u32,
    pub ipv6_prefix: u8,
}

/// The lockout configured at `field` (`lockout`); `None` when it is disabled.
pub(crate) fn compile_lockout(
    raw: &RawLockout,
    field: &str,
) -> Result<Option<LockoutSettings>, ConfigError> {
    if !raw.enabled {
        return Ok(None);
    }
    let at = |f: &str| format!("{field}.{f}");
    if raw.max_failures == 0 || raw.max_failures > 1000 {
        return Err(err(at("max_failures"), "must be between 1 and 1000"));
    }
    if !(1..=86_400).contains(&raw.window_seconds) {
        return Err(err(
            at("window_seconds"),
            "must be between 1 and 86400 seconds",
        ));
    }
    if !(64..=1_048_576).contains(&raw.capacity) || !raw.capacity.is_multiple_of(64) {
        return Err(err(
            at("capacity"),
            "must be a multiple of 64 between 64 and 1048576",
        ));
    }
    if !(16..=128).contains(&raw.ipv6_prefix) {
        return Err(err(
            at("ipv6_prefix"),
            format!(
                "must be a prefix length between 16 and 128, got {}",
                raw.ipv6_prefix
            ),
        ));
    }
    Ok(Some(LockoutSettings {
        max_failures: raw.max_failures,
        window_seconds: raw.window_seconds,
        capacity: raw.capacity,
        ipv6_prefix: raw.ipv6_prefix,
    }))
}

#[cfg(test)]
mod tests;
