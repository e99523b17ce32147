//! The request pipeline, host-independent (sans-IO, in the manner of rustls): an adapter feeds
//! an [`Exchange`] what arrived (request headers, body bytes, trailers, response headers) and
//! does what it answers ([`Action`]). The engine never calls a host. What it needs from one
//! (the clock, the client address, the route name) it asks through [`Host`], lazily, because
//! in wasm each of those is a host call; shared state (nonces, lockout counters) goes through
//! [`State`], so the checks do not know where state lives.
//!
//! One [`Engine`] per configuration, shared by every stream; one [`Exchange`] per stream.

use std::net::IpAddr;

use crate::checks::digest;
use crate::checks::rfc9421::{self, Message};
use crate::checks::signature::{
    self, Keyring, Scheme, SignatureVerified, SignedRequest, SigningKey, Verifier,
};
use crate::checks::upload::{self, UploadInspector};
use crate::checks::webhook;
use crate::checks::{api_key, cors, host, ip, path, shape};
use crate::config::{Config, Mode};
use crate::events::{self, Event, Events};
use crate::headers::{self, RequestHeaders};
use crate::idempotency::{self, Begun, Fingerprint, PolicyIdempotency, StoredResponse, Table};
use crate::reject::{self, Reject};
use crate::remote::{self, AdmitRequest, AdmitResponse, Call, FailureMode, Unavailable};
use crate::store::{Lockout, NonceCache, Recorded, SharedStore};
use sha2::{Digest, Sha256};

pub mod body;

pub use crate::metrics::Metric;
pub use body::{BodyInspector, BodyWatch};

/// What the engine needs from the runtime around it. Each method may cost a host call, so the
/// engine asks only when a check needs the answer, and at most once per request.
pub trait Host {
    /// Unix time in seconds.
    fn now(&mut self) -> u64;
    /// The client address Envoy determined (`source.address`).
    fn client_address(&mut self) -> Option<IpAddr>;
    /// The Envoy route's name (`xds.route_name`).
    fn route_name(&mut self) -> Option<String>;
    /// Why Envoy produced the response (`response.code_details`), for the 429 reshape.
    fn response_code_details(&mut self) -> Vec<u8>;
    /// Counters, handed to the host's metrics as the adapter sees fit.
    fn count(&mut self, metric: Metric, delta: i64);
}

/// State shared by every stream of every worker. The local implementation ([`LocalState`])
/// answers at once; a remote one may answer later, which is why these are the only calls the
/// pipeline makes into shared state.
pub trait State {
    /// Claims a verified nonce until `expires_at`, or refuses it as a replay.
    fn claim_nonce(
        &self,
        proof: &SignatureVerified,
        nonce: &str,
        expires_at: u64,
        now: u64,
    ) -> Result<Recorded, Reject>;
    /// Refuses a client that is locked out. `client` (the lockout key of the address) is asked
    /// for only when some lockout is in force.
    fn check_lockout(
        &self,
        client: &mut dyn FnMut() -> Option<String>,
        now: u64,
    ) -> Result<(), Reject>;
    /// Counts one failed authentication for `client`; whether it started a lockout (brought
    /// the address to `max_failures`).
    fn record_failure(&self, client: &str, now: u64) -> bool;
    /// Whether a lockout is configured (the engine skips address reads otherwise).
    fn lockout_prefix(&self) -> Option<u8>;
    /// Begins an attempt with an idempotency key (see [`idempotency::Table::begin`]).
    fn begin_idempotent(&self, attempt: &Attempt, in_flight_seconds: u64, now: u64) -> Begun;
    /// Stores an attempt's response (`None`: completed, not kept) for `ttl_seconds`.
    fn complete_idempotent(
        &self,
        attempt: &Attempt,
        response: Option<StoredResponse>,
        ttl_seconds: u64,
        now: u64,
    ) -> bool;
    /// Gives an attempt's claim up.
    fn release_idempotent(&self, attempt: &Attempt, now: u64) -> bool;
}

/// One attempt at a request with an idempotency key: the fingerprints the stores keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The caller's scope and the key.
    pub key: Fingerprint,
    /// Method, path and body.
    pub request: Fingerprint,
    /// This attempt's token.
    pub token: Fingerprint,
}

/// The replay cache and the lockout over any [`SharedStore`] with compare-and-swap: Envoy's
/// shared data in wasm, a sharded map in process memory natively, a `MemoryStore` in tests.
pub struct LocalState<S> {
    pub store: S,
    pub cache: NonceCache,
    pub lockout: Option<Lockout>,
    pub idempotency: Option<Table>,
}

impl<S: SharedStore> LocalState<S> {
    pub fn new(config: &Config, store: S) -> Self {
        Self {
            store,
            cache: NonceCache::new(config.replay_capacity, config.window_seconds),
            lockout: config.lockout.map(|l| {
                Lockout::new(l.capacity, l.max_failures, l.window_seconds)
                    .with_ipv6_prefix(l.ipv6_prefix)
            }),
            idempotency: config.idempotency_capacity.map(Table::new),
        }
    }

    /// Creates the fixed keys before any request can use them; see `store.rs` for why.
    pub fn prepare(&self) -> Result<(), &'static str> {
        self.cache
            .ensure_shards(&self.store)
            .map_err(|_| "could not create the replay cache")?;
        if let Some(lockout) = &self.lockout {
            lockout
                .ensure_shards(&self.store)
                .map_err(|_| "could not create the lockout counters")?;
        }
        if let Some(table) = &self.idempotency {
            table
                .ensure_buckets(&self.store)
                .map_err(|_| "could not create the idempotency table")?;
        }
        Ok(())
    }
}

impl<S> LocalState<S> {
    /// The line a runtime logs once a configuration is loaded (ids only, never a secret).
    pub fn describe(&self, config: &Config) -> String {
        let ids: Vec<&str> = config.keys.iter().map(|k| k.id.as_str()).collect();
        format!(
            "{} policies, {} signing secrets ({}), replay cache of {} nonces in {} shards",
            config.policies.len(),
            config.keys.len(),
            ids.join(", "),
            config.replay_capacity,
            self.cache.shards()
        )
    }
}

/// A state shared through an `Arc` (as the tests do, to look into it).
impl<T: State + ?Sized> State for std::sync::Arc<T> {
    fn claim_nonce(
        &self,
        proof: &SignatureVerified,
        nonce: &str,
        expires_at: u64,
        now: u64,
    ) -> Result<Recorded, Reject> {
        (**self).claim_nonce(proof, nonce, expires_at, now)
    }

    fn check_lockout(
        &self,
        client: &mut dyn FnMut() -> Option<String>,
        now: u64,
    ) -> Result<(), Reject> {
        (**self).check_lockout(client, now)
    }

    fn record_failure(&self, client: &str, now: u64) -> bool {
        (**self).record_failure(client, now)
    }

    fn lockout_prefix(&self) -> Option<u8> {
        (**self).lockout_prefix()
    }

    fn begin_idempotent(&self, attempt: &Attempt, in_flight_seconds: u64, now: u64) -> Begun {
        (**self).begin_idempotent(attempt, in_flight_seconds, now)
    }

    fn complete_idempotent(
        &self,
        attempt: &Attempt,
        response: Option<StoredResponse>,
        ttl_seconds: u64,
        now: u64,
    ) -> bool {
        (**self).complete_idempotent(attempt, response, ttl_seconds, now)
    }

    fn release_idempotent(&self, attempt: &Attempt, now: u64) -> bool {
        (**self).release_idempotent(attempt, now)
    }
}

impl<S: SharedStore> State for LocalState<S> {
    fn claim_nonce(
        &self,
        proof: &SignatureVerified,
        nonce: &str,
        expires_at: u64,
        now: u64,
    ) -> Result<Recorded, Reject> {
        self.cache
            .record(&self.store, proof, nonce, expires_at, now)
    }

    fn check_lockout(
        &self,
        client: &mut dyn FnMut() -> Option<String>,
        now: u64,
    ) -> Result<(), Reject> {
        match &self.lockout {
            Some(lockout) => lockout.check(&self.store, client, now),
            None => Ok(()),
        }
    }

    fn record_failure(&self, client: &str, now: u64) -> bool {
        self.lockout.as_ref().is_some_and(|lockout| {
            lockout.record_failure(&self.store, client, now) == Some(lockout.max_failures)
        })
    }

    fn lockout_prefix(&self) -> Option<u8> {
        self.lockout.as_ref().map(|l| l.ipv6_prefix)
    }

    fn begin_idempotent(&self, attempt: &Attempt, in_flight_seconds: u64, now: u64) -> Begun {
        match &self.idempotency {
            Some(table) => table.begin(
                &self.store,
                &attempt.key,
                &attempt.request,
                &attempt.token,
                in_flight_seconds,
                now,
            ),
            None => Begun::Unavailable,
        }
    }

