//! The native runtime: edge-warden as an Envoy dynamic module (`libedge_warden.so`, loaded by
//! `envoy.filters.http.dynamic_modules`). A thin adapter over the same engine as the wasm
//! filter: Envoy's hooks become engine events, the engine's actions become ABI calls. Every
//! `unsafe` line is in `ffi`; this module is safe Rust.
//!
//! Threads: Envoy creates a configuration on its main thread and shares it with every worker,
//! so [`FilterConfig`] is `Send + Sync`; each stream's [`Filter`] lives on one worker. Shared
//! state (replay cache, lockout) is one process-wide [`MemoryStore`], which, like Envoy's shared
//! data for the wasm filter, outlives a configuration reload.

mod ffi;

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::checks::ip;
use crate::config::Config;
use crate::engine::{
    Action, BodyMode, Engine, Exchange, Host, LocalReply, LocalState, Metric, ResponseAction,
};
use crate::metrics::Catalog;
use crate::reject::{self, Reject};
use crate::remote::{self, Call, Unavailable};
use crate::store::MemoryStore;

use ffi::{
    Attribute, BodyStatus, ConfigHandle, HeaderMap, HeadersStatus, LogLevel, Stream, TrailersStatus,
};

/// Every configuration's replay cache and lockout counters, in process memory.
static STORE: OnceLock<MemoryStore> = OnceLock::new();

fn store() -> &'static MemoryStore {
    STORE.get_or_init(MemoryStore::default)
}

/// One plugin configuration, shared by every worker.
pub struct FilterConfig {
    engine: Engine,
    metrics: Metrics,
}

/// The series of a configuration and Envoy's id of each. The ABI has labels, but Envoy 1.40
/// prints labelled native metrics under another name than wasm ones (`metrics.rs`), so each
/// series is defined by its dotted name, as in wasm, and counted at once, without a flush.
struct Metrics {
    catalog: Catalog,
    ids: Vec<Option<usize>>,
}

impl Metrics {
    /// Defines every series (at 0; the configuration's gauge at 1): Envoy allows no definitions
    /// after the configuration is created.
    fn define(catalog: Catalog, handle: &ConfigHandle) -> Self {
        let ids: Vec<Option<usize>> = catalog
            .series()
            .iter()
            .map(|s| handle.define(&s.dotted_name(), &[], s.family.gauge))
            .collect();
        if let Some(Some(id)) = ids.get(catalog.config_info()) {
            handle.set_gauge(*id, &[], 1);
        }
        Self { catalog, ids }
    }

    fn add(&self, stream: &Stream, metric: Metric, delta: i64) {
        let index = self.catalog.index(metric);
        if let (Some(series), Some(Some(id))) =
            (self.catalog.series().get(index), self.ids.get(index))
        {
            stream.add_to_metric(*id, series.family.gauge, &[], delta);
        }
    }
}

// The engine is shared across worker threads: checked at compile time.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<FilterConfig>();
};

impl FilterConfig {
    /// Compiles the plugin JSON; `None` (with the reason logged, naming the field) makes Envoy
    /// refuse the configuration.
    fn new(_name: &[u8], json: &[u8], handle: &ConfigHandle) -> Option<Self> {
        // Secrets come from Envoy's environment. Unlike the wasm VM, a native module sees all
        // of it: there is no `host_env_keys` list to pass through.
        let config = match Config::from_json(json, &|name| std::env::var(name).ok()) {
            Ok(config) => config,
            Err(e) => {
                log::error!("{e}");
                return None;
            }
        };
        for warning in &config.warnings {
            log::warn!("edge-warden: {warning}");
        }
        let state = LocalState::new(&config, store());
        if let Err(why) = state.prepare() {
            log::error!("edge-warden: {why} in process memory");
            return None;
        }
        let catalog = Catalog::new(&config, json);
        log::info!(
            "edge-warden configured (native): {}, config hash {}",
            state.describe(&config),
            catalog.hash()
        );
        Some(Self {
            engine: Engine::new(config, Box::new(state)),
            metrics: Metrics::define(catalog, handle),
        })
    }

