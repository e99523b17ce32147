//! The shared-state seam. Envoy runs one VM per worker thread, so anything that must hold across
//! requests lives in the host's shared data, reached through the small [`SharedStore`] trait. The
//! wasm filter implements it over proxy-wasm host calls; [`MemoryStore`] is its twin in process
//! memory (the native runtime's store, and the native tests') and mirrors the host's semantics
//! (compare-and-swap, no "insert if absent", no deletion).
//!
//! # The replay cache
//!
//! Shared data never forgets a key and has no atomic insert-if-absent, so the cache is a fixed
//! set of shard keys, created once at configuration time and reused forever; a nonce is recorded
//! with get → modify → set-with-CAS, retried on a CAS mismatch, so concurrent workers cannot
//! both accept it.
//!
//! A nonce must be remembered until `expires_at` (its timestamp plus the window: the last second
//! a replay, which carries the same signed timestamp, could still pass the timestamp check), so
//! records are grouped by *when they may be forgotten*. Time is cut into slices of
//! `ceil(window / 32)` seconds (10 s for the default 300 s window); a shard's value is a list of
//! slices, each its last unix second and the 8-byte fingerprints of the nonces whose
//! `expires_at` falls in it:
//!
//! ```text
//! value := slice*      slice := end: u32 BE | count: u16 BE | count × fingerprint (8 bytes)
//! ```
//!
//! A slice is dropped as a whole by the first write to its shard after `end`. A record therefore
//! lives at least until its `expires_at` (never less: that would re-open a replay) and at most
//! one slice longer. With no per-record expiry a record is its fingerprint alone, and a shard
//! (at most [`NONCES_PER_SHARD`] nonces and ~61 slice headers) stays under 4 KiB: one cheap copy
//! into the VM and one out per signed request. A nonce maps to one shard by its SHA-256, so a
//! lookup reads exactly one key, and it compares against every live record of that key (a few
//! hundred 8-byte compares), so records stay findable even after the slice length changes
//! with the window.
//!
//! Why the slices live inside a shard's value rather than in keys of their own (a ring of
//! per-slice keys): a slot of a ring keeps its expired records until the ring comes round to it
//! again, a full window later, so a ring holds twice the live nonces. Here every write drops its
//! shard's expired slices, and at the design rate every shard is written about once a second.
//!
//! **Fingerprints.** 8 bytes of SHA-256(nonce): a fresh nonce is refused as a replay only if its
//! fingerprint equals one of the at most [`NONCES_PER_SHARD`] live records of its shard, a chance
//! of at most 448 / 2^64 ≈ 2.4 × 10^-17 per request, or one false `nonce_replayed` in about
//! 90,000 years at 14,000 signed requests/s. (Nonces are chosen by clients who hold the secret;
//! one who wants a collision can simply reuse a nonce.)
//!
//! **Sizing.** `capacity` is the most nonces held at once: `ceil(capacity / 448)` shards of at
//! most 448 records. Nonces land in shards at random, so a shard's live count at a given rate is
//! Poisson-distributed; the cache is sized for shards that are 5/8 full on average at its
//! sustained rate ([`NonceCache::sustained_rate`]): at 280 of 448 a request finds its shard full
//! with probability 1.6 × 10^-20. Records live `window + slice/2` on average with accurate
//! clocks, so the default capacity (7,000,000: 15,625 shards) sustains 14,344 signed requests/s
//! indefinitely; with every client's clock a full window ahead, records live twice as long and
//! the sustained rate halves (7,231/s). Beyond that, shards begin to fill: a nonce whose shard is
//! full of live records is refused (`replay_cache_full`, 429 with `Retry-After` until the shard's
//! earliest slice ends) rather than evicting a record that could still be replayed.
//!
//! **Memory is bounded by design.** At most 448 × 8 bytes of fingerprints and 61 slice headers of
//! 6 bytes per shard (3,950 bytes): [`NonceCache::max_bytes`], 61.7 MB for the default (plus
//! Envoy's ~150 bytes per key, ~2.3 MB), whatever the traffic. At the sustained rate a shard
//! holds ~280 fingerprints in ~31 slices: the tests measure 8.9 bytes of values per live nonce
//! with accurate clocks, 9.5 with clocks spread over the window or a window ahead (more slices,
//! fewer records each).
//!
//! **Reload.** The shard keys depend only on the shard count, so a new configuration with the
//! same `capacity` finds every nonce already recorded (a new window changes only the slice length
//! of new records). A different `capacity` would put nonces in other shards, where a replay of a
//! nonce accepted in the last window would not be found: the cache records its shard count in
//! one more key, and a configuration with another count is refused with a log line saying so
//! (restart Envoy, or use a new `vm_id`, to change it). Two configurations sharing one cache (one
//! `vm_id`; in the native runtime, one process) must therefore agree on `replay.capacity`.

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
pub(crate) fn ensure_keys(
    store: &dyn SharedStore,
    key: impl Fn(u32) -> String,
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

/// How a table of `capacity` records is cut into fixed shard keys: as few shards as hold it
/// with at most `max_per_shard` records each, and the records spread evenly over them (so the
/// table holds `capacity` rounded up to a multiple of the shard count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    shards: u32,
    per_shard: u32,
}