    fn complete_idempotent(
        &self,
        attempt: &Attempt,
        response: Option<StoredResponse>,
        ttl_seconds: u64,
        now: u64,
    ) -> bool {
        self.idempotency.as_ref().is_some_and(|table| {
            table.complete(
                &self.store,
                &attempt.key,
                &attempt.token,
                response,
                ttl_seconds,
                now,
            )
        })
    }

    fn release_idempotent(&self, attempt: &Attempt, now: u64) -> bool {
        self.idempotency
            .as_ref()
            .is_some_and(|table| table.release(&self.store, &attempt.key, &attempt.token, now))
    }
}

/// One configuration, compiled, with its signing secrets as ready HMAC states and the state
/// every stream shares.
pub struct Engine {
    pub config: Config,
    keyring: Keyring,
    state: Box<dyn State + Send + Sync>,
    /// Security events and their flood control (one table per engine: per VM in wasm, per
    /// configuration natively). The wasm root context ticks it; see `events`.
    pub events: Events,
}

impl Engine {
    pub fn new(config: Config, state: Box<dyn State + Send + Sync>) -> Self {
        Self {
            keyring: Keyring::new(&config.keys),
            events: Events::new(config.event_suppress_seconds),
            config,
            state,
        }
    }
}

/// What the adapter does next with the request (or, for `Reply`, instead of it).
#[derive(Debug)]
pub enum Action {
    /// Let the request (or this part of it) go on, after writing `Edits` to its headers.
    Continue(Edits),
    /// Hold the request: the body is needed first.
    Pause,
    /// Answer it here (a rejection or a preflight answer); the rest of the request is ignored.
    Reply(LocalReply),
    /// Hold the request and make this call to the state service (`remote_state.cluster`,
    /// within `remote_state.timeout_ms`); hand its answer, or its failure, to
    /// [`Exchange::on_state_answer`], and do what that answers.
    Call(Call),
}

/// Request header edits: remove every copy (`None`) or set one value. Adapters that write the
/// whole map at once take [`Edits::rewritten`]; others apply `list` one by one.
#[derive(Debug, Default)]
pub struct Edits {
    pub list: Vec<(String, Option<String>)>,
    headers: Vec<(String, Vec<u8>)>,
}

impl Edits {
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The request headers as they arrived, with the edits applied.
    pub fn rewritten(self) -> Vec<(String, Vec<u8>)> {
        let mut pairs = self.headers;
        RequestHeaders::apply(&mut pairs, &self.list);
        pairs
    }
}

/// A complete local reply, security and CORS headers included (a runtime need not run its
/// response hook over its own replies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// What to do with the response headers.
#[derive(Debug)]
pub enum ResponseAction {
    /// Leave them as they are.
    Keep,
    /// Replace the whole map with this one.
    Replace(Vec<(String, Vec<u8>)>),
}

enum Phase {
    /// Nothing (more) to check on this request.
    Pass,
    /// Waiting for the body of a signed request: its MAC (`verifier`) covers the body, or
    /// (RFC 9421, verified from its headers) its Content-Digest does.
    Verifying {
        signed: Signed,
        verifier: Option<Verifier>,
    },
    /// Waiting for the body of an unsigned request with an idempotency key (its fingerprint
    /// covers the body), `read` bytes of at most `limit` so far.
    Reading { read: u64, limit: u64 },
    /// Waiting for the state service's answer.
    Calling(Pending),
    /// A local reply was sent (a rejection or a preflight answer); ignore the rest.
    Answered,
}

/// What a call to the state service decides.
enum Pending {
    /// The fleet-wide lockout check of a request whose credential passed locally.
    Lockout,
    /// A verified signed request: the fleet-wide claim of its nonce (and lockout check).
    Claim { key_id: String },
    /// A wrong credential, counted fleet-wide before it is answered with `why`.
    Failure { why: Reject },
    /// The fleet-wide claim of an idempotency key this Envoy claimed (`key_id`: the request
    /// was signed with that key).
    Begin { key_id: Option<String> },
    /// A completed or released idempotency key, told to the fleet before the response ends.
    Finish,
}

/// The idempotency key of a request, from its headers until its response is stored.
struct Idem {
    settings: PolicyIdempotency,
    key: String,
    method: String,
    path: String,
    /// Whose key it is: `key:<api key id>`, `ip:<address>`, or `sig:<secret id>` once verified.
    scope: String,
    /// Set once this request claimed the key: its response is captured and stored.
    attempt: Option<Attempt>,
    /// The claim is held in the fleet store too.
    remote: bool,
    response: Captured,
}

/// The response being captured for replay.
#[derive(Default)]
struct Captured {
    status: u16,
    content_type: String,
    body: Vec<u8>,
    /// Larger than `max_response_bytes`: completed, not kept.
    too_large: bool,
}

impl Captured {
    fn capture_headers(&mut self, headers: &[(String, Vec<u8>)], max: u32) {
        let value = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_slice())
        };
        let number = |name: &str| {
            value(name)
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        self.status = number(":status")
            .and_then(|s| u16::try_from(s).ok())
            .unwrap_or(0);
        let content_type = value("content-type").unwrap_or_default();
        match std::str::from_utf8(content_type) {
            Ok(ct) if idempotency::replayable_content_type(content_type) => {
                self.content_type = ct.to_string();
            }
            // A content type that cannot be replayed as it was: the response is not kept.
            _ => self.too_large = true,
        }
        if number("content-length").is_some_and(|len| len > u64::from(max)) {
            self.too_large = true;
        }
    }

    fn capture_body(&mut self, chunk: &[u8], max: u32) {
        if self.too_large {
            return;
        }
        if self.body.len().saturating_add(chunk.len()) > max as usize {
            self.too_large = true;
            self.body = Vec::new();
            return;
        }
        self.body.extend_from_slice(chunk);
    }
}

/// One request and its response, as the engine follows it.
pub struct Exchange {
    phase: Phase,
    request_id: Option<String>,
    /// Index of the selected policy.
    policy: Option<usize>,
    /// CORS headers the response gets (an allowed cross-origin request).
    cors_headers: Vec<(&'static str, String)>,
    /// Whether the response varies by `Origin` (the policy has CORS settings).
    vary_origin: bool,
    /// The client address, canonical; read on first use.
    client_ip: Option<Option<IpAddr>>,
    /// The request headers as read, and the edits to write when the request passes.
    edits: Edits,
    /// A body that replaces the response body (a rate limiter's 429 in problem+json).
    replacement_body: Option<Vec<u8>>,
    /// The request's idempotency key, while it takes part.
    idem: Option<Idem>,
    /// SHA-256 of the request body, for the idempotency fingerprint.
    body_digest: Option<Sha256>,
    /// The fleet-wide lockout check of an unsigned request, due once its body was read.
    lockout_due: bool,
    /// The body rules of this request (its size limit, inspectors), whether the body is held
    /// or streams on; `None`: no rule reads the body.
    body: Option<BodyWatch>,
    /// What a security event says about this request, filled in as the checks learn it.
    about: About,
    /// Report mode: the rejections the request would have had, in the order found (one per
    /// code); `logged` of them are logged and counted already.
    would_reject: Vec<Reject>,
    logged: usize,
    /// The clock as last read for a check (headers, end of body): an event's timestamp.
    clock: Option<u64>,
}

/// The request as its security events describe it (never a credential).
#[derive(Default)]
struct About {
    method: String,
    /// The path without query values ([`events::loggable_path`]).
    path: String,
    /// Envoy's route name, read on first use.
    route: Option<Option<String>>,
    /// The API key that authenticated.
    api_key_id: Option<String>,
    /// The signing secret that verified the signature.
    secret_id: Option<String>,
    /// The key that authenticated has the admin role: its use is audited when it passes.
    admin: bool,
    /// A CORS preflight: answered or refused as in enforce mode, whatever the policy's mode.
    preflight: bool,
}

/// How an adapter hands the request body to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyMode {
    /// No check reads it: let it go on (or keep holding it, while [`Exchange::calling`] or
    /// after [`Exchange::answered`]) without copying it out of the host.
    Ignore,
    /// The request is held and its body buffered by the host (a signed request being verified,
    /// or a state call pending): each callback sees everything buffered so far, so hand the
    /// engine only the bytes past those already handed over.
    Held,
    /// The body streams on to the upstream as it arrives, nothing buffered: every callback's
    /// bytes are new; hand them all over and do what the engine answers at once.
    Streamed,
}

impl Default for Exchange {
    fn default() -> Self {
        Self::new()
    }
}

impl Exchange {
    pub fn new() -> Self {
        Self {
            phase: Phase::Pass,
            request_id: None,
            policy: None,
            cors_headers: Vec::new(),
            vary_origin: false,
            client_ip: None,
            edits: Edits::default(),
            replacement_body: None,
            idem: None,
            body_digest: None,
            lockout_due: false,
            body: None,
            about: About::default(),
            would_reject: Vec::new(),
            logged: 0,
            clock: None,
        }
    }

