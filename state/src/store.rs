//! The Redis side: one Lua script per operation, on one of a few long-lived connections.
//!
//! Keys (PREFIX is `--key-prefix`, `ew:` by default):
//! - `PREFIXnonce:<hex fingerprint>` = "1", expiring after the claim's TTL: a claimed fingerprint.
//! - `PREFIXfail:<client>` = failure count, expiring `window_seconds` after the first failure.
//! - `PREFIXidem:<hex key fingerprint>` = an idempotency record ([`IdempotencyRecord`] has the
//!   layout), expiring `in_flight_seconds` after its claim, then `ttl_seconds` after its
//!   completion.
//!
//! # Durability: what survives a primary failover
//!
//! Redis replicates asynchronously. A write is acknowledged by the primary before any replica
//! has it, so when a primary fails and a replica is promoted (by Sentinel, by Redis Cluster, or
//! by hand), the writes of the last moments before the failure can be missing on the new primary.
//!
//! - Without `--require-replicas` (the default): a claim answered `claimed = true` may be lost
//!   in a failover. The same fingerprint can then be claimed a second time on the new primary,
//!   i.e. a replay of a request signed in that short window (the replication lag at the moment
//!   of the failure, usually milliseconds) can be admitted once more while its TTL runs.
//!   Failure counts can likewise lose their latest increments, so a client gets a few more
//!   attempts than `max_failures`. Everything else (older claims, older counts) survives.
//! - With `--require-replicas N`: each call that may write (an Admit with a claim, a
//!   RecordFailure, each idempotency call) pipelines `WAIT N --replica-timeout-ms` after its script. A claim is
//!   answered `claimed = true`, and a failure count is answered at all, only when N replicas
//!   acknowledged having it in memory; otherwise the answer is UNAVAILABLE (the claim
//!   may or may not exist: the filter treats it as unavailable and the client retries with a
//!   fresh nonce, so an ambiguous claim is never used). Such a claim survives the failure of the
//!   primary as long as the replica promoted is one of those that acknowledged it; Sentinel and
//!   Cluster promote the replica with the most replicated data, so this holds unless more than
//!   N nodes fail together or a lagging replica is promoted by hand. WAIT does not make Redis
//!   strongly consistent: it is not an fsync (a replica restarted without persistence loses what
//!   it had), and a primary cut off from the others still accepts writes until it notices; WAIT
//!   then answers too few replicas, so the service refuses those claims instead of trusting them.
//!
//! An old primary that is still up after a failover (a manual one, or one caused by a slow or
//! unreachable primary) accepts writes until Sentinel turns it into a replica, about 10 s later
//! by default, and then discards them in a full resynchronization. A Sentinel pool's
//! connections share where the primary is and all move as soon as one learns it moved; the
//! pool asks the sentinels every second, and after a WAIT that counted too few replicas (see
//! `SentinelPrimary`). So calls reach such an old primary about a second at most after the
//! sentinels name the new one.
//!
//! A Redis that restarts without persistence (or evicts keys: use `maxmemory-policy noeviction`
//! or `volatile-ttl`) forgets every claim and count it had, with or without `--require-replicas`.
//!
//! # Round trips
//!
//! Admit is one script over both keys, so the lockout check and the claim take one round trip
//! and are atomic. In Redis Cluster the two keys are in different hash slots (a script may only
//! touch keys of one slot), so there Admit takes two round trips: the lockout check first, and
//! the claim only if the client is not locked out. (A `--key-prefix` with a hash tag, such as
//! `{ew}:`, puts every key in one slot and Admit back in one round trip, on one shard.) The WAIT
//! of `--require-replicas` is pipelined with the write it waits for, on the same connection, so it
//! adds no round trip, only the time the replicas take to acknowledge. Each idempotency call is
//! one script on one key: one round trip in every deployment.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::io::tcp::{socket2::TcpKeepalive, TcpSettings};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo,
    Pipeline, RedisError, ServerErrorKind, Value,
};

use crate::config::{Backend, Config};

/// Admit. ARGV[1] is the shape: "lc" = lockout check on KEYS[1] (the failure counter), then the
/// claim of KEYS[2] (the nonce); "l" = the lockout check alone; "c" = the claim of KEYS[1] alone.
/// ARGV[2] = max failures, ARGV[3] = the claim's TTL in seconds.
/// Returns {locked_for_seconds, claimed (1 or 0)}; a locked-out client claims nothing.
const ADMIT_LUA: &str = r#"
local shape = ARGV[1]
local nonce = KEYS[1]
if shape ~= 'c' then
  local failures = tonumber(redis.call('GET', KEYS[1])) or 0
  if failures >= tonumber(ARGV[2]) then
    local ttl = redis.call('TTL', KEYS[1])
    if ttl < 1 then ttl = 1 end
    return {ttl, 0}
  end
  if shape == 'l' then return {0, 0} end
  nonce = KEYS[2]
end
if redis.call('SET', nonce, '1', 'NX', 'EX', ARGV[3]) then
  return {0, 1}
end
return {0, 0}
"#;

/// RecordFailure. KEYS[1] = the failure counter, ARGV[1] = the window in seconds. The first
/// failure starts the window: the expiry is set only when the counter has none (a new key).
/// Returns {failures, ttl}.
const RECORD_FAILURE_LUA: &str = r#"
local failures = redis.call('INCR', KEYS[1])
local ttl = redis.call('TTL', KEYS[1])
if ttl < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {failures, ttl}
"#;