    fn new_filter(config: &Arc<FilterConfig>) -> Filter {
        Filter {
            config: config.clone(),
            exchange: RefCell::new(Exchange::new()),
            read: Cell::new(0),
            calling: Cell::new(None),
            calling_response: Cell::new(false),
        }
    }
}

/// One stream. Hooks take `&self` and borrow the exchange only while the engine decides, never
/// across a call into Envoy that may run another hook of this stream.
pub struct Filter {
    config: Arc<FilterConfig>,
    exchange: RefCell<Exchange>,
    /// Request body bytes already handed to the engine.
    read: Cell<usize>,
    /// The callout to the state service this stream waits for.
    calling: Cell<Option<u64>>,
    /// That callout holds the response (an idempotency key's completion), not the request.
    calling_response: Cell<bool>,
}

/// What a finished callout resumes.
pub enum Resume {
    No,
    Request,
    Response,
}

/// A finished callout's response headers and body.
pub type CalloutAnswer = (Vec<(String, Vec<u8>)>, Vec<u8>);

/// What a hook does once the engine has decided.
enum Step {
    Continue,
    Hold,
    Reply(LocalReply),
}

/// What the engine asks of Envoy, through one stream's handle.
struct NativeHost<'a> {
    stream: &'a Stream,
    config: &'a FilterConfig,
}

impl Host for NativeHost<'_> {
    fn now(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    fn client_address(&mut self) -> Option<IpAddr> {
        let address = self.stream.attribute(Attribute::SourceAddress)?;
        ip::parse_source(std::str::from_utf8(&address).ok()?)
    }

    fn route_name(&mut self) -> Option<String> {
        String::from_utf8(self.stream.attribute(Attribute::XdsRouteName)?).ok()
    }

    fn response_code_details(&mut self) -> Vec<u8> {
        self.stream
            .attribute(Attribute::ResponseCodeDetails)
            .unwrap_or_default()
    }

    fn count(&mut self, metric: Metric, delta: i64) {
        self.config.metrics.add(self.stream, metric, delta);
    }
}

impl Filter {
    /// Runs one engine step with the exchange borrowed, then releases it.
    fn decide<R>(
        &self,
        stream: &Stream,
        step: impl FnOnce(&mut Exchange, &Engine, &mut NativeHost) -> R,
    ) -> R {
        let config = &*self.config;
        let mut host = NativeHost { stream, config };
        let mut exchange = self.exchange.borrow_mut();
        step(&mut exchange, &config.engine, &mut host)
    }

    /// Carries out an action: header edits, or a call to the state service (an HTTP/2 callout
    /// in gRPC framing; a call Envoy will not start is a failed call, decided at once).
    fn carry(&self, stream: &Stream, action: Action) -> Step {
        match action {
            Action::Continue(edits) => match apply_edits(stream, edits) {
                Ok(()) => Step::Continue,
                Err(reply) => Step::Reply(reply),
            },
            Action::Pause => Step::Hold,
            Action::Reply(reply) => Step::Reply(reply),
            Action::Call(call) => match self.start_call(stream, &call) {
                Some(id) => {
                    self.calling.set(Some(id));
                    Step::Hold
                }
                None => {
                    let action = self.decide(stream, |x, engine, host| {
                        x.on_state_answer(engine, Err(Unavailable("call not sent")), host)
                    });
                    self.carry(stream, action)
                }
            },
        }
    }

    fn start_call(&self, stream: &Stream, call: &Call) -> Option<u64> {
        let remote = self.config.engine.config.remote.as_ref()?;
        let (headers, body) = remote::grpc_request(call, remote);
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        let id = stream.http_callout(&remote.cluster, &headers, &body, remote.timeout_ms);
        if id.is_none() {
            log::warn!(
                "edge-warden: could not call the state service on cluster `{}`",
                remote.cluster
            );
        }
        id
    }