impl Layout {
    fn new(capacity: u32, max_per_shard: u32) -> Self {
        let shards = capacity.div_ceil(max_per_shard).max(1);
        Self {
            shards,
            per_shard: capacity.div_ceil(shards).max(1),
        }
    }

    /// Most records the table holds.
    fn records(&self) -> u64 {
        u64::from(self.shards) * u64::from(self.per_shard)
    }
}

/// Length of a fingerprint, in the replay cache and the lockout table alike.
const FINGERPRINT: usize = 8;

/// Which shard of `shards` a value belongs to, and an 8-byte fingerprint of it (other bytes of
/// the same SHA-256, so that records of one shard differ in all 64 bits).
fn locate(value: &[u8], shards: u32) -> (u32, [u8; FINGERPRINT]) {
    let digest = Sha256::digest(value);
    let mut fingerprint = [0u8; FINGERPRINT];
    fingerprint.copy_from_slice(&digest[..FINGERPRINT]);
    let shard = u32::from_be_bytes([digest[28], digest[29], digest[30], digest[31]]) % shards;
    (shard, fingerprint)
}

/// Nonces per shard of the replay cache at most; see the module documentation.
pub const NONCES_PER_SHARD: u32 = 448;
/// A slice's header in a shard value: its last unix second (u32) and its record count (u16).
const SLICE_HEADER: usize = 6;
/// Slices per window: short enough that a record outlives its `expires_at` by a few percent of
/// the window at most, long enough that slice headers cost under a byte per live nonce.
const SLICES_PER_WINDOW: u64 = 32;
/// The fill the cache is sized for at its sustained rate, as a fraction: see
/// [`NonceCache::sustained_rate`].
const DESIGN_FILL: (u64, u64) = (5, 8);
/// CAS retries before giving up on a contended shard. Contention comes only from other workers
/// writing the same shard at the same instant, so a few retries suffice.
const MAX_ATTEMPTS: usize = 32;

/// What recording a nonce changed, for the cache gauge (records held: every insert adds one,
/// every expired slice dropped on the way subtracts its records).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// Live records in the shard after the insert.
    pub shard_len: usize,
    /// Records of expired slices dropped from the shard while inserting.
    pub purged: usize,
}

/// One time slice of a shard value: its last unix second and its records' fingerprints.
struct Slice<'a> {
    end: u32,
    fingerprints: &'a [u8],
}

impl Slice<'_> {
    fn len(&self) -> usize {
        self.fingerprints.len() / FINGERPRINT
    }

    fn holds(&self, fingerprint: &[u8; FINGERPRINT]) -> bool {
        self.fingerprints
            .chunks_exact(FINGERPRINT)
            .any(|r| r == fingerprint)
    }
}

/// The slices of a shard value, or `None` if it is not one (nothing but this code writes these
/// keys, so that would be a bug; the caller fails closed).
fn slices(value: &[u8]) -> Option<Vec<Slice<'_>>> {
    let mut out = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        let (header, tail) = rest.split_at_checked(SLICE_HEADER)?;
        let end = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let count = usize::from(u16::from_be_bytes([header[4], header[5]]));
        let (fingerprints, tail) = tail.split_at_checked(count * FINGERPRINT)?;
        out.push(Slice { end, fingerprints });
        rest = tail;
    }
    Some(out)
}

fn push_slice(out: &mut Vec<u8>, end: u32, count: usize) {
    out.extend_from_slice(&end.to_be_bytes());
    // A shard holds at most NONCES_PER_SHARD records, far below u16::MAX.
    out.extend_from_slice(&u16::try_from(count).unwrap_or(u16::MAX).to_be_bytes());
}

/// The replay cache: see the module documentation.
#[derive(Debug, Clone)]
pub struct NonceCache {
    layout: Layout,
    window: u64,
    slice: u64,
}