    /// Whether the engine wants the request body, and how it arrives (see [`BodyMode`]).
    pub fn body_mode(&self) -> BodyMode {
        match (&self.phase, &self.body) {
            (Phase::Verifying { .. } | Phase::Reading { .. }, _) | (Phase::Calling(_), Some(_)) => {
                BodyMode::Held
            }
            (Phase::Pass, Some(_)) => BodyMode::Streamed,
            _ => BodyMode::Ignore,
        }
    }

    /// Whether the engine wants the request body at all. Adapters that must copy body bytes
    /// out of the host skip it otherwise.
    pub fn wants_body(&self) -> bool {
        self.body_mode() != BodyMode::Ignore
    }

    /// Whether the request is held for the state service's answer: body and trailers stay
    /// with the adapter (buffered) until [`Exchange::on_state_answer`] lets them go.
    pub fn calling(&self) -> bool {
        matches!(self.phase, Phase::Calling(_))
    }

    /// Whether a local reply was sent: the adapter ignores the rest of the request.
    pub fn answered(&self) -> bool {
        matches!(self.phase, Phase::Answered)
    }

    /// The selected policy's name for log lines, `-` before one is selected.
    pub fn policy_label<'e>(&self, engine: &'e Engine) -> &'e str {
        self.policy
            .and_then(|i| engine.config.policies.get(i))
            .map_or("-", |p| p.name.as_str())
    }

    fn client_ip(&mut self, host: &mut dyn Host) -> Option<IpAddr> {
        *self
            .client_ip
            .get_or_insert_with(|| host.client_address().map(ip::canonical))
    }

    /// The request headers arrived. `pairs` are all of them, names lowercase, values as bytes.
    pub fn on_request_headers(
        &mut self,
        engine: &Engine,
        pairs: Vec<(String, Vec<u8>)>,
        end_of_stream: bool,
        host: &mut dyn Host,
    ) -> Action {
        let headers = RequestHeaders::new(pairs);
        match self.check_headers(engine, &headers, end_of_stream, host) {
            Ok(proceed) => {
                self.edits.headers = headers.into_pairs();
                match proceed {
                    Proceed::Verify(signed, verifier, now) => {
                        self.finish(engine, signed, verifier, now, host)
                    }
                    Proceed::Wait => Action::Pause,
                    Proceed::Unsigned => self.unsigned_admit(engine, host),
                }
            }
            Err(Answer::Reject(why)) => self.reject(engine, why, host),
            Err(Answer::Preflight(answer)) => self.preflight_reply(engine, answer, host),
        }
    }

    /// Body bytes arrived: `chunk` is only what is new since the last call. Every consumer of
    /// the body is fed from here: first the [`BodyWatch`] (limit, inspectors), then what the
    /// phase needs (the signature's hash while verifying).
    pub fn on_request_body(
        &mut self,
        engine: &Engine,
        chunk: &[u8],
        end_of_stream: bool,
        host: &mut dyn Host,
    ) -> Action {
        self.body_arrived(engine, Chunk::Bytes(chunk), end_of_stream, host)
    }

    /// Body bytes arrived, of which only the number matters ([`Exchange::wants_body_bytes`]
    /// is false): an adapter that must copy bytes out of the host skips the copy.
    pub fn on_request_body_length(
        &mut self,
        engine: &Engine,
        length: usize,
        end_of_stream: bool,
        host: &mut dyn Host,
    ) -> Action {
        self.body_arrived(engine, Chunk::Length(length), end_of_stream, host)
    }

    /// Whether the body's bytes are needed (a signature to hash, an inspector to feed), or only
    /// how many there are (a size limit alone).
    pub fn wants_body_bytes(&self) -> bool {
        matches!(self.phase, Phase::Verifying { .. } | Phase::Reading { .. })
            || self.body.as_ref().is_some_and(BodyWatch::inspects)
    }

    fn body_arrived(
        &mut self,
        engine: &Engine,
        chunk: Chunk,
        end_of_stream: bool,
        host: &mut dyn Host,
    ) -> Action {
        if self.answered() {
            return Action::Pause;
        }
        let bytes = match chunk {
            Chunk::Bytes(bytes) => Some(bytes),
            Chunk::Length(_) if self.wants_body_bytes() => {
                // An adapter bug, not a client's doing: fail closed.
                log::error!("edge-warden: body bytes were needed but only a length came");
                return self.reject(engine, Reject::Internal, host);
            }
            Chunk::Length(_) => None,
        };
        let fed = self.body.as_mut().map(|watch| {
            let fed = match bytes {
                Some(bytes) => watch.feed(bytes),
                None => watch.count(chunk.len()),
            };
            fed.and_then(|()| {
                if end_of_stream {
                    watch.finish()
                } else {
                    Ok(())
                }
            })
        });
        if let Some(Err(why)) = fed {
            // Streamed: the upstream has seen part of the body; Envoy resets its request
            // when this reply goes to the client.
            if let Some(action) = self.body_refused(engine, why, host) {
                return action;
            }
        }
        match &mut self.phase {
            // Streams on at once: headers went upstream already, nothing to edit.
            Phase::Pass => Action::Continue(Edits::default()),
            // The held request goes on only once the answer is in.
            Phase::Answered | Phase::Calling(_) => Action::Pause,
            Phase::Verifying { verifier, .. } => {
                let bytes = bytes.unwrap_or_default();
                if let Some(verifier) = verifier {
                    verifier.update(bytes);
                }
                if let Some(digest) = self.body_digest.as_mut() {
                    digest.update(bytes);
                }
                if end_of_stream {
                    self.end_of_body(engine, host)
                } else {
                    Action::Pause
                }
            }
            Phase::Reading { read, limit } => {
                *read = read.saturating_add(chunk.len() as u64);
                if *read > *limit {
                    let limit = *limit;
                    return self.reject(engine, Reject::BodyTooLarge { limit }, host);
                }
                if let Some(digest) = self.body_digest.as_mut() {
                    digest.update(bytes.unwrap_or_default());
                }
                if end_of_stream {
                    self.end_of_body(engine, host)
                } else {
                    Action::Pause
                }
            }
        }
    }

    /// Request trailers arrived: a body followed by trailers ends here.
    pub fn on_request_trailers(&mut self, engine: &Engine, host: &mut dyn Host) -> Action {
        if !self.answered() {
            if let Some(Err(why)) = self.body.as_mut().map(BodyWatch::finish) {
                if let Some(action) = self.body_refused(engine, why, host) {
                    return action;
                }
            }
        }
        match self.phase {
            Phase::Verifying { .. } | Phase::Reading { .. } => self.end_of_body(engine, host),
            Phase::Answered | Phase::Calling(_) => Action::Pause,
            Phase::Pass => Action::Continue(Edits::default()),
        }
    }

    /// The response headers (all of them, `:status` included). Not called for the engine's own
    /// replies, which carry their headers already.
    pub fn on_response_headers(
        &mut self,
        engine: &Engine,
        headers: Vec<(String, Vec<u8>)>,
        host: &mut dyn Host,
    ) -> ResponseAction {
        if self.answered() {
            return ResponseAction::Keep;
        }
        let mut headers = headers;
        if let Some(idem) = self.idem.as_mut().filter(|i| i.attempt.is_some()) {
            idem.response
                .capture_headers(&headers, idem.settings.max_response_bytes);
        }
        let status_429 = headers
            .iter()
            .any(|(n, v)| n == ":status" && v.as_slice() == b"429");
        if status_429 {
            self.reshape_rate_limited(engine, &mut headers, host);
        }
        let vary: &[&str] = if self.vary_origin { &["Origin"] } else { &[] };
        // (Even an empty plan rewrites: a rate limiter's 429 still gets its Retry-After.)
        let headers = engine
            .config
            .response_headers
            .apply(headers, &self.cors_headers, vary);
        ResponseAction::Replace(headers)
    }

    /// Whether this response is captured for an idempotency key: the adapter hands its body
    /// to [`Exchange::on_response_body`] and calls [`Exchange::on_response_end`] at its end.
    pub fn captures_response(&self) -> bool {
        self.idem.as_ref().is_some_and(|i| i.attempt.is_some())
    }

    /// Whether the response body bytes are still wanted (a capture within its size cap).
    pub fn wants_response_body(&self) -> bool {
        self.idem
            .as_ref()
            .is_some_and(|i| i.attempt.is_some() && !i.response.too_large)
    }

    /// Whether the response body is held (buffered by the host) until its end: a captured
    /// response with the fleet store. A client that has every byte of a response (its
    /// `content-length`) would not wait for the end of stream, so the bytes themselves wait
    /// until the state service has the response. One over the cap goes on at once.
    pub fn holds_response_body(&self) -> bool {
        self.idem
            .as_ref()
            .is_some_and(|i| i.attempt.is_some() && i.remote && !i.response.too_large)
    }

    /// Response body bytes: `chunk` is only what is new since the last call.
    pub fn on_response_body(&mut self, chunk: &[u8]) {
        if let Some(idem) = self.idem.as_mut().filter(|i| i.attempt.is_some()) {
            idem.response
                .capture_body(chunk, idem.settings.max_response_bytes);
        }
    }

    /// The response body could not be read: the key completes without a response to replay.
    pub fn forgo_response_body(&mut self) {
        if let Some(idem) = self.idem.as_mut() {
            idem.response.too_large = true;
            idem.response.body = Vec::new();
        }
    }

    /// The response ended (its headers or last body bytes had end of stream, or its trailers
    /// came). A captured response completes its idempotency key (a 5xx, 408 or 429 releases
    /// it, so a retry goes through); with the fleet store, the returned call must be answered
    /// (to [`Exchange::on_state_answer`]) before the response's end goes on, so that a client
    /// that has it can retry at any Envoy.
    pub fn on_response_end(&mut self, engine: &Engine, host: &mut dyn Host) -> Option<Call> {
        let idem = self.idem.take()?;
        let attempt = idem.attempt?;
        let now = host.now();
        let status = idem.response.status;
        // Envoy answered (a timeout, the overload manager) while the fleet's claim was still
        // out: the request never went upstream, and the fleet may hold the key by now. Release
        // it there too; the late answer finds no call pending and changes nothing.
        let begin_out = matches!(self.phase, Phase::Calling(Pending::Begin { .. }));
        let call = if begin_out || matches!(status, 0..=99 | 408 | 429 | 500..) {
            engine.state.release_idempotent(&attempt, now);
            Call::release_idempotent(&remote::ReleaseIdempotentRequest {
                key: attempt.key.to_vec(),
                token: attempt.token.to_vec(),
            })
        } else {
            let ttl = idem.settings.ttl_seconds;
            let kept = !idem.response.too_large;
            let response = kept.then_some(StoredResponse {
                status,
                content_type: idem.response.content_type,
                body: idem.response.body,
            });
            let wire = response.as_ref().map(|r| remote::StoredResponse {
                status: u32::from(r.status),
                content_type: r.content_type.clone(),
                body: r.body.clone(),
            });
            engine
                .state
                .complete_idempotent(&attempt, response, ttl, now);
            Call::complete_idempotent(&remote::CompleteIdempotentRequest {
                key: attempt.key.to_vec(),
                token: attempt.token.to_vec(),
                ttl_seconds: u32::try_from(ttl).unwrap_or(u32::MAX),
                response: wire,
            })
        };
        if !idem.remote && !begin_out {
            return None;
        }
        host.count(Metric::StateCalls, 1);
        self.phase = Phase::Calling(Pending::Finish);
        Some(call)
    }

    /// The stream ended without its response ending (the client went away): this Envoy's
    /// claim of an idempotency key goes at once; the fleet's lapses after `in_flight_seconds`.
    pub fn on_stream_end(&mut self, engine: &Engine, host: &mut dyn Host) {
        self.release_local(engine, host);
    }

    /// The body that replaces the response body (once, at its end), if any.
    pub fn take_replacement_body(&mut self) -> Option<Vec<u8>> {
        self.replacement_body.take()
    }

    /// Whether the response body is to be replaced (the adapter holds it until its end).
    pub fn replaces_response_body(&self) -> bool {
        self.replacement_body.is_some()
    }

    fn end_of_body(&mut self, engine: &Engine, host: &mut dyn Host) -> Action {
        match std::mem::replace(&mut self.phase, Phase::Pass) {
            Phase::Verifying { signed, verifier } => {
                // A fresh clock: a body can be held open until the timestamp has left the
                // window and the first use of its nonce has been purged from the cache.
                let now = host.now();
                self.clock = Some(now);
                self.finish(engine, signed, verifier, now, host)
            }
            Phase::Reading { .. } => self.unsigned_admit(engine, host),
            other => {
                self.phase = other;
                Action::Continue(Edits::default())
            }
        }
    }

    /// Every header-only check, in order.
    fn check_headers(
        &mut self,
        engine: &Engine,
        headers: &RequestHeaders,
        end_of_stream: bool,
        host: &mut dyn Host,
    ) -> Result<Proceed, Answer> {
        let config = &engine.config;
        // Envoy's id (it replaces a client's at the edge); anything that is not a plain token
        // of at most 128 characters is not written into a log line or a reply.
        self.request_id = headers
            .first("x-request-id")
            .and_then(reject::usable_request_id)
            .map(str::to_string);

        // The identity headers are ours alone: drop any copy the client sent, on every route,
        // also spelled with underscores (`x_edge_warden_role`), which WSGI/CGI-style servers
        // read as the same header. So is report mode's list of codes.
        let identity = [
            config.key_id_header.as_str(),
            &config.api_key_id_header,
            &config.role_header,
            &config.client_header,
            events::WOULD_REJECT_HEADER,
        ];
        for name in headers.names() {
            if identity.iter().any(|ours| headers::same_name(name, ours)) {
                self.edits.list.push((name.to_string(), None));
            }
        }
        // The raw API key never reaches the upstream (or its logs), whatever the route,
        // unless `api_keys.strip` is false.
        if config.strip_api_key && headers.first(&config.key_source.header).is_some() {
            self.edits
                .list
                .push((config.key_source.header.clone(), None));
        }

        // Path safety and control characters come before a policy is selected: the policy must
        // be chosen on a path that means the same to the upstream (see `checks::path`). So they
        // are enforced whatever a policy's mode.
        path::check(headers.first(":path").unwrap_or_default()).map_err(Answer::Reject)?;
        if headers
            .iter()
            .any(|(n, v)| n != ":path" && !path::header_value_is_clean(v))
        {
            return Err(Answer::Reject(Reject::InvalidCharacters {
                part: "value of a header",
            }));
        }

        let method = headers.first_str(":method").unwrap_or("");
        let path = headers.first_str(":path").unwrap_or("");
        self.about.method = method.chars().take(32).collect();
        self.about.path = events::loggable_path(path);
        let origin = headers.first("origin");
        // A preflight (Fetch standard): OPTIONS with Origin and Access-Control-Request-Method.
        // It is matched to the policy of the request it asks about, so by the requested method.
        let requested_method = headers.first("access-control-request-method");
        let preflight = match (method, origin, requested_method) {
            ("OPTIONS", Some(_), Some(m)) => Some(m),
            _ => None,
        };
        self.about.preflight = preflight.is_some();
        let select_method = preflight
            .and_then(|m| std::str::from_utf8(m).ok())
            .unwrap_or(method);
        let route = if config.uses_route_names {
            self.about
                .route
                .get_or_insert_with(|| host.route_name())
                .clone()
        } else {
            None
        };
        let Some(index) = config.select_index(route.as_deref(), select_method, path) else {
            return Err(Answer::Reject(Reject::NoMatchingPolicy));
        };
        self.policy = Some(index);
        let policy = &config.policies[index];

        // From here on, every failed check goes through `note`: in enforce mode it ends the
        // checks with the rejection; in report mode it is noted and the next check runs.
        if !policy.trusted_hosts.is_empty() {
            let trusted = host::check(&policy.trusted_hosts, headers.first(":authority"));
            self.noted(engine, trusted)?;
        }
        let allowed = policy.ip.check(|| self.client_ip(host));
        self.noted(engine, allowed)?;

        if let Some(cors) = &policy.cors {
            self.vary_origin = true;
            if let (Some(origin), Some(requested_method)) = (origin, preflight) {
                let asked_headers = headers.first("access-control-request-headers");
                return match cors.preflight(origin, requested_method, asked_headers) {
                    Ok(answer) => Err(Answer::Preflight(answer)),
                    Err(why) => Err(Answer::Reject(why)),
                };
            }
            if let Some(cors::Outcome::Allow(origin)) = self.noted(engine, cors.check(origin))? {
                self.cors_headers = cors.response_headers(&origin);
            }
        } else if preflight.is_some() {
            // No CORS settings on this route: cross-origin browser calls are not allowed.
            return Err(Answer::Reject(Reject::OriginNotAllowed));
        }

        // Request shape: plain comparisons on the headers, before any credential is checked
        // (no state, no lockout count) and before any body byte is read.
        let declared = shape::declared_length(headers);
        let has_body = !end_of_stream && declared != Some(0);
        self.noted(engine, policy.request.check(method, headers, has_body))?;
        let watch = self.noted(engine, body_watch(policy, headers))?;
        if let (Some(limit), Some(length)) = (policy.body_limit(), declared) {
            if length > limit {
                self.note(engine, Reject::BodyTooLarge { limit })?;
            }
        }
        if let Some(watch) = watch.filter(|w| !w.is_idle()) {
            let watch = self.body.insert(watch);
            if end_of_stream {
                let finished = watch.finish();
                self.noted(engine, finished)?;
            }
        }

        // The clock for the header-time checks; a body that follows is judged by a fresh one.
        let now = host.now();
        self.clock = Some(now);
        // Summaries of suppressed events that are due (this clock read is there anyway).
        engine.events.tick(now);
        let presented = match &policy.api_key {
            Some(_) => self
                .noted(engine, config.key_source.find(headers))?
                .flatten(),
            None => None,
        };
        // Wherever a credential is checked (required, or presented to an optional key), a
        // locked-out address is refused even with a valid one, so guessing cannot go on.
        let checks_credential = policy.requires_credential() || presented.is_some();
        if let (true, Some(prefix)) = (checks_credential, engine.state.lockout_prefix()) {
            let mut client = || self.client_ip(host).map(|ip| ip::lockout_key(ip, prefix));
            let open = engine.state.check_lockout(&mut client, now);
            self.noted(engine, open)?;
        }

        let mut client = None;
        if let Some(requirement) = &policy.api_key {
            match presented {
                None if requirement.required => self.note(engine, Reject::MissingApiKey)?,
                None => {}
                Some(presented) => {
                    // A bearer key goes (the key header was dropped above already), also when
                    // report mode lets a wrong one through.
                    if config.strip_api_key && presented.header != config.key_source.header {
                        self.edits.list.push((presented.header.clone(), None));
                    }
                    let found = api_key::authenticate(&config.api_keys, presented.key, now);
                    if let Some(found) = self.noted(engine, found)? {
                        let key = &config.api_keys[found.index];
                        self.about.api_key_id = Some(key.id.clone());
                        let role = api_key::authorize(&requirement.roles, key);
                        let authorized = role.is_ok();
                        self.noted(engine, role)?;
                        self.about.admin = authorized && key.role == api_key::Role::Admin;
                        client = Some(format!("key:{}", key.id));
                        self.edits
                            .list
                            .push((config.api_key_id_header.clone(), Some(key.id.clone())));
                        self.edits.list.push((
                            config.role_header.clone(),
                            Some(key.role.as_str().to_string()),
                        ));
                    }
                }
            }
        }
        if client.is_none() {
            client = self.client_ip(host).map(|ip| format!("ip:{ip}"));
        }
        // The key is read here, but claimed only once the request has passed every other
        // check (a signed one: after its nonce), so a refused request never holds a key.
        if let Some(settings) = policy.idempotency.as_ref().filter(|i| i.covers(method)) {
            match idempotency::find_key(headers) {
                Err(why) => self.note(engine, why)?,
                Ok(None) if settings.required => {
                    self.note(engine, Reject::IdempotencyKeyMissing)?;
                }
                Ok(None) => {}
                // Report mode checks the key's presence and form only: the table is neither
                // read nor written, so nothing is replayed or refused for a duplicate.
                Ok(Some(_)) if self.reporting(engine) => {}
                Ok(Some(key)) => {
                    self.idem = Some(Idem {
                        settings: settings.clone(),
                        key,
                        method: method.to_string(),
                        path: path.to_string(),
                        scope: client.clone().unwrap_or_else(|| "-".to_string()),
                        attempt: None,
                        remote: false,
                        response: Captured::default(),
                    });
                    self.body_digest = Some(Sha256::new());
                }
            }
        }
        if let Some(client) = client {
            self.edits
                .list
                .push((config.client_header.clone(), Some(client)));
        }

        let Some(scheme) = &policy.signature else {
            // The fleet may have locked this address out where this Envoy has not seen it;
            // a signed request asks in the same call that claims its nonce.
            self.lockout_due = checks_credential;
            if self.idem.is_some() && !end_of_stream {
                // The key's fingerprint covers the body: it is held (up to the policy's
                // `max_body_bytes`) until it has all arrived.
                let limit = policy.max_body_bytes;
                if declared.is_some_and(|len| len > limit) {
                    return Err(Answer::Reject(Reject::BodyTooLarge { limit }));
                }
                self.phase = Phase::Reading { read: 0, limit };
                return Ok(Proceed::Wait);
            }
            return Ok(Proceed::Unsigned);
        };
        // Every header-only check runs before any body is read. In report mode a signature
        // that cannot be read or verified is noted, and there is nothing more to verify.
        let (signed, verifier) = match scheme {
            Scheme::Reference => {
                let Some(request) = self.noted(engine, signature::parse_headers(headers))? else {
                    return Ok(Proceed::Unsigned);
                };
                let window = signature::check_window(request.timestamp, now, config.window_seconds);
                self.noted(engine, window)?;
                let verifier = Verifier::new(&engine.keyring);
                (Signed::Reference(request), Some(verifier))
            }
            Scheme::Webhook(settings) => {
                let Some(delivery) = self.noted(engine, webhook::parse(settings, headers))? else {
                    return Ok(Proceed::Unsigned);
                };
                if let Some(timestamp) = delivery.timestamp {
                    let window = signature::check_window_of(
                        timestamp,
                        now,
                        settings.tolerance,
                        settings.preset.timestamp_name(),
                    );
                    self.noted(engine, window)?;
                }
                let verifier = Verifier::with_prefix(&settings.keyring, &delivery.prefix);
                (Signed::Webhook(delivery), Some(verifier))
            }
            Scheme::Rfc9421(settings) => {
                // The signature covers headers and derived components only: verified now. A
                // body is held until its Content-Digest (checked by the body watch) is known
                // to match, and the nonce is claimed then.
                // What the signature covers must be what the upstream gets: a path or host
                // that is not UTF-8 is refused rather than read as empty.
                let text = |name| match headers.first(name) {
                    None => Ok(""),
                    Some(v) => std::str::from_utf8(v).map_err(|_| Reject::InvalidCharacters {
                        part: "path or host of a signed request",
                    }),
                };
                let (Some(path), Some(authority)) = (
                    self.noted(engine, text(":path"))?,
                    self.noted(engine, text(":authority"))?,
                ) else {
                    return Ok(Proceed::Unsigned);
                };
                let message = Message {
                    method,
                    scheme: headers.first_str(":scheme").unwrap_or("http"),
                    authority,
                    path,
                    headers,
                };
                let verified = rfc9421::verify(settings, &config.keys, &message, now);
                let Some(verified) = self.noted(engine, verified)? else {
                    return Ok(Proceed::Unsigned);
                };
                (Signed::Rfc9421(verified), None)
            }
        };
        if end_of_stream {
            return Ok(Proceed::Verify(signed, verifier, now));
        }
        self.phase = Phase::Verifying { signed, verifier };
        Ok(Proceed::Wait)
    }

    /// Lets the request go upstream with the header edits. Every path that passes a request
    /// goes through here, so client copies of identity headers can never slip through.
    fn pass(&mut self, engine: &Engine, host: &mut dyn Host) -> Action {
        host.count(
            Metric::Allowed {
                policy: self.policy,
            },
            1,
        );
        if let Some(codes) = self.log_reported(engine, host) {
            self.edits
                .list
                .push((events::WOULD_REJECT_HEADER.to_string(), Some(codes)));
        }
        if self.about.admin {
            // The reference's "audit admin actions": every request an admin key makes.
            let now = self.event_time(host);
            let event = self.event(engine, "admin_key_used", None, now, host);
            engine.events.always(&event);
        }
        self.phase = Phase::Pass;
        Action::Continue(std::mem::take(&mut self.edits))
    }

    /// An event's timestamp: the clock the checks last read (no host call), else now.
    fn event_time(&mut self, host: &mut dyn Host) -> u64 {
        match self.clock {
            Some(now) => now,
            None => host.now(),
        }
    }

    /// Whether failed checks are noted rather than enforced: the policy is in report mode
    /// (a preflight is always answered as in enforce mode).
    fn reporting(&self, engine: &Engine) -> bool {
        !self.about.preflight
            && self
                .policy
                .and_then(|i| engine.config.policies.get(i))
                .is_some_and(|p| p.mode == Mode::Report)
    }

    /// A failed header check: `Err` ends the checks with it (enforce mode); in report mode it
    /// is noted and the checks go on.
    fn note(&mut self, engine: &Engine, why: Reject) -> Result<(), Answer> {
        if !self.reporting(engine) {
            return Err(Answer::Reject(why));
        }
        if !self.would_reject.iter().any(|w| w.code() == why.code()) {
            self.would_reject.push(why);
        }
        Ok(())
    }

    /// A check's result through [`Exchange::note`]: its value, or `None` when it failed and
    /// report mode noted it.
    fn noted<T>(
        &mut self,
        engine: &Engine,
        result: Result<T, Reject>,
    ) -> Result<Option<T>, Answer> {
        match result {
            Ok(value) => Ok(Some(value)),
            Err(why) => self.note(engine, why).map(|()| None),
        }
    }

    /// A failure found after the header checks: the rejection's action (enforce mode), or
    /// `None` when report mode noted it.
    fn refuse(&mut self, engine: &Engine, why: Reject, host: &mut dyn Host) -> Option<Action> {
        match self.note(engine, why) {
            Ok(()) => None,
            Err(Answer::Reject(why)) => Some(self.reject(engine, why, host)),
            Err(Answer::Preflight(_)) => None,
        }
    }

    /// [`Exchange::refuse`] for a signed request's last steps: in report mode it goes on
    /// unverified (no signing key named upstream).
    fn refuse_or_admit(&mut self, engine: &Engine, why: Reject, host: &mut dyn Host) -> Action {
        match self.refuse(engine, why, host) {
            Some(action) => action,
            None => self.admitted(engine, None, host),
        }
    }

    /// A body rule failed: the rejection (enforce mode), or, in report mode, the body rules
    /// stop and the request goes on; a body that streams on is past its headers, so what it
    /// would have been refused for is logged now, without the upstream header.
    fn body_refused(
        &mut self,
        engine: &Engine,
        why: Reject,
        host: &mut dyn Host,
    ) -> Option<Action> {
        let action = self.refuse(engine, why, host);
        if action.is_none() {
            self.body = None;
            if matches!(self.phase, Phase::Pass) {
                self.log_reported(engine, host);
            }
        }
        action
    }

    /// Logs and counts what report mode noted since the last time; the codes of everything
    /// noted, for the upstream header (`None`: nothing).
    fn log_reported(&mut self, engine: &Engine, host: &mut dyn Host) -> Option<String> {
        if self.would_reject.is_empty() {
            return None;
        }
        let now = self.event_time(host);
        let unlogged: Vec<Reject> = self
            .would_reject
            .iter()
            .skip(self.logged)
            .cloned()
            .collect();
        for why in unlogged {
            host.count(
                Metric::Reported {
                    code: why.code(),
                    policy: self.policy,
                },
                1,
            );
            let event = self.event(engine, "request_rejected", Some((&why, false)), now, host);
            engine.events.rejected(&event);
        }
        self.logged = self.would_reject.len();
        let codes: Vec<&str> = self.would_reject.iter().map(Reject::code).collect();
        Some(codes.join(","))
    }

    /// A security event about this request (`rejection`: the reason and whether it was
    /// enforced). Reads the client address and the route name if nothing has yet.
    fn event<'s>(
        &'s mut self,
        engine: &'s Engine,
        kind: &'static str,
        rejection: Option<(&Reject, bool)>,
        now: u64,
        host: &mut dyn Host,
    ) -> Event<'s> {
        let client = self.client_ip(host);
        if self.about.route.is_none() {
            self.about.route = Some(host.route_name());
        }
        let policy = self
            .policy
            .and_then(|i| engine.config.policies.get(i))
            .map(|p| p.name.as_str());
        Event {
            event: kind,
            code: rejection.map(|(why, _)| why.code()),
            status: rejection.map(|(why, _)| why.status()),
            policy,
            route: self.about.route.as_ref().and_then(|r| r.as_deref()),
            client,
            key_id: self.about.api_key_id.as_deref(),
            secret_id: self.about.secret_id.as_deref(),
            method: &self.about.method,
            path: &self.about.path,
            request_id: self.request_id.as_deref(),
            timestamp: now,
            enforced: rejection.map(|(_, enforced)| enforced),
        }
    }

    /// Verifies the signature over everything read, checks the timestamp against `now` (the
    /// clock when the request ended), claims the nonce, and lets the request go.
    fn finish(
        &mut self,
        engine: &Engine,
        signed: Signed,
        verifier: Option<Verifier>,
        now: u64,
        host: &mut dyn Host,
    ) -> Action {
        let config = &engine.config;
        let policy = self.policy.and_then(|i| config.policies.get(i));
        // In report mode a failure here is noted and the request goes on without its signing
        // key named upstream; only a verified signature in its window claims its nonce.
        let verdict = match verdict(config, policy, signed, verifier, now) {
            Ok(verdict) => verdict,
            Err(why) => return self.refuse_or_admit(engine, why, host),
        };
        let Verdict {
            proof,
            key_id,
            timestamp,
            replay_id,
            expires_at,
        } = verdict;
        self.about.secret_id = Some(key_id.clone());
        // The nonce's record stays in the cache until exactly the moment this check starts
        // refusing its timestamp, so a replay is always caught by one of the two.
        if let Some((timestamp, window, what)) = timestamp {
            if let Err(why) = signature::check_window_of(timestamp, now, window, what) {
                return self.refuse_or_admit(engine, why, host);
            }
        }
        match engine
            .state
            .claim_nonce(&proof, &replay_id, expires_at, now)
        {
            Ok(recorded) => {
                host.count(
                    Metric::NonceClaimed {
                        policy: self.policy,
                    },
                    1,
                );
                host.count(
                    Metric::ReplayEntries,
                    1 - i64::try_from(recorded.purged).unwrap_or(0),
                );
            }
            Err(why) => return self.refuse_or_admit(engine, why, host),
        }
        if config.remote.is_some() {
            // Claimed here first, so a replay to this Envoy never needs the call; now the fleet.
            let ttl = expires_at.saturating_sub(now).clamp(1, u64::from(u32::MAX));
            let call = Call::admit(&AdmitRequest {
                lockout: self.remote_lockout(engine, host),
                claim: Some(remote::Claim {
                    fingerprint: remote::fingerprint(&replay_id),
                    ttl_seconds: u32::try_from(ttl).unwrap_or(u32::MAX),
                }),
            });
            return self.call(Pending::Claim { key_id }, call, host);
        }
        self.admitted(engine, Some(key_id), host)
    }

    /// An unsigned request has passed its local checks (and its body, if held, has arrived):
    /// the fleet-wide lockout check, if due, then the idempotency key.
    fn unsigned_admit(&mut self, engine: &Engine, host: &mut dyn Host) -> Action {
        if std::mem::take(&mut self.lockout_due) {
            if let Some(lockout) = self.remote_lockout(engine, host) {
                let call = Call::admit(&AdmitRequest {
                    lockout: Some(lockout),
                    claim: None,
                });
                return self.call(Pending::Lockout, call, host);
            }
        }
        self.admitted(engine, None, host)
    }

    /// Every check has passed (`key_id`: the request was signed with that key). A request
    /// with an idempotency key claims it now, here and then in the fleet store, or is answered
    /// from what an earlier attempt left.
    fn admitted(&mut self, engine: &Engine, key_id: Option<String>, host: &mut dyn Host) -> Action {
        let Some(idem) = self.idem.as_mut() else {
            return self.pass_as(engine, key_id, host);
        };
        if let Some(id) = &key_id {
            idem.scope = format!("sig:{id}");
        }
        let digest = self.body_digest.take().unwrap_or_default().finalize();
        let now = host.now();
        let key = idempotency::record_key(&idem.scope, &idem.key);
        let attempt = Attempt {
            key,
            request: idempotency::request_fingerprint(&idem.method, &idem.path, &digest),
            token: idempotency::attempt_token(&key, self.request_id.as_deref(), now),
        };
        let in_flight = idem.settings.in_flight_seconds;
        let begun = engine.state.begin_idempotent(&attempt, in_flight, now);
        if begun != Begun::Claimed {
            self.idem = None;
            return self.decided(engine, begun, host);
        }
        idem.attempt = Some(attempt.clone());
        if engine.config.remote.is_some() {
            let call = Call::begin_idempotent(&remote::BeginIdempotentRequest {
                key: attempt.key.to_vec(),
                request: attempt.request.to_vec(),
                token: attempt.token.to_vec(),
                in_flight_seconds: u32::try_from(in_flight).unwrap_or(u32::MAX),
            });
            return self.call(Pending::Begin { key_id }, call, host);
        }
        self.pass_as(engine, key_id, host)
    }

    /// Answers a request whose idempotency key was not claimed by it.
    fn decided(&mut self, engine: &Engine, begun: Begun, host: &mut dyn Host) -> Action {
        let why = match begun {
            Begun::Completed(response) => return self.replay(engine, response, host),
            Begun::InProgress => Reject::IdempotencyRequestInProgress,
            Begun::CompletedNotStored => Reject::IdempotencyResponseNotStored,
            Begun::Mismatch => Reject::IdempotencyKeyReused,
            Begun::Claimed | Begun::Full | Begun::Unavailable => Reject::IdempotencyUnavailable,
        };
        self.reject(engine, why, host)
    }

    /// Replays a stored response (its status, content type and body) without the upstream.
    fn replay(&mut self, engine: &Engine, response: StoredResponse, host: &mut dyn Host) -> Action {
        host.count(
            Metric::IdempotentReplay {
                policy: self.policy,
            },
            1,
        );
        log::info!(
            "edge-warden: replayed the stored response of an idempotency key: status={} \
             policy={} request_id={}",
            response.status,
            self.policy_label(engine),
            self.request_id.as_deref().unwrap_or("-"),
        );
        let mut headers = vec![("idempotent-replayed", "true".to_string())];
        if !response.content_type.is_empty() {
            headers.push(("content-type", response.content_type));
        }
        let reply = self.local_reply(engine, u32::from(response.status), headers, response.body);
        self.phase = Phase::Answered;
        Action::Reply(reply)
    }

    /// Gives up this Envoy's claim of the request's idempotency key (the fleet's was refused
    /// or never made).
    fn release_local(&mut self, engine: &Engine, host: &mut dyn Host) {
        if let Some(attempt) = self.idem.take().and_then(|i| i.attempt) {
            let now = host.now();
            engine.state.release_idempotent(&attempt, now);
        }
    }

    fn pass_as(&mut self, engine: &Engine, key_id: Option<String>, host: &mut dyn Host) -> Action {
        match key_id {
            Some(key_id) => self.pass_signed(engine, key_id, host),
            None => self.pass(engine, host),
        }
    }

    /// Passes a verified signed request, naming its signing key to the upstream.
    fn pass_signed(&mut self, engine: &Engine, key_id: String, host: &mut dyn Host) -> Action {
        self.edits
            .list
            .push((engine.config.key_id_header.clone(), Some(key_id)));
        self.pass(engine, host)
    }

    /// The lockout part of a call to the state service, when the fleet shares lockouts.
    fn remote_lockout(
        &mut self,
        engine: &Engine,
        host: &mut dyn Host,
    ) -> Option<remote::LockoutCheck> {
        let config = &engine.config;
        let (Some(_), Some(lockout)) = (&config.remote, &config.lockout) else {
            return None;
        };
        let ip = self.client_ip(host)?;
        Some(remote::LockoutCheck {
            client: ip::lockout_key(ip, lockout.ipv6_prefix),
            max_failures: lockout.max_failures,
        })
    }

    /// Holds the request for a call to the state service.
    fn call(&mut self, pending: Pending, call: Call, host: &mut dyn Host) -> Action {
        host.count(Metric::StateCalls, 1);
        self.phase = Phase::Calling(pending);
        Action::Call(call)
    }

    /// The state service answered (`Ok`: the response message) or could not (`Err`: refused,
    /// reset, timed out, a gRPC error). Returns what to do with the held request.
    pub fn on_state_answer(
        &mut self,
        engine: &Engine,
        answer: Result<Vec<u8>, Unavailable>,
        host: &mut dyn Host,
    ) -> Action {
        let pending = match std::mem::replace(&mut self.phase, Phase::Pass) {
            Phase::Calling(pending) => pending,
            other => {
                // No call was pending (a late answer): nothing to decide.
                self.phase = other;
                return Action::Pause;
            }
        };
        if let Pending::Failure { why } = pending {
            // The reply was decided; the answer only tells whether the address was locked
            // out before this failure (then it is told so, as the local lockout would).
            let why = match remote::decode::<remote::RecordFailureResponse>(answer) {
                Ok(r) if r.locked_for_seconds > 0 && r.failures > self.max_failures(engine) => {
                    Reject::TooManyAuthFailures {
                        retry_after: r.locked_for_seconds,
                    }
                }
                Ok(_) => why,
                Err(failure) => {
                    self.unavailable(
                        engine,
                        failure,
                        "a failed authentication was counted by this Envoy only",
                        host,
                    );
                    why
                }
            };
            return self.answer(engine, &why);
        }
        if let Pending::Begin { key_id } = pending {
            return self.on_begin_answer(engine, key_id, answer, host);
        }
        if let Pending::Finish = pending {
            // Complete and Release answer the same shape: whether the claim was still ours.
            match remote::decode::<remote::CompleteIdempotentResponse>(answer) {
                Ok(done) if done.stored => {}
                Ok(_) => log::warn!(
                    "edge-warden: the fleet's claim of an idempotency key had lapsed \
                     (in_flight_seconds) before its response: policy={} request_id={}",
                    self.policy_label(engine),
                    self.request_id.as_deref().unwrap_or("-"),
                ),
                Err(failure) => self.unavailable(
                    engine,
                    failure,
                    "an idempotency key was completed or released by this Envoy only",
                    host,
                ),
            }
            return Action::Continue(Edits::default());
        }
        let answer = match remote::decode::<AdmitResponse>(answer) {
            Ok(answer) => answer,
            Err(failure) => {
                let mode = engine.config.remote.as_ref().map(|r| r.failure_mode);
                if mode != Some(FailureMode::FailOpen) {
                    self.unavailable(engine, failure, "refusing the request (fail_closed)", host);
                    if let Some(action) = self.refuse(engine, Reject::StateUnavailable, host) {
                        return action;
                    }
                } else {
                    host.count(Metric::StateFailedOpen, 1);
                    self.unavailable(
                        engine,
                        failure,
                        "letting the request through on local checks only (fail_open)",
                        host,
                    );
                }
                // (Report mode goes on as fail_open would.)
                AdmitResponse {
                    locked_for_seconds: 0,
                    claimed: true,
                }
            }
        };
        if answer.locked_for_seconds > 0 {
            let retry_after = answer.locked_for_seconds;
            let why = Reject::TooManyAuthFailures { retry_after };
            if let Some(action) = self.refuse(engine, why, host) {
                return action;
            }
        }
        match pending {
            Pending::Claim { .. } if !answer.claimed => {
                self.refuse_or_admit(engine, Reject::NonceReplayed, host)
            }
            Pending::Claim { key_id } => self.admitted(engine, Some(key_id), host),
            _ => self.admitted(engine, None, host),
        }
    }

    /// The fleet store answered the claim of an idempotency key this Envoy holds.
    fn on_begin_answer(
        &mut self,
        engine: &Engine,
        key_id: Option<String>,
        answer: Result<Vec<u8>, Unavailable>,
        host: &mut dyn Host,
    ) -> Action {
        let answer = match remote::decode::<remote::BeginIdempotentResponse>(answer) {
            Ok(answer) => answer,
            Err(failure) => {
                let mode = engine.config.remote.as_ref().map(|r| r.failure_mode);
                if mode == Some(FailureMode::FailOpen) {
                    host.count(Metric::StateFailedOpen, 1);
                    self.unavailable(
                        engine,
                        failure,
                        "the idempotency key is held by this Envoy only (fail_open)",
                        host,
                    );
                    return self.pass_as(engine, key_id, host);
                }
                self.unavailable(engine, failure, "refusing the request (fail_closed)", host);
                self.release_local(engine, host);
                return self.reject(engine, Reject::StateUnavailable, host);
            }
        };
        let begun = match remote::Outcome::try_from(answer.outcome) {
            Ok(remote::Outcome::Claimed) => {
                if let Some(idem) = self.idem.as_mut() {
                    idem.remote = true;
                }
                return self.pass_as(engine, key_id, host);
            }
            Ok(remote::Outcome::InProgress) => Begun::InProgress,
            Ok(remote::Outcome::Completed) => match answer.response {
                Some(r) => match u16::try_from(r.status) {
                    Ok(status)
                        if (100..=599).contains(&status)
                            && idempotency::replayable_content_type(r.content_type.as_bytes()) =>
                    {
                        Begun::Completed(StoredResponse {
                            status,
                            content_type: r.content_type,
                            body: r.body,
                        })
                    }
                    _ => Begun::Unavailable,
                },
                None => Begun::CompletedNotStored,
            },
            Ok(remote::Outcome::CompletedNotStored) => Begun::CompletedNotStored,
            Ok(remote::Outcome::Mismatch) => Begun::Mismatch,
            Ok(remote::Outcome::Unspecified) | Err(_) => Begun::Unavailable,
        };
        // Another Envoy holds or held the key: this one's claim goes.
        self.release_local(engine, host);
        self.decided(engine, begun, host)
    }

    fn max_failures(&self, engine: &Engine) -> u32 {
        engine.config.lockout.map_or(u32::MAX, |l| l.max_failures)
    }

    /// Counts and logs a call that brought no answer, with what the request gets instead.
    fn unavailable(
        &self,
        engine: &Engine,
        Unavailable(reason): Unavailable,
        outcome: &str,
        host: &mut dyn Host,
    ) {
        host.count(Metric::StateUnavailable, 1);
        log::warn!(
            "edge-warden: state service unavailable ({reason}); {outcome}: policy={} request_id={}",
            self.policy_label(engine),
            self.request_id.as_deref().unwrap_or("-"),
        );
    }

    /// A local reply with the security headers every response gets, and `cors` headers.
    fn local_reply(
        &self,
        engine: &Engine,
        status: u32,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
    ) -> LocalReply {
        let mut pairs: Vec<(String, Vec<u8>)> = Vec::with_capacity(headers.len() + 12);
        pairs.push((":status".to_string(), status.to_string().into_bytes()));
        pairs.extend(
            headers
                .into_iter()
                .map(|(n, v)| (n.to_string(), v.into_bytes())),
        );
        let vary: &[&str] = if self.vary_origin { &["Origin"] } else { &[] };
        let mut pairs = engine
            .config
            .response_headers
            .apply(pairs, &self.cors_headers, vary);
        pairs.retain(|(n, _)| !n.starts_with(':'));
        LocalReply {
            status,
            headers: pairs,
            body,
        }
    }

    /// Answers a CORS preflight itself: browsers cannot sign a preflight or attach an API key,
    /// so it never goes upstream.
    fn preflight_reply(
        &mut self,
        engine: &Engine,
        answer: Vec<(&'static str, String)>,
        host: &mut dyn Host,
    ) -> Action {
        host.count(
            Metric::PreflightAnswered {
                policy: self.policy,
            },
            1,
        );
        let reply = self.local_reply(engine, 204, answer, Vec::new());
        self.phase = Phase::Answered;
        Action::Reply(reply)
    }

    fn reject(&mut self, engine: &Engine, why: Reject, host: &mut dyn Host) -> Action {
        // One security event per rejection: the code and where, never a credential (flood
        // control in `events`).
        let at = self.event_time(host);
        let event = self.event(engine, "request_rejected", Some((&why, true)), at, host);
        engine.events.rejected(&event);
        host.count(
            Metric::Rejected {
                code: why.code(),
                policy: self.policy,
            },
            1,
        );
        // A wrong credential counts toward the lockout of the address that sent it: here,
        // then (when the fleet shares state) everywhere, before the reply goes. Report mode
        // never gets here with one: it writes no lockout counters.
        if let (true, Some(prefix)) = (why.is_auth_failure(), engine.state.lockout_prefix()) {
            if let Some(ip) = self.client_ip(host) {
                // A fresh clock: a failure found after a slow upload belongs to now, not to
                // when its headers arrived.
                let now = host.now();
                let client = ip::lockout_key(ip, prefix);
                if engine.state.record_failure(&client, now) {
                    host.count(Metric::LockoutStarted, 1);
                }
                if let (Some(_), Some(lockout)) = (&engine.config.remote, &engine.config.lockout) {
                    let call = Call::record_failure(&remote::RecordFailureRequest {
                        client,
                        window_seconds: u32::try_from(lockout.window_seconds).unwrap_or(u32::MAX),
                        max_failures: lockout.max_failures,
                    });
                    return self.call(Pending::Failure { why }, call, host);
                }
            }
        }
        self.answer(engine, &why)
    }

    /// Sends the reply of a rejection (already logged and counted).
    fn answer(&mut self, engine: &Engine, why: &Reject) -> Action {
        let response = reject::respond(why, self.request_id.as_deref());
        let reply = self.local_reply(engine, response.status, response.headers, response.body);
        self.phase = Phase::Answered;
        Action::Reply(reply)
    }

    /// A 429 that Envoy's rate limiters produced (not the upstream's) gets edge-warden's
    /// problem+json body, so clients see one error shape everywhere.
    fn reshape_rate_limited(
        &mut self,
        engine: &Engine,
        headers: &mut Vec<(String, Vec<u8>)>,
        host: &mut dyn Host,
    ) {
        let details = host.response_code_details();
        if details != b"local_rate_limited" && details != b"request_rate_limited" {
            return;
        }
        let response = reject::respond(&Reject::RateLimited, self.request_id.as_deref());
        headers::replace(headers, "content-length", None);
        for (name, value) in &response.headers {
            headers::replace(headers, name, Some(value.as_bytes()));
        }
        log::info!(
            "edge-warden: rate limited: policy={} request_id={}",
            self.policy_label(engine),
            self.request_id.as_deref().unwrap_or("-"),
        );
        self.replacement_body = Some(response.body);
    }
}