    /// The state service answered (headers and body; `None`: reset, or no answer at all).
    /// Returns what to resume, or the reply to send.
    fn on_callout_done(
        &self,
        stream: &Stream,
        id: u64,
        answer: Option<CalloutAnswer>,
    ) -> (Resume, Option<LocalReply>) {
        if self.calling.get() != Some(id) {
            return (Resume::No, None);
        }
        self.calling.set(None);
        let answer = match answer {
            Some((headers, body)) => remote::grpc_answer(&headers, &body),
            None => Err(Unavailable("reset")),
        };
        let action = self.decide(stream, |x, engine, host| {
            x.on_state_answer(engine, answer, host)
        });
        if self.calling_response.replace(false) {
            return (Resume::Response, None);
        }
        match self.carry(stream, action) {
            Step::Continue => (Resume::Request, None),
            Step::Hold => (Resume::No, None),
            Step::Reply(reply) => (Resume::No, Some(reply)),
        }
    }

    /// The response ended: a captured response completes its idempotency key; with the fleet
    /// store the end is held (true) until the service has it.
    fn response_end(&self, stream: &Stream) -> bool {
        let Some(call) = self.decide(stream, |x, engine, host| x.on_response_end(engine, host))
        else {
            return false;
        };
        match self.start_call(stream, &call) {
            Some(id) => {
                self.calling.set(Some(id));
                self.calling_response.set(true);
                true
            }
            None => {
                self.decide(stream, |x, engine, host| {
                    x.on_state_answer(engine, Err(Unavailable("call not sent")), host)
                });
                false
            }
        }
    }

    fn on_response_trailers(&self, stream: &Stream) -> TrailersStatus {
        if self.exchange.borrow().captures_response() && self.response_end(stream) {
            return TrailersStatus::StopIteration;
        }
        TrailersStatus::Continue
    }

    fn on_stream_complete(&self, stream: &Stream) {
        self.decide(stream, |x, engine, host| x.on_stream_end(engine, host));
    }

    // The request hooks return the local reply to send, if any, rather than sending it: Envoy
    // completes and destroys this filter inside `send_response`, so `ffi` sends it only after
    // the last use of `self`.

    fn on_request_headers(
        &self,
        stream: &Stream,
        end_of_stream: bool,
    ) -> (HeadersStatus, Option<LocalReply>) {
        // Fail closed: without the headers, client copies of identity headers could not be
        // found and removed.
        let Some(pairs) = stream.headers(HeaderMap::Request) else {
            return (
                HeadersStatus::StopIteration,
                Some(internal_error("read the request headers")),
            );
        };
        #[cfg(feature = "fault-injection")]
        inject_fault(&pairs, "headers");
        let action = self.decide(stream, |x, engine, host| {
            x.on_request_headers(engine, pairs, end_of_stream, host)
        });
        match self.carry(stream, action) {
            Step::Continue => (HeadersStatus::Continue, None),
            Step::Hold => (HeadersStatus::StopIteration, None),
            Step::Reply(reply) => (HeadersStatus::StopIteration, Some(reply)),
        }
    }