/// BeginIdempotent. KEYS[1] = the record, ARGV[1] = the in-flight record to store when there is
/// none, ARGV[2] = the request fingerprint, ARGV[3] = in_flight_seconds.
/// Returns {1} claimed, {2} in progress, {3, response} completed (the record after its request
/// fingerprint), {4} completed without a stored response, {5} another request's key, and {0}
/// for a value that is not a record (written by something else).
const BEGIN_IDEMPOTENT_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
  return {1}
end
local kind, n = string.byte(v, 1, 2)
if not n or #v < 2 + n then return {0} end
if string.sub(v, 3, 2 + n) ~= ARGV[2] then return {5} end
if kind == 1 then return {2} end
if kind == 2 then return {3, string.sub(v, 3 + n)} end
if kind == 3 then return {4} end
return {0}
"#;

/// CompleteIdempotent. KEYS[1] = the record, ARGV[1] = the token, ARGV[2] = the completed
/// record's kind byte, ARGV[3] = what follows its request fingerprint, ARGV[4] = ttl_seconds.
/// Only an in-flight record holding this token is replaced (its request fingerprint is kept).
/// Returns 1 when stored, 0 when the claim is not this token's (or there is none).
const COMPLETE_IDEMPOTENT_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local kind, n = string.byte(v, 1, 2)
if kind ~= 1 or not n or string.sub(v, 3 + n) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2] .. string.sub(v, 2, 2 + n) .. ARGV[3], 'EX', ARGV[4])
return 1
"#;

/// ReleaseIdempotent. KEYS[1] = the record, ARGV[1] = the token. Only an in-flight record
/// holding this token is deleted. Returns 1 when deleted, else 0.
const RELEASE_IDEMPOTENT_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local kind, n = string.byte(v, 1, 2)
if kind ~= 1 or not n or string.sub(v, 3 + n) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"#;

/// A kernel-level bound on a connection whose peer vanished without a reset: unacknowledged
/// data for this long fails the socket, and the connection is then replaced.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(2);
/// Each attempt to connect to a Redis node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// After a failed Sentinel lookup, calls fail at once for this long instead of asking again;
/// and the pool's checks of where the primary is are at least this far apart.
const SENTINEL_RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How often a Sentinel pool asks the sentinels whether the primary moved (besides asking
/// after a WAIT that counted too few replicas).
const SENTINEL_CHECK_PERIOD: Duration = Duration::from_secs(1);

/// Why an operation failed. Every variant becomes UNAVAILABLE; [`StoreError::kind`] is what
/// the log says (never a key, a fingerprint, a client or a Redis address).
#[derive(Debug)]
pub enum StoreError {
    Redis(RedisError),
    /// The round trip took longer than its deadline.
    Timeout,
    /// The write was made, but fewer replicas than `--require-replicas` acknowledged it.
    Unreplicated,
    /// Redis answered something the scripts never return.
    BadReply,
}

impl StoreError {
    /// A short description of the kind of error, safe to log.
    pub fn kind(&self) -> String {
        match self {
            StoreError::Timeout => "deadline exceeded".into(),
            StoreError::Unreplicated => "too few replicas acknowledged".into(),
            StoreError::BadReply => "unexpected reply".into(),
            StoreError::Redis(e) => redis_error_kind(e),
        }
    }
}

fn redis_error_kind(e: &RedisError) -> String {
    if e.is_connection_refusal() {
        return "connection refused".into();
    }
    if e.is_timeout() {
        return "redis timeout".into();
    }
    if e.is_connection_dropped() {
        return "connection dropped".into();
    }
    match e.kind() {
        // The code is the reply's first word (READONLY, NOSCRIPT, ERR, ...): no data in it.
        ErrorKind::Server(_) | ErrorKind::Extension => {
            format!("server error {}", e.code().unwrap_or("?"))
        }
        other => format!("{other:?}"),
    }
}

impl From<RedisError> for StoreError {
    fn from(e: RedisError) -> Self {
        StoreError::Redis(e)
    }
}

/// What Admit decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmitOutcome {
    pub locked_for_seconds: u64,
    pub claimed: bool,
}

/// What RecordFailure counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureOutcome {
    pub failures: u32,
    pub locked_for_seconds: u64,
}

/// A validated Admit: at least one part is present.
#[derive(Debug, Clone, Copy)]
pub struct AdmitOp<'a> {
    /// (client, max_failures)
    pub lockout: Option<(&'a str, u32)>,
    /// (fingerprint, ttl_seconds)
    pub claim: Option<(&'a [u8], u32)>,
}

/// A fingerprint or token of the idempotency RPCs: 1..=64 bytes, so its length fits the one
/// length byte of a record. Only [`IdemBytes::new`] makes one.
#[derive(Debug, Clone, Copy)]
pub struct IdemBytes<'a>(&'a [u8]);

impl<'a> IdemBytes<'a> {
    pub const MAX: usize = 64;

    pub fn new(bytes: &'a [u8]) -> Option<Self> {
        (1..=Self::MAX)
            .contains(&bytes.len())
            .then_some(IdemBytes(bytes))
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.0
    }
}