/// The body rules of a request on `policy`: the place every consumer of a passing body is
/// added: the body limit, then the upload inspector when the policy has `upload` and the
/// request is an upload (what the headers alone refuse, such as a bad file name in a raw
/// upload's Content-Disposition, is refused here, before any body byte is read).
fn body_watch(
    policy: &crate::config::Policy,
    headers: &RequestHeaders,
) -> Result<BodyWatch, Reject> {
    let mut watch = BodyWatch::new(policy.body_limit());
    if let Some(rules) = &policy.upload {
        if let Some(inspector) = upload::start(rules, headers)? {
            watch = watch.with(Box::new(inspector));
        }
    }
    // RFC 9530: required by the policy; under RFC 9421 one that is sent is checked whether or
    // not it is required, so a signature that covers it is always held to it (and one that
    // must cover it but has no header to cover is refused by the signature check).
    let rfc9421 = matches!(policy.signature, Some(Scheme::Rfc9421(_)));
    let required = policy.content_digest;
    if required || rfc9421 {
        match digest::parse(headers)? {
            Some(check) => watch = watch.with(Box::new(check)),
            None if required => {
                return Err(Reject::MissingHeader {
                    header: "Content-Digest".to_string(),
                })
            }
            None => {}
        }
    }
    Ok(watch)
}