impl NonceCache {
    /// A cache of at most `capacity` nonces (rounded up to a multiple of the shard count) for
    /// timestamps checked against a window of `window` seconds.
    pub fn new(capacity: u32, window: u64) -> Self {
        let window = window.max(1);
        Self {
            layout: Layout::new(capacity, NONCES_PER_SHARD),
            window,
            slice: window.div_ceil(SLICES_PER_WINDOW),
        }
    }

    pub fn shards(&self) -> u32 {
        self.layout.shards
    }

    /// Seconds per time slice.
    pub fn slice_seconds(&self) -> u64 {
        self.slice
    }

    /// Most nonces the cache holds at once.
    pub fn max_records(&self) -> u64 {
        self.layout.records()
    }

    /// Most slices a shard holds: one for every slice that may end between now and the latest
    /// `expires_at` (now + 2 × window, for a timestamp a window ahead).
    fn max_slices(&self) -> u64 {
        (2 * self.window).div_ceil(self.slice) + 1
    }

    /// Most bytes of values the cache can ever hold (for this window): full shards, each with
    /// every slice header it can have.
    pub fn max_bytes(&self) -> u64 {
        let per_shard = u64::from(self.layout.per_shard) * FINGERPRINT as u64
            + self.max_slices() * SLICE_HEADER as u64;
        u64::from(self.layout.shards) * per_shard
    }

    /// Signed requests per second the cache takes indefinitely with accurate client clocks, at
    /// the fill it is sized for (shards 5/8 full on average, so that a nonce practically never
    /// finds its shard full: see the module documentation). Each record lives its window plus,
    /// on average, half a slice. With clocks a window ahead records live twice as long: half this.
    pub fn sustained_rate(&self) -> u64 {
        let live = self.max_records() * DESIGN_FILL.0 / DESIGN_FILL.1;
        live * 2 / (2 * self.window + self.slice)
    }

    fn shard_key(index: u32) -> String {
        format!("edge-warden/replay/{index}")
    }

    /// The shard count of the cache in shared data (see the module documentation, "Reload").
    const LAYOUT_KEY: &'static str = "edge-warden/replay/layout";

    /// Creates missing shard keys (see [`ensure_keys`]), after checking that the cache already in
    /// shared data, if any, has this configuration's shard count. The count key is created here
    /// like the shards, so that claiming it is a compare-and-swap: of two configurations with
    /// different counts loading at once, one sees the other's and is refused.
    pub fn ensure_shards(&self, store: &dyn SharedStore) -> Result<(), SetError> {
        ensure_keys(store, |_| Self::LAYOUT_KEY.to_string(), 1)?;
        let ours = self.layout.shards.to_be_bytes();
        for _ in 0..MAX_ATTEMPTS {
            match store.get(Self::LAYOUT_KEY)? {
                (Some(theirs), _) if theirs == ours => {
                    return ensure_keys(store, Self::shard_key, self.layout.shards)
                }
                (Some(theirs), _) => {
                    let theirs = <[u8; 4]>::try_from(theirs.as_slice()).map_or_else(
                        |_| "another number of".into(),
                        |t| u32::from_be_bytes(t).to_string(),
                    );
                    log::error!(
                        "edge-warden: replay.capacity gives {} replay-cache shards, but this \
                         Envoy's shared state already holds a replay cache of {theirs} shards from \
                         a configuration with another capacity; nonces recorded there would not be \
                         found, so their replays would pass. Keep the capacity, or restart Envoy \
                         (or use a new vm_id) to change it",
                        self.layout.shards
                    );
                    return Err(SetError::Failed);
                }
                (None, cas) => match store.set(Self::LAYOUT_KEY, &ours, cas) {
                    Ok(()) | Err(SetError::CasMismatch) => continue,
                    Err(e) => return Err(e),
                },
            }
        }
        Err(SetError::Failed)
    }

    /// The last second of the slice holding `expires_at`.
    fn slice_end(&self, expires_at: u64) -> u32 {
        let end = (expires_at / self.slice) * self.slice + (self.slice - 1);
        u32::try_from(end).unwrap_or(u32::MAX)
    }