/// A response to store for replay: status 100..=599, a content type of at most 256 characters,
/// a body of at most 1 MiB. Only [`Replay::new`] makes one.
#[derive(Debug, Clone, Copy)]
pub struct Replay<'a> {
    status: u16,
    content_type: &'a str,
    body: &'a [u8],
}

impl<'a> Replay<'a> {
    pub const MAX_BODY_BYTES: usize = 1 << 20;
    pub const MAX_CONTENT_TYPE_CHARS: usize = 256;

    /// The error names the field of the rule broken (never the value).
    pub fn new(status: u32, content_type: &'a str, body: &'a [u8]) -> Result<Self, &'static str> {
        let status = match u16::try_from(status) {
            Ok(s) if (100..=599).contains(&s) => s,
            _ => return Err("response.status: 100 to 599"),
        };
        if content_type.chars().count() > Self::MAX_CONTENT_TYPE_CHARS {
            return Err("response.content_type: at most 256 characters");
        }
        if body.len() > Self::MAX_BODY_BYTES {
            return Err("response.body: at most 1048576 bytes");
        }
        Ok(Replay {
            status,
            content_type,
            body,
        })
    }
}

/// A completed response read back from Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReplay {
    pub status: u32,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// What a BeginIdempotent found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeginOutcome {
    Claimed,
    InProgress,
    Completed(StoredReplay),
    CompletedNotStored,
    Mismatch,
}

/// The value of an idempotency key in Redis, binary so that a body costs its own size:
///
/// ```text
/// byte 0      kind: 1 in flight, 2 completed with a response, 3 completed, nothing stored
/// byte 1      n, the length of the request fingerprint (1..=64)
/// 2 .. 2+n    the request fingerprint
/// in flight:  the token (the rest of the value)
/// kind 2:     status (u16, big-endian), content type length in bytes (u16, big-endian),
///             the content type, the body (the rest of the value)
/// kind 3:     nothing
/// ```
///
/// The scripts read bytes 0 and 1 and compare byte strings; only this type builds or parses
/// the rest.
pub struct IdempotencyRecord;

impl IdempotencyRecord {
    pub const IN_FLIGHT: u8 = 1;
    pub const COMPLETED: u8 = 2;
    pub const COMPLETED_NOT_STORED: u8 = 3;

    /// The record a claim stores.
    pub fn in_flight(request: IdemBytes<'_>, token: IdemBytes<'_>) -> Vec<u8> {
        let (request, token) = (request.bytes(), token.bytes());
        let mut v = Vec::with_capacity(2 + request.len() + token.len());
        v.push(Self::IN_FLIGHT);
        // At most 64 (IdemBytes), so the cast keeps the value.
        v.push(request.len() as u8);
        v.extend_from_slice(request);
        v.extend_from_slice(token);
        v
    }

    /// What a completed record holds after its request fingerprint (kind 2).
    pub fn response_part(r: &Replay<'_>) -> Vec<u8> {
        let ct = r.content_type.as_bytes();
        let mut v = Vec::with_capacity(4 + ct.len() + r.body.len());
        v.extend_from_slice(&r.status.to_be_bytes());
        // At most 256 characters of at most 4 bytes (Replay), so the cast keeps the value.
        v.extend_from_slice(&(ct.len() as u16).to_be_bytes());
        v.extend_from_slice(ct);
        v.extend_from_slice(r.body);
        v
    }

    /// Reads [`IdempotencyRecord::response_part`] back; None for anything else.
    pub fn parse_response_part(part: &[u8]) -> Option<StoredReplay> {
        let (status, rest) = part.split_first_chunk::<2>()?;
        let (ct_len, rest) = rest.split_first_chunk::<2>()?;
        let ct_len = usize::from(u16::from_be_bytes(*ct_len));
        if rest.len() < ct_len {
            return None;
        }
        let (content_type, body) = rest.split_at(ct_len);
        Some(StoredReplay {
            status: u32::from(u16::from_be_bytes(*status)),
            content_type: String::from_utf8(content_type.to_vec()).ok()?,
            body: body.to_vec(),
        })
    }
}

struct Lua {
    code: &'static str,
    sha: String,
}

impl Lua {
    fn new(code: &'static str) -> Self {
        let sha = redis::Script::new(code).get_hash().to_string();
        Lua { code, sha }
    }
}

/// One long-lived connection (each multiplexes any number of concurrent calls).
enum Conn {
    /// Reconnects by itself after a dropped connection.
    Single(ConnectionManager),
    /// Follows the cluster's slots and reconnects by itself.
    Cluster(ClusterConnection),
    /// Asks the sentinels for the primary whenever its connection is lost.
    Sentinel(Arc<SentinelConn>),
}

impl Conn {
    /// Called after a WAIT counted too few replicas on this connection (the call started at
    /// `since`): a primary that lost its replicas may be an old one, still up after a failover,
    /// so a Sentinel pool asks the sentinels where the primary is now, within `left`.
    async fn too_few_replicas(&self, since: Instant, left: Duration) {
        if let Conn::Sentinel(s) = self {
            if !left.is_zero() {
                let _ = tokio::time::timeout(left, s.primary.check(since)).await;
            }
        }
    }