    fn on_request_body(
        &self,
        stream: &Stream,
        end_of_stream: bool,
    ) -> (BodyStatus, Option<LocalReply>) {
        let (mode, answered, calling) = {
            let x = self.exchange.borrow();
            (x.body_mode(), x.answered(), x.calling())
        };
        if mode == BodyMode::Ignore {
            let status = if answered {
                BodyStatus::StopIterationNoBuffer
            } else if calling {
                // Held for the state service: Continue would send the held headers on.
                BodyStatus::StopIterationAndBuffer
            } else {
                BodyStatus::Continue
            };
            return (status, None);
        }
        let action = self.decide(stream, |x, engine, host| {
            #[cfg(feature = "fault-injection")]
            inject_fault(
                &stream.headers(HeaderMap::Request).unwrap_or_default(),
                "body",
            );
            let mut last = None;
            // Held: Envoy buffers the body, and a resumed earlier filter may hand over the
            // buffered bytes again; skip those already seen. Streamed: nothing is buffered,
            // every byte this hook brings is new.
            let mut seen = match mode {
                BodyMode::Held => self.read.get(),
                _ => 0,
            };
            stream.new_request_body(seen, &mut |slice| {
                if last.is_none() {
                    seen += slice.len();
                    match x.on_request_body(engine, slice, false, host) {
                        Action::Pause => {}
                        // Streamed on: the next slice is fed too.
                        Action::Continue(edits) if edits.is_empty() => {}
                        other => last = Some(other),
                    }
                }
            });
            self.read.set(seen);
            match last {
                Some(decided) => decided,
                // What the phase does with this hook's end: wait, stream on, or (at the end of
                // the stream) verify.
                None => x.on_request_body(engine, &[], end_of_stream, host),
            }
        });
        match self.carry(stream, action) {
            // The headers were held, so edits made now still reach the upstream.
            Step::Continue => (BodyStatus::Continue, None),
            // Envoy keeps the body for the upstream while it is verified (or a call is out).
            Step::Hold => (BodyStatus::StopIterationAndBuffer, None),
            Step::Reply(reply) => (BodyStatus::StopIterationNoBuffer, Some(reply)),
        }
    }

    fn on_request_trailers(&self, stream: &Stream) -> (TrailersStatus, Option<LocalReply>) {
        let action = self.decide(stream, |x, engine, host| {
            x.on_request_trailers(engine, host)
        });
        match self.carry(stream, action) {
            Step::Continue => (TrailersStatus::Continue, None),
            Step::Hold => (TrailersStatus::StopIteration, None),
            Step::Reply(reply) => (TrailersStatus::StopIteration, Some(reply)),
        }
    }

    fn on_response_headers(&self, stream: &Stream, end_of_stream: bool) -> HeadersStatus {
        if self.exchange.borrow().answered() {
            return HeadersStatus::Continue;
        }
        let Some(before) = stream.headers(HeaderMap::Response) else {
            log::warn!("edge-warden could not read the response headers");
            return HeadersStatus::Continue;
        };
        let action = self.decide(stream, |x, engine, host| {
            x.on_response_headers(engine, before.clone(), host)
        });
        if let ResponseAction::Replace(after) = action {
            write_response_headers(stream, &before, &after);
        }
        if end_of_stream && self.exchange.borrow().captures_response() && self.response_end(stream)
        {
            return HeadersStatus::StopIteration;
        }
        HeadersStatus::Continue
    }

    fn on_response_body(&self, stream: &Stream, end_of_stream: bool) -> BodyStatus {
        let (replaces, wants, captures) = {
            let x = self.exchange.borrow();
            (
                x.replaces_response_body(),
                x.wants_response_body(),
                x.captures_response(),
            )
        };
        if replaces {
            if !end_of_stream {
                return BodyStatus::StopIterationAndBuffer;
            }
            // Taken out first: no borrow of the exchange is held across the calls into Envoy.
            let body = self.exchange.borrow_mut().take_replacement_body();
            if let Some(body) = body {
                if !stream.replace_response_body(&body) {
                    log::warn!("edge-warden could not reshape a rate-limited reply");
                }
            }
        } else if wants {
            let mut x = self.exchange.borrow_mut();
            stream.received_response_body(&mut |slice| x.on_response_body(slice));
        }
        if end_of_stream && captures && self.response_end(stream) {
            // Envoy keeps the body until the state service has the response.
            return BodyStatus::StopIterationAndBuffer;
        }
        if !end_of_stream && self.exchange.borrow().holds_response_body() {
            return BodyStatus::StopIterationAndBuffer;
        }
        BodyStatus::Continue
    }
}