    /// Records a verified nonce, or refuses it as a replay. `expires_at` is the unix second after
    /// which the nonce's timestamp could no longer pass the window check; the record is kept at
    /// least until then.
    pub fn record(
        &self,
        store: &dyn SharedStore,
        _proof: &SignatureVerified,
        nonce: &str,
        expires_at: u64,
        now: u64,
    ) -> Result<Recorded, Reject> {
        let (shard, fingerprint) = locate(nonce.as_bytes(), self.layout.shards);
        let key = Self::shard_key(shard);
        let end = self.slice_end(expires_at);

        for _ in 0..MAX_ATTEMPTS {
            let (value, cas) = store
                .get(&key)
                .map_err(|_| Reject::ReplayCheckUnavailable)?;
            let value = value.unwrap_or_default();
            // Fail closed on a value this code did not write: overwriting it might drop records.
            let all = slices(&value).ok_or(Reject::ReplayCheckUnavailable)?;
            let (live, expired): (Vec<_>, Vec<_>) =
                all.into_iter().partition(|s| u64::from(s.end) >= now);
            if live.iter().any(|s| s.holds(&fingerprint)) {
                return Err(Reject::NonceReplayed);
            }
            let count: usize = live.iter().map(Slice::len).sum();
            if count >= self.layout.per_shard as usize {
                // The earliest slice is dropped once its last second has passed.
                let earliest = live.iter().map(|s| u64::from(s.end)).min().unwrap_or(now);
                return Err(Reject::ReplayCacheFull {
                    retry_after: (earliest + 1).saturating_sub(now).max(1),
                });
            }
            let mut out = Vec::with_capacity(value.len() + SLICE_HEADER + FINGERPRINT);
            let mut placed = false;
            for s in &live {
                let here = s.end == end;
                push_slice(&mut out, s.end, s.len() + usize::from(here));
                out.extend_from_slice(s.fingerprints);
                if here {
                    out.extend_from_slice(&fingerprint);
                    placed = true;
                }
            }
            if !placed {
                push_slice(&mut out, end, 1);
                out.extend_from_slice(&fingerprint);
            }
            match store.set(&key, &out, cas) {
                Ok(()) => {
                    return Ok(Recorded {
                        shard_len: count + 1,
                        purged: expired.iter().map(Slice::len).sum(),
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

/// Sustains 14,344 signed requests/s with the default 300 s window: see the module documentation.
pub const DEFAULT_REPLAY_CAPACITY: u32 = 7_000_000;
pub const MIN_REPLAY_CAPACITY: u32 = 64;
pub const MAX_REPLAY_CAPACITY: u32 = 16_777_216;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReplay {
    /// How many nonces the replay cache holds at most (64 – 16777216, default 7000000). A cache
    /// of `capacity` nonces sustains about `capacity × 5/8 / window_seconds` signed requests/s
    /// with accurate client clocks; its memory is bounded by about 9 bytes per nonce of capacity.
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

/// The capacity of the replay cache configured at `field` (`replay`). Configurations of earlier
/// versions (a multiple of 64 in the same range) keep loading.
pub(crate) fn compile_replay(raw: &RawReplay, field: &str) -> Result<u32, ConfigError> {
    let capacity = raw.capacity;
    if !(MIN_REPLAY_CAPACITY..=MAX_REPLAY_CAPACITY).contains(&capacity) {
        return Err(err(
            format!("{field}.capacity"),
            format!(
                "must be between {MIN_REPLAY_CAPACITY} and {MAX_REPLAY_CAPACITY} nonces, got \
                 {capacity}"
            ),
        ));
    }
    Ok(capacity)
}

/// Failed authentications per client IP, shared by all workers: after `max_failures` within
/// `window` seconds of the first one, the IP is locked out until that window ends.
///
/// Fixed shard keys like the replay cache's: `ceil(capacity / 256)` shards of at most 256
/// records of 14 bytes (an 8-byte fingerprint of the address, the window's start as a u32, the
/// count as a saturating u16), so memory is bounded by 14 bytes per tracked address:
/// [`Lockout::max_bytes`], 3.5 MiB for the default 262144 addresses. Addresses spread over the
/// shards at random, so shards fill unevenly; at 5/8 of the capacity (the default: 163840
/// addresses, 546 new failing addresses per second for a whole 300 s window) a new address
/// finds its shard full with probability about 2 × 10^-12. When one is full, expired records go
/// first, then the unlocked record whose window started earliest; a locked one only if all are
/// locked. So memory stays bounded under a flood of source addresses, at the cost of forgetting
/// the oldest counts first, and a flood of single failures from fresh addresses does not free an
/// address that is locked out. A changed `capacity` moves addresses to other shards: their
/// counts start again (and a lockout in force may end early).
///
/// One more key holds the moment the latest lockout ends. While it lies in the past nobody is
/// locked out, so [`Lockout::check`] answers from those 8 bytes without reading the client's
/// address or its shard: the common case costs one small read per request.
#[derive(Debug, Clone)]
pub struct Lockout {
    layout: Layout,
    pub max_failures: u32,
    pub window: u64,
    /// IPv6 addresses are counted by this prefix (see `ip::lockout_key`).
    pub ipv6_prefix: u8,
}

/// A fingerprint, the window start (u32) and the count (u16).
const FAILURE_RECORD: usize = FINGERPRINT + 6;
/// One subscriber usually holds a whole /64.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;
/// Addresses per lockout shard at most: 3.5 KiB, about a replay shard's size.
pub const FAILURES_PER_SHARD: u32 = 256;

struct FailureRecord {
    fingerprint: [u8; FINGERPRINT],
    start: u32,
    /// Saturates: `max_failures` is at most 1000.
    count: u16,
}

fn failure_records(value: &[u8]) -> Vec<FailureRecord> {
    value
        .chunks_exact(FAILURE_RECORD)
        .map(|r| {
            let mut fingerprint = [0u8; FINGERPRINT];
            fingerprint.copy_from_slice(&r[..FINGERPRINT]);
            FailureRecord {
                fingerprint,
                start: u32::from_be_bytes([r[8], r[9], r[10], r[11]]),
                count: u16::from_be_bytes([r[12], r[13]]),
            }
        })
        .collect()
}

impl Lockout {
    pub fn new(capacity: u32, max_failures: u32, window: u64) -> Self {
        Self {
            layout: Layout::new(capacity, FAILURES_PER_SHARD),
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

    /// Most bytes of records the table can ever hold.
    pub fn max_bytes(&self) -> u64 {
        self.layout.records() * FAILURE_RECORD as u64
    }

    // Not `lockout/{index}`: those keys held the 20-byte records of earlier versions.
    fn shard_key(index: u32) -> String {
        format!("edge-warden/failures/{index}")
    }

    /// The unix second at which the latest lockout ends (empty: none yet).
    const ACTIVE_UNTIL_KEY: &'static str = "edge-warden/lockout/active-until";

    /// Creates the shard keys and the summary key (created here, like the shards, so that every
    /// later write of it is a compare-and-swap), then brings the summary up to the records
    /// already there: after a reload with a longer window or a lower limit, or an upgrade from a
    /// version without the summary, an address locked under the new settings stays locked.
    pub fn ensure_shards(&self, store: &dyn SharedStore) -> Result<(), SetError> {
        ensure_keys(store, Self::shard_key, self.layout.shards)?;
        ensure_keys(store, |_| Self::ACTIVE_UNTIL_KEY.to_string(), 1)?;
        let mut until = 0;
        for shard in 0..self.layout.shards {
            let (value, _) = store.get(&Self::shard_key(shard))?;
            for r in failure_records(&value.unwrap_or_default()) {
                if self.locks(&r) {
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

    /// Whether the record's count locks its address out (while the record is live).
    fn locks(&self, r: &FailureRecord) -> bool {
        u32::from(r.count) >= self.max_failures
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
        let (shard, fingerprint) = locate(ip.as_bytes(), self.layout.shards);
        let Ok((Some(value), _)) = store.get(&Self::shard_key(shard)) else {
            return Ok(());
        };
        for r in failure_records(&value) {
            if r.fingerprint == fingerprint && self.live(&r, now) && self.locks(&r) {
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
        let (shard, fingerprint) = locate(ip.as_bytes(), self.layout.shards);
        let key = Self::shard_key(shard);
        let full = self.layout.per_shard as usize;
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
                    if records.len() >= full {
                        records.retain(|r| self.live(r, now));
                    }
                    if records.len() >= full {
                        // Unlocked records go before locked ones, each oldest first.
                        if let Some(oldest) = records
                            .iter()
                            .enumerate()
                            .min_by_key(|(_, r)| (self.locks(r), r.start))
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
            if u32::from(count) >= self.max_failures {
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
                Ok(()) => return Some(u32::from(count)),
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
    /// Addresses tracked at most (64 – 1048576, default 262144); 14 bytes of memory each.
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
    262_144
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
    // Configurations of earlier versions (a multiple of 64 in the same range) keep loading.
    if !(64..=1_048_576).contains(&raw.capacity) {
        return Err(err(
            at("capacity"),
            format!(
                "must be between 64 and 1048576 addresses, got {}",
                raw.capacity
            ),
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