    async fn query(&self, pipe: &Pipeline, deadline: Duration) -> Result<Vec<Value>, StoreError> {
        match self {
            Conn::Single(m) => {
                let mut m = m.clone();
                with_deadline(deadline, pipe.query_async(&mut m)).await
            }
            Conn::Cluster(c) => {
                let mut c = c.clone();
                with_deadline(deadline, pipe.query_async(&mut c)).await
            }
            Conn::Sentinel(s) => s.query(pipe, deadline).await,
        }
    }
}

async fn with_deadline<F>(deadline: Duration, f: F) -> Result<Vec<Value>, StoreError>
where
    F: std::future::Future<Output = redis::RedisResult<Vec<Value>>>,
{
    match tokio::time::timeout(deadline, f).await {
        Ok(r) => r.map_err(StoreError::Redis),
        Err(_) => Err(StoreError::Timeout),
    }
}

/// What the connections of a Sentinel pool share: where the primary is, as last learned by
/// any of them, and an epoch that changes with it. A connection made in an older epoch is
/// replaced on its next use. Without this, after a failover whose old primary is still up
/// (a manual failover, or one caused by a slow or cut-off primary), the connections still on
/// the old primary would keep using it, and it keeps accepting writes until Sentinel turns it
/// into a replica (about 10 s after the switch with Sentinel's default timing), writes then
/// lost when it resynchronizes from the new primary.
struct SentinelPrimary {
    epoch: AtomicU64,
    addr: StdMutex<Option<ConnectionAddr>>,
    /// Single-flight check: the client that asks the sentinels, and when the last check began.
    check: tokio::sync::Mutex<(SentinelClient, Option<Instant>)>,
}

impl SentinelPrimary {
    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Records where the primary is; returns the epoch that connections to it belong to.
    fn learn(&self, addr: &ConnectionAddr) -> u64 {
        let Ok(mut known) = self.addr.lock() else {
            return self.epoch();
        };
        if known.as_ref() != Some(addr) {
            *known = Some(addr.clone());
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        self.epoch()
    }

    /// Asks the sentinels where the primary is (the node they name is kept only if it answers
    /// ROLE as a primary), unless a completed check began after `since` (it covers what the
    /// caller saw) or less than SENTINEL_RETRY_PAUSE ago. A check cancelled halfway (the
    /// caller's deadline) counts as none.
    async fn check(&self, since: Instant) {
        let mut check = self.check.lock().await;
        if let Some(last) = check.1 {
            if last >= since || last.elapsed() < SENTINEL_RETRY_PAUSE {
                return;
            }
        }
        let began = Instant::now();
        if let Ok(client) = check.0.async_get_client().await {
            self.learn(client.get_connection_info().addr());
        }
        check.1 = Some(began);
    }

    /// Checks every SENTINEL_CHECK_PERIOD for as long as the pool exists: the only way to
    /// notice a failover while the old primary, still up, answers everything.
    fn watch(primary: Weak<SentinelPrimary>) {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SENTINEL_CHECK_PERIOD).await;
                let Some(p) = primary.upgrade() else { return };
                // Bounded, so that sentinels that stopped answering hold no lock for long.
                let _ =
                    tokio::time::timeout(4 * SENTINEL_CHECK_PERIOD, p.check(Instant::now())).await;
            }
        });
    }
}

/// One connection of a Sentinel pool, to the primary of its epoch.
#[derive(Clone)]
struct Current {
    generation: u64,
    epoch: u64,
    conn: MultiplexedConnection,
}

/// A Sentinel-discovered primary: one multiplexed connection, replaced (after asking the
/// sentinels again) when it fails or when the pool learns that the primary moved, so a
/// failover is followed without a restart.
struct SentinelConn {
    /// The lookup is single-flight: callers that find no connection queue here.
    lookup: tokio::sync::Mutex<(SentinelClient, Option<Instant>)>,
    config: AsyncConnectionConfig,
    current: StdMutex<Option<Current>>,
    generation: AtomicU64,
    primary: Arc<SentinelPrimary>,
}

impl SentinelConn {
    /// The connection, unless there is none or it belongs to an older epoch (then dropped).
    fn cached(&self) -> Option<(u64, MultiplexedConnection)> {
        let epoch = self.primary.epoch();
        let mut current = self.current.lock().ok()?;
        match &*current {
            Some(c) if c.epoch == epoch => Some((c.generation, c.conn.clone())),
            Some(_) => {
                *current = None;
                None
            }
            None => None,
        }
    }

    async fn connection(&self) -> Result<(u64, MultiplexedConnection), StoreError> {
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let mut lookup = self.lookup.lock().await;
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        if let Some(failed) = lookup.1 {
            if failed.elapsed() < SENTINEL_RETRY_PAUSE {
                return Err(StoreError::Redis(RedisError::from((
                    ErrorKind::MasterNameNotFoundBySentinel,
                    "primary lookup failed moments ago",
                ))));
            }
        }
        let found = match lookup.0.async_get_client().await {
            Ok(client) => client
                .get_multiplexed_async_connection_with_config(&self.config)
                .await
                .map(|conn| (client.get_connection_info().addr().clone(), conn)),
            Err(e) => Err(e),
        };
        match found {
            Ok((addr, conn)) => {
                lookup.1 = None;
                let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
                let epoch = self.primary.learn(&addr);
                if let Ok(mut current) = self.current.lock() {
                    *current = Some(Current {
                        generation,
                        epoch,
                        conn: conn.clone(),
                    });
                }
                Ok((generation, conn))
            }
            Err(e) => {
                lookup.1 = Some(Instant::now());
                Err(StoreError::Redis(e))
            }
        }
    }