/// A signed request between its headers and the end of its body.
enum Signed {
    /// The reference scheme: its MAC still needs the body, timestamp and nonce.
    Reference(SignedRequest),
    /// A webhook delivery: its MAC still needs the body.
    Webhook(webhook::Signed),
    /// Verified from its headers; its nonce is claimed once the body (and its digest) passed.
    Rfc9421(rfc9421::Verified),
}

/// A verified signature: what the replay store claims for it, and what is checked last.
struct Verdict {
    proof: SignatureVerified,
    /// The id of the secret that matched (named upstream).
    key_id: String,
    /// The signed timestamp, its window and its name, checked again with the clock at the end.
    timestamp: Option<(u64, u64, &'static str)>,
    /// The replay store's claim, and the unix second until which it is kept.
    replay_id: String,
    expires_at: u64,
}

/// Finishes the verification of `signed` with what the body added.
fn verdict(
    config: &Config,
    policy: Option<&crate::config::Policy>,
    signed: Signed,
    verifier: Option<Verifier>,
    now: u64,
) -> Result<Verdict, Reject> {
    let key_id = |keys: &[SigningKey], index: usize| {
        keys.get(index).map(|k| k.id.clone()).unwrap_or_default()
    };
    let scheme = policy.and_then(|p| p.signature.as_ref());
    match (signed, verifier, scheme) {
        (Signed::Reference(request), Some(verifier), _) => {
            let proof = verifier.finish(&request)?;
            Ok(Verdict {
                key_id: key_id(&config.keys, proof.key_index),
                timestamp: Some((
                    request.timestamp,
                    config.window_seconds,
                    crate::reject::TIMESTAMP_HEADER,
                )),
                expires_at: request.timestamp.saturating_add(config.window_seconds),
                replay_id: request.nonce,
                proof,
            })
        }
        (Signed::Webhook(delivery), Some(verifier), Some(Scheme::Webhook(settings))) => {
            let wrong = Reject::WrongSignature {
                scheme: settings.preset.describes(),
            };
            let (proof, mac) = verifier.finish_any(b"", &delivery.candidates, wrong)?;
            let name = policy.map_or("", |p| p.name.as_str());
            let (replay_id, expires_at) = settings.replay_claim(name, &delivery, &mac, now);
            Ok(Verdict {
                key_id: key_id(&settings.keys, proof.key_index),
                timestamp: delivery
                    .timestamp
                    .map(|t| (t, settings.tolerance, settings.preset.timestamp_name())),
                replay_id,
                expires_at,
                proof,
            })
        }
        (Signed::Rfc9421(verified), None, Some(Scheme::Rfc9421(settings))) => {
            if verified.expires.is_some_and(|expires| now > expires) {
                return Err(Reject::SignatureNotAccepted {
                    reason: "it has expired",
                });
            }
            let window = settings.window_seconds();
            Ok(Verdict {
                key_id: key_id(&config.keys, verified.proof.key_index),
                timestamp: Some((verified.created, window, rfc9421::CREATED)),
                expires_at: verified.created.saturating_add(window),
                replay_id: verified.replay_id,
                proof: verified.proof,
            })
        }
        // The phase was set from this policy's scheme: anything else is a bug here.
        _ => Err(Reject::Internal),
    }
}

/// The upload inspector reads a body as the watch hands it over: every chunk once, in order,
/// held (signed) or streamed, then the end.
impl BodyInspector for UploadInspector {
    fn feed(&mut self, chunk: &[u8]) -> Result<(), Reject> {
        UploadInspector::feed(self, chunk)
    }

    fn finish(&mut self) -> Result<(), Reject> {
        UploadInspector::finish(self)
    }
}

/// What an adapter hands over of a body chunk.
#[derive(Clone, Copy)]
enum Chunk<'a> {
    Bytes(&'a [u8]),
    Length(usize),
}

impl Chunk<'_> {
    fn len(&self) -> usize {
        match self {
            Chunk::Bytes(bytes) => bytes.len(),
            Chunk::Length(length) => *length,
        }
    }
}

/// How a request that passed its header checks goes on.
enum Proceed {
    /// Signed, no body: verify now (with the clock read for the headers).
    Verify(Signed, Option<Verifier>, u64),
    /// A body follows that a check needs: hold the headers.
    Wait,
    /// Unsigned, every header check passed: the fleet lockout and the idempotency key next.
    Unsigned,
}

/// How a request is answered from the header checks.
enum Answer {
    Reject(Reject),
    Preflight(Vec<(&'static str, String)>),
}

#[cfg(test)]
mod tests;