/// Test builds only (`--features fault-injection`, never shipped): a request header
/// `x-edge-warden-fault: <hook>` panics in that hook, so the tests can prove a panic is caught
/// at the ABI boundary and answered 500 while Envoy keeps serving.
#[cfg(feature = "fault-injection")]
#[allow(clippy::panic)] // The point of this test build.
fn inject_fault(headers: &[(String, Vec<u8>)], hook: &str) {
    if headers
        .iter()
        .any(|(n, v)| n == "x-edge-warden-fault" && v.as_slice() == hook.as_bytes())
    {
        panic!("fault injected in {hook}");
    }
}

/// Writes request header edits one by one (the ABI has no whole-map write; each is cheap).
/// Fails closed like the wasm adapter: the upstream must be able to rely on the identity
/// headers, so an edit Envoy refuses refuses the request.
fn apply_edits(stream: &Stream, edits: crate::engine::Edits) -> Result<(), LocalReply> {
    for (name, value) in &edits.list {
        if !stream.set_header(
            HeaderMap::Request,
            name,
            value.as_deref().map(str::as_bytes),
        ) {
            return Err(internal_error("edit the request headers"));
        }
    }
    Ok(())
}

/// Brings the response headers from `before` to `after` with as few calls as possible: names
/// that went are removed, names whose values changed are set (and extra values added).
fn write_response_headers(
    stream: &Stream,
    before: &[(String, Vec<u8>)],
    after: &[(String, Vec<u8>)],
) {
    let values = |list: &[(String, Vec<u8>)], name: &str| -> Vec<Vec<u8>> {
        list.iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    };
    for (name, _) in before {
        if !after.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            stream.set_header(HeaderMap::Response, name, None);
        }
    }
    let mut done: Vec<&str> = Vec::new();
    for (name, _) in after {
        if done.iter().any(|d| d.eq_ignore_ascii_case(name)) {
            continue;
        }
        done.push(name);
        let new = values(after, name);
        if new == values(before, name) {
            continue;
        }
        stream.set_header(HeaderMap::Response, name, Some(&new[0]));
        for extra in &new[1..] {
            stream.add_header(HeaderMap::Response, name, extra);
        }
    }
}

/// The 500 problem+json reply of a request edge-warden could not process (a host call failed,
/// or a hook panicked), logged without anything of the request.
fn internal_error(what: &str) -> LocalReply {
    log::error!("edge-warden could not {what}; refusing the request");
    let response = reject::respond(&Reject::Internal, None);
    LocalReply {
        status: response.status,
        headers: response
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.clone().into_bytes()))
            .collect(),
        body: response.body,
    }
}

/// Fails closed after a panic (from `ffi`, which then sends it).
fn refusal() -> LocalReply {
    internal_error("finish a hook")
}

/// Routes the `log` crate to Envoy's log, and panic messages with it (once per process).
fn install() {
    static LOGGER: EnvoyLogger = EnvoyLogger;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Debug);
    }
    std::panic::set_hook(Box::new(|info| {
        // The location only: a panic message could quote request data.
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        ffi::log(
            LogLevel::Error,
            &format!("edge-warden: panic at {at}"),
            file!(),
            line!(),
        );
    }));
}

struct EnvoyLogger;

fn level_of(level: log::Level) -> LogLevel {
    match level {
        log::Level::Error => LogLevel::Error,
        log::Level::Warn => LogLevel::Warn,
        log::Level::Info => LogLevel::Info,
        log::Level::Debug => LogLevel::Debug,
        log::Level::Trace => LogLevel::Trace,
    }
}

impl log::Log for EnvoyLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        ffi::log_enabled(level_of(metadata.level()))
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            ffi::log(
                level_of(record.level()),
                &record.args().to_string(),
                record.file().unwrap_or(""),
                record.line().unwrap_or(0),
            );
        }
    }

    fn flush(&self) {}
}