    /// Drops the connection of `generation` (unless another one replaced it already).
    fn forget(&self, generation: u64) {
        if let Ok(mut current) = self.current.lock() {
            if matches!(&*current, Some(c) if c.generation == generation) {
                *current = None;
            }
        }
    }

    async fn query(&self, pipe: &Pipeline, deadline: Duration) -> Result<Vec<Value>, StoreError> {
        let started = Instant::now();
        let (generation, mut conn) = match tokio::time::timeout(deadline, self.connection()).await {
            Ok(c) => c?,
            Err(_) => return Err(StoreError::Timeout),
        };
        let left = deadline.saturating_sub(started.elapsed());
        let result = with_deadline(left, pipe.query_async(&mut conn)).await;
        if let Err(e) = &result {
            let stale = match e {
                StoreError::Timeout => true,
                StoreError::Redis(e) => {
                    e.is_io_error()
                        || e.is_unrecoverable_error()
                        || matches!(
                            e.kind(),
                            ErrorKind::Server(
                                ServerErrorKind::ReadOnly
                                    | ServerErrorKind::MasterDown
                                    | ServerErrorKind::BusyLoading
                            )
                        )
                }
                _ => false,
            };
            if stale {
                self.forget(generation);
            }
        }
        result
    }
}

/// The state store: Redis behind the operations of the API.
pub struct Store {
    conns: Vec<Conn>,
    next: AtomicUsize,
    prefix: String,
    cluster: bool,
    require_replicas: u32,
    replica_timeout: Duration,
    redis_timeout: Duration,
    admit: Lua,
    record_failure: Lua,
    begin_idempotent: Lua,
    complete_idempotent: Lua,
    release_idempotent: Lua,
}

fn tcp_settings() -> TcpSettings {
    TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(
            TcpKeepalive::new()
                .with_time(Duration::from_secs(10))
                .with_interval(Duration::from_secs(5)),
        )
        .set_user_timeout(TCP_USER_TIMEOUT)
}

fn connection_info(url: &str, what: &str) -> Result<ConnectionInfo, String> {
    // The URL may carry a password: the error names the flag, not the value.
    url.into_connection_info()
        .map(|info| info.set_tcp_settings(tcp_settings()))
        .map_err(|e| format!("{what}: not a Redis URL ({})", e.category()))
}

impl Store {
    /// Sets up the connections without waiting for Redis: a service started before Redis
    /// answers UNAVAILABLE until Redis is there, then works. Must run inside the Tokio runtime.
    pub fn connect(config: &Config) -> Result<Store, String> {
        let backend = config.backend()?;
        let redis_timeout = config.redis_timeout();
        let replica_timeout = config.replica_timeout();
        // Redis-side response timeout: never shorter than our own deadline for a round trip.
        let response_timeout = redis_timeout + replica_timeout;
        let n = usize::from(config.redis_connections.max(1));
        let mut conns = Vec::with_capacity(n);
        let cluster = matches!(backend, Backend::Cluster(_));
        match backend {
            Backend::Single(url) => {
                let client = Client::open(connection_info(&url, "--redis")?)
                    .map_err(|e| format!("--redis: {}", e.category()))?;
                let manager_config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(response_timeout))
                    // A reconnection is two quick attempts; when both fail, the next call starts
                    // a new one, so the service is back moments after Redis is.
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(10))
                    .set_max_delay(Duration::from_millis(50));
                for _ in 0..n {
                    let m = ConnectionManager::new_lazy_with_config(
                        client.clone(),
                        manager_config.clone(),
                    )
                    .map_err(|e| format!("--redis: {}", e.category()))?;
                    conns.push(Conn::Single(m));
                }
            }
            Backend::Cluster(urls) => {
                let infos = urls
                    .iter()
                    .map(|u| connection_info(u, "--redis-cluster"))
                    .collect::<Result<Vec<_>, _>>()?;
                let client = ClusterClientBuilder::new(infos)
                    .tcp_settings(tcp_settings())
                    .build()
                    .map_err(|e| format!("--redis-cluster: {}", e.category()))?;
                let cluster_config = ClusterConfig::new()
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_response_timeout(response_timeout);
                for _ in 0..n {
                    let c = client.get_pending_async_connection_with_config(cluster_config.clone());
                    conns.push(Conn::Cluster(c));
                }
            }
            Backend::Sentinel { sentinels, master } => {
                let infos = sentinels
                    .iter()
                    .map(|u| connection_info(u, "--sentinel"))
                    .collect::<Result<Vec<_>, _>>()?;
                let node = SentinelNodeConnectionInfo::default().set_tcp_settings(tcp_settings());
                let conn_config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(response_timeout));
                let sentinel_client = || {
                    SentinelClient::build(
                        infos.clone(),
                        master.clone(),
                        Some(node.clone()),
                        SentinelServerType::Master,
                    )
                    .map_err(|e| format!("--sentinel: {}", e.category()))
                };
                let primary = Arc::new(SentinelPrimary {
                    epoch: AtomicU64::new(0),
                    addr: StdMutex::new(None),
                    check: tokio::sync::Mutex::new((sentinel_client()?, None)),
                });
                for _ in 0..n {
                    conns.push(Conn::Sentinel(Arc::new(SentinelConn {
                        lookup: tokio::sync::Mutex::new((sentinel_client()?, None)),
                        config: conn_config.clone(),
                        current: StdMutex::new(None),
                        generation: AtomicU64::new(0),
                        primary: primary.clone(),
                    })));
                }
                SentinelPrimary::watch(Arc::downgrade(&primary));
            }
        }
        Ok(Store {
            conns,
            next: AtomicUsize::new(0),
            prefix: config.key_prefix.clone(),
            cluster,
            require_replicas: config.require_replicas,
            replica_timeout,
            redis_timeout,
            admit: Lua::new(ADMIT_LUA),
            record_failure: Lua::new(RECORD_FAILURE_LUA),
            begin_idempotent: Lua::new(BEGIN_IDEMPOTENT_LUA),
            complete_idempotent: Lua::new(COMPLETE_IDEMPOTENT_LUA),
            release_idempotent: Lua::new(RELEASE_IDEMPOTENT_LUA),
        })
    }

    /// The deployment, for the startup log line (no address: URLs may hold passwords).
    pub fn describe(&self) -> String {
        let kind = match self.conns.first() {
            Some(Conn::Single(_)) => "single Redis",
            Some(Conn::Cluster(_)) => "Redis Cluster",
            Some(Conn::Sentinel(_)) => "Redis via Sentinel",
            None => "nothing",
        };
        format!("{kind}, {} connection(s)", self.conns.len())
    }

    fn fail_key(&self, client: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + 5 + client.len());
        k.extend_from_slice(self.prefix.as_bytes());
        k.extend_from_slice(b"fail:");
        k.extend_from_slice(client.as_bytes());
        k
    }

    fn nonce_key(&self, fingerprint: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + 6 + 2 * fingerprint.len());
        k.extend_from_slice(self.prefix.as_bytes());
        k.extend_from_slice(b"nonce:");
        k.extend_from_slice(hex::encode(fingerprint).as_bytes());
        k
    }

    fn idem_key(&self, key: IdemBytes<'_>) -> Vec<u8> {
        let key = key.bytes();
        let mut k = Vec::with_capacity(self.prefix.len() + 5 + 2 * key.len());
        k.extend_from_slice(self.prefix.as_bytes());
        k.extend_from_slice(b"idem:");
        k.extend_from_slice(hex::encode(key).as_bytes());
        k
    }

    fn conn(&self) -> &Conn {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        &self.conns[i]
    }

    /// Runs one script whose answer is two integers: see [`Store::eval_value`].
    async fn eval(
        &self,
        lua: &Lua,
        keys: &[&[u8]],
        args: &[&[u8]],
        wait: bool,
    ) -> Result<((i64, i64), Option<i64>), StoreError> {
        let (reply, acked) = self.eval_value(lua, keys, args, wait).await?;
        match reply {
            Value::Array(items) => match items.as_slice() {
                [Value::Int(a), Value::Int(b)] => Ok(((*a, *b), acked)),
                _ => Err(StoreError::BadReply),
            },
            _ => Err(StoreError::BadReply),
        }
    }

    /// Runs one script (EVALSHA, then EVAL if Redis does not have it cached yet, e.g. after a
    /// restart) with the WAIT of `--require-replicas` pipelined after it when `wait` is set.
    /// Returns the script's reply and the number of replicas WAIT counted.
    async fn eval_value(
        &self,
        lua: &Lua,
        keys: &[&[u8]],
        args: &[&[u8]],
        wait: bool,
    ) -> Result<(Value, Option<i64>), StoreError> {
        let wait = wait && self.require_replicas > 0;
        let deadline = if wait {
            self.redis_timeout + self.replica_timeout
        } else {
            self.redis_timeout
        };
        // The script and its WAIT must go on the same connection (WAIT counts the replicas
        // that have this connection's writes), so both are one pipeline.
        let conn = self.conn();
        let started = Instant::now();
        let pipe = |by_sha: bool| {
            let mut pipe = redis::pipe();
            let cmd = if by_sha {
                pipe.cmd("EVALSHA").arg(&lua.sha)
            } else {
                pipe.cmd("EVAL").arg(lua.code)
            };
            cmd.arg(keys.len()).arg(keys).arg(args);
            if wait {
                pipe.cmd("WAIT")
                    .arg(self.require_replicas)
                    .arg(self.replica_timeout.as_millis() as u64);
            }
            pipe
        };
        let replies = match conn.query(&pipe(true), deadline).await {
            Err(StoreError::Redis(e))
                if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) =>
            {
                // Nothing ran: NOSCRIPT is answered before the script starts.
                conn.query(&pipe(false), deadline).await?
            }
            other => other?,
        };
        let mut replies = replies.into_iter();
        let reply = replies.next().ok_or(StoreError::BadReply)?;
        let acked = if wait {
            match replies.next() {
                Some(Value::Int(n)) => Some(n),
                _ => return Err(StoreError::BadReply),
            }
        } else {
            None
        };
        if matches!(acked, Some(n) if n < i64::from(self.require_replicas)) {
            let left = deadline.saturating_sub(started.elapsed());
            conn.too_few_replicas(started, left).await;
        }
        Ok((reply, acked))
    }

    fn check_replicated(&self, acked: Option<i64>) -> Result<(), StoreError> {
        match acked {
            Some(n) if n < i64::from(self.require_replicas) => Err(StoreError::Unreplicated),
            _ => Ok(()),
        }
    }

    /// Refuses a locked-out client, then claims the fingerprint once (see the module doc).
    pub async fn admit(&self, op: AdmitOp<'_>) -> Result<AdmitOutcome, StoreError> {
        let fail_key = op.lockout.map(|(client, _)| self.fail_key(client));
        let nonce_key = op.claim.map(|(fp, _)| self.nonce_key(fp));
        let max = op.lockout.map(|(_, m)| m).unwrap_or(0).to_string();
        let ttl = op.claim.map(|(_, t)| t).unwrap_or(0).to_string();
        let (max, ttl) = (max.as_bytes(), ttl.as_bytes());
        let outcome = |(locked, claimed): (i64, i64)| AdmitOutcome {
            locked_for_seconds: u64::try_from(locked).unwrap_or(0),
            claimed: claimed == 1,
        };
        match (&fail_key, &nonce_key) {
            (Some(f), Some(n)) if !self.cluster || Slot::for_key(f) == Slot::for_key(n) => {
                let (r, acked) = self
                    .eval(&self.admit, &[f, n], &[b"lc", max, ttl], true)
                    .await?;
                let o = outcome(r);
                if o.claimed {
                    self.check_replicated(acked)?;
                }
                Ok(o)
            }
            (Some(f), Some(n)) => {
                // Redis Cluster, two slots: one script cannot touch both keys, so the lockout
                // check goes first, and the claim only follows for a client not locked out.
                let (r, _) = self
                    .eval(&self.admit, &[f], &[b"l", max, ttl], false)
                    .await?;
                let o = outcome(r);
                if o.locked_for_seconds > 0 {
                    return Ok(o);
                }
                let (r, acked) = self
                    .eval(&self.admit, &[n], &[b"c", max, ttl], true)
                    .await?;
                let o = outcome(r);
                if o.claimed {
                    self.check_replicated(acked)?;
                }
                Ok(o)
            }
            (Some(f), None) => {
                let (r, _) = self
                    .eval(&self.admit, &[f], &[b"l", max, ttl], false)
                    .await?;
                Ok(outcome(r))
            }
            (None, Some(n)) => {
                let (r, acked) = self
                    .eval(&self.admit, &[n], &[b"c", max, ttl], true)
                    .await?;
                let o = outcome(r);
                if o.claimed {
                    self.check_replicated(acked)?;
                }
                Ok(o)
            }
            (None, None) => Ok(AdmitOutcome {
                locked_for_seconds: 0,
                claimed: false,
            }),
        }
    }

    /// Counts one failure of `client` in a window of `window_seconds` from its first failure.
    pub async fn record_failure(
        &self,
        client: &str,
        window_seconds: u32,
        max_failures: u32,
    ) -> Result<FailureOutcome, StoreError> {
        let key = self.fail_key(client);
        let window = window_seconds.to_string();
        let ((failures, ttl), acked) = self
            .eval(&self.record_failure, &[&key], &[window.as_bytes()], true)
            .await?;
        self.check_replicated(acked)?;
        let failures = u32::try_from(failures.max(0)).unwrap_or(u32::MAX);
        let locked_for_seconds = if failures >= max_failures {
            u64::try_from(ttl.max(1)).unwrap_or(1)
        } else {
            0
        };
        Ok(FailureOutcome {
            failures,
            locked_for_seconds,
        })
    }

    /// Claims `key` for `request` in flight under `token`, or says what holds it (see
    /// `BEGIN_IDEMPOTENT_LUA`). With `--require-replicas`, a claim must be acknowledged.
    pub async fn begin_idempotent(
        &self,
        key: IdemBytes<'_>,
        request: IdemBytes<'_>,
        token: IdemBytes<'_>,
        in_flight_seconds: u32,
    ) -> Result<BeginOutcome, StoreError> {
        let record_key = self.idem_key(key);
        let record = IdempotencyRecord::in_flight(request, token);
        let seconds = in_flight_seconds.to_string();
        let (reply, acked) = self
            .eval_value(
                &self.begin_idempotent,
                &[&record_key],
                &[&record, request.bytes(), seconds.as_bytes()],
                true,
            )
            .await?;
        let Value::Array(items) = reply else {
            return Err(StoreError::BadReply);
        };
        let outcome = match items.as_slice() {
            [Value::Int(1)] => BeginOutcome::Claimed,
            [Value::Int(2)] => BeginOutcome::InProgress,
            [Value::Int(3), Value::BulkString(part)] => BeginOutcome::Completed(
                IdempotencyRecord::parse_response_part(part).ok_or(StoreError::BadReply)?,
            ),
            [Value::Int(4)] => BeginOutcome::CompletedNotStored,
            [Value::Int(5)] => BeginOutcome::Mismatch,
            _ => return Err(StoreError::BadReply),
        };
        if outcome == BeginOutcome::Claimed {
            self.check_replicated(acked)?;
        }
        Ok(outcome)
    }

    /// Replaces the in-flight record that `token` holds with the completed one (`response`
    /// None: completed, nothing to replay), kept `ttl_seconds`. False when the claim is not
    /// this token's. With `--require-replicas`, a stored record must be acknowledged.
    pub async fn complete_idempotent(
        &self,
        key: IdemBytes<'_>,
        token: IdemBytes<'_>,
        ttl_seconds: u32,
        response: Option<Replay<'_>>,
    ) -> Result<bool, StoreError> {
        let record_key = self.idem_key(key);
        let (kind, part) = match &response {
            Some(r) => (
                IdempotencyRecord::COMPLETED,
                IdempotencyRecord::response_part(r),
            ),
            None => (IdempotencyRecord::COMPLETED_NOT_STORED, Vec::new()),
        };
        let ttl = ttl_seconds.to_string();
        let (reply, acked) = self
            .eval_value(
                &self.complete_idempotent,
                &[&record_key],
                &[token.bytes(), &[kind], &part, ttl.as_bytes()],
                true,
            )
            .await?;
        self.settled(reply, acked)
    }

    /// Deletes the in-flight record that `token` holds. False when the claim is not this
    /// token's. With `--require-replicas`, the deletion must be acknowledged.
    pub async fn release_idempotent(
        &self,
        key: IdemBytes<'_>,
        token: IdemBytes<'_>,
    ) -> Result<bool, StoreError> {
        let record_key = self.idem_key(key);
        let (reply, acked) = self
            .eval_value(
                &self.release_idempotent,
                &[&record_key],
                &[token.bytes()],
                true,
            )
            .await?;
        self.settled(reply, acked)
    }

    /// The answer of a Complete or a Release: 1 wrote (and must be replicated), 0 wrote nothing.
    fn settled(&self, reply: Value, acked: Option<i64>) -> Result<bool, StoreError> {
        match reply {
            Value::Int(1) => {
                self.check_replicated(acked)?;
                Ok(true)
            }
            Value::Int(0) => Ok(false),
            _ => Err(StoreError::BadReply),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_name_no_data() {
        let e = StoreError::Redis(RedisError::from(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert_eq!(e.kind(), "connection refused");
        assert_eq!(StoreError::Timeout.kind(), "deadline exceeded");
    }

    #[test]
    fn an_in_flight_record_is_kind_length_request_then_token() {
        let request = IdemBytes::new(&[0xa1, 0xa2, 0xa3]).unwrap();
        let token = IdemBytes::new(&[0x7e, 0x7f]).unwrap();
        assert_eq!(
            IdempotencyRecord::in_flight(request, token),
            [1, 3, 0xa1, 0xa2, 0xa3, 0x7e, 0x7f]
        );
        let longest = [9u8; 64];
        let record = IdempotencyRecord::in_flight(IdemBytes::new(&longest).unwrap(), token);
        assert_eq!(record[1], 64);
        assert!(IdemBytes::new(&[]).is_none());
        assert!(IdemBytes::new(&[9; 65]).is_none());
    }

    #[test]
    fn a_response_part_reads_back_and_a_cut_one_does_not() {
        let r = Replay::new(201, "text/plain; charset=utf-8", b"created").unwrap();
        let part = IdempotencyRecord::response_part(&r);
        assert_eq!(&part[..4], &[0, 201, 0, 25]);
        assert_eq!(part.len(), 4 + 25 + 7);
        let back = IdempotencyRecord::parse_response_part(&part).unwrap();
        assert_eq!(
            back,
            StoredReplay {
                status: 201,
                content_type: "text/plain; charset=utf-8".into(),
                body: b"created".to_vec(),
            }
        );
        let ct = "é".repeat(256);
        let r = Replay::new(599, &ct, b"").unwrap();
        let back =
            IdempotencyRecord::parse_response_part(&IdempotencyRecord::response_part(&r)).unwrap();
        assert_eq!(
            (back.status, back.content_type, back.body),
            (599, ct, vec![])
        );
        for cut in [0, 1, 3, 4 + 24] {
            assert_eq!(
                IdempotencyRecord::parse_response_part(&part[..cut]),
                None,
                "{cut}"
            );
        }
        // A content type that is not UTF-8 is not a record this service wrote.
        assert_eq!(
            IdempotencyRecord::parse_response_part(&[0, 200, 0, 1, 0xff]),
            None
        );
    }

    #[test]
    fn a_replay_is_refused_outside_its_bounds_naming_the_field() {
        assert!(Replay::new(100, "", b"").is_ok());
        assert!(Replay::new(599, &"a".repeat(256), &vec![0; 1 << 20]).is_ok());
        let err =
            |status, ct: &str, len: usize| Replay::new(status, ct, &vec![0; len]).unwrap_err();
        assert_eq!(err(99, "", 0), "response.status: 100 to 599");
        assert_eq!(err(600, "", 0), "response.status: 100 to 599");
        assert_eq!(err(65_536 + 200, "", 0), "response.status: 100 to 599");
        assert_eq!(
            err(200, &"a".repeat(257), 0),
            "response.content_type: at most 256 characters"
        );
        assert_eq!(
            err(200, "", (1 << 20) + 1),
            "response.body: at most 1048576 bytes"
        );
    }

    #[test]
    fn script_hashes_are_sha1() {
        let l = Lua::new(ADMIT_LUA);
        assert_eq!(l.sha.len(), 40);
        assert!(l.sha.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
