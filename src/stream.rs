//! The proxy-wasm HTTP stream: a thin adapter that turns Envoy's callbacks into engine events
//! and the engine's actions into host calls. Host calls use the `Result`-returning `hostcalls`
//! functions and read client data as bytes, so nothing a client sends can make this code panic
//! (a panic would disable the filter on that worker).

use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action as WasmAction, BufferType, MapType};

use crate::checks::ip;
use crate::engine::{Action, BodyMode, Edits, Exchange, Host, LocalReply, Metric, ResponseAction};
use crate::plugin::Shared;
use crate::reject::{self, Reject};
use crate::remote::{self, Call, Unavailable};

pub(crate) struct Stream {
    shared: Option<Rc<Shared>>,
    exchange: Exchange,
    /// Bytes of the buffered request body already handed to the engine (while it is held).
    read: usize,
    /// The call to the state service this stream waits for.
    calling: Option<u32>,
    /// That call holds the response (an idempotency key's completion), not the request.
    calling_response: bool,
    /// Bytes of a held response body (buffered by Envoy) already handed to the engine.
    response_read: usize,
}

/// The host, as the engine sees it: each method is a host call, made only when asked.
struct WasmHost<'a> {
    shared: &'a Shared,
}

impl Host for WasmHost<'_> {
    fn now(&mut self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs())
    }

    fn client_address(&mut self) -> Option<IpAddr> {
        hostcalls::get_property(vec!["source", "address"])
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|a| ip::parse_source(&a))
    }

    fn route_name(&mut self) -> Option<String> {
        hostcalls::get_property(vec!["xds", "route_name"])
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
    }

    fn response_code_details(&mut self) -> Vec<u8> {
        hostcalls::get_property(vec!["response", "code_details"])
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    fn count(&mut self, metric: Metric, delta: i64) {
        self.shared.metrics.add(metric, delta);
    }
}

impl Stream {
    pub fn new(shared: Option<Rc<Shared>>) -> Self {
        Self {
            shared,
            exchange: Exchange::new(),
            read: 0,
            calling: None,
            calling_response: false,
            response_read: 0,
        }
    }

    /// The response ended: a captured response completes its idempotency key, and with the
    /// fleet store the end is held until the service has it.
    fn response_end(&mut self, shared: &Shared) -> WasmAction {
        let mut host = WasmHost { shared };
        let Some(call) = self.exchange.on_response_end(&shared.engine, &mut host) else {
            return WasmAction::Continue;
        };
        match dispatch(shared, &call) {
            Ok(token) => {
                self.calling = Some(token);
                self.calling_response = true;
                WasmAction::Pause
            }
            Err(failure) => {
                let _ = self
                    .exchange
                    .on_state_answer(&shared.engine, Err(failure), &mut host);
                WasmAction::Continue
            }
        }
    }

    /// Carries out what the engine answered.
    fn act(&mut self, shared: &Shared, action: Action, map: MapType) -> WasmAction {
        match action {
            Action::Continue(edits) => self.write_edits(edits, map),
            Action::Pause => WasmAction::Pause,
            Action::Reply(reply) => send(&reply),
            Action::Call(call) => match dispatch(shared, &call) {
                Ok(token) => {
                    self.calling = Some(token);
                    WasmAction::Pause
                }
                // Not even sent (no such cluster): the engine decides as for any failure.
                Err(failure) => {
                    let mut host = WasmHost { shared };
                    let action =
                        self.exchange
                            .on_state_answer(&shared.engine, Err(failure), &mut host);
                    self.act(shared, action, map)
                }
            },
        }
    }

    /// Writes the request header edits in one host call.
    fn write_edits(&mut self, edits: Edits, map: MapType) -> WasmAction {
        if edits.is_empty() {
            return WasmAction::Continue;
        }
        let pairs = edits.rewritten();
        let pairs: Vec<(&str, &[u8])> = pairs
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        if hostcalls::set_map_bytes(map, pairs).is_err() {
            // Fail closed: the upstream must be able to rely on the identity headers.
            return refuse("could not write the request headers");
        }
        WasmAction::Continue
    }
}

/// Sends a call to the state service through Envoy's gRPC client (`remote_state.cluster`).
fn dispatch(shared: &Shared, call: &Call) -> Result<u32, Unavailable> {
    let Some(remote) = &shared.engine.config.remote else {
        return Err(Unavailable("no remote_state configured"));
    };
    hostcalls::dispatch_grpc_call(
        &remote.cluster,
        remote::SERVICE,
        call.method.name(),
        Vec::new(),
        Some(&call.message),
        Duration::from_millis(remote.timeout_ms),
    )
    .map_err(|status| {
        log::warn!(
            "edge-warden: could not call the state service on cluster `{}`: {status:?}",
            remote.cluster
        );
        Unavailable("call not sent")
    })
}

/// Test builds only (`--features wasm-fault-injection`, never shipped): a request header
/// `x-edge-warden-fault: headers` panics, which crashes this worker's VM, so the tests can show
/// what each `failure_policy` does then.
#[cfg(feature = "wasm-fault-injection")]
#[allow(clippy::panic)] // The point of this test build.
fn inject_fault(headers: &[(String, Vec<u8>)]) {
    if headers
        .iter()
        .any(|(n, v)| n == "x-edge-warden-fault" && v.as_slice() == b"headers")
    {
        panic!("fault injected");
    }
}

/// Refuses the request because the host failed us (fail closed, problem+json like every
/// rejection).
fn refuse(why: &str) -> WasmAction {
    log::error!("edge-warden: {why}; refusing the request");
    let response = reject::respond(&Reject::Internal, None);
    let headers = response
        .headers
        .iter()
        .map(|(n, v)| (*n, v.as_str()))
        .collect();
    let _ = hostcalls::send_http_response(response.status, headers, Some(&response.body));
    WasmAction::Pause
}

fn send(reply: &LocalReply) -> WasmAction {
    let headers: Vec<(&str, &str)> = reply
        .headers
        .iter()
        .filter_map(|(n, v)| Some((n.as_str(), std::str::from_utf8(v).ok()?)))
        .collect();
    if hostcalls::send_http_response(reply.status, headers, Some(&reply.body)).is_err() {
        log::error!("edge-warden could not send its reply; the request stays paused");
    }
    WasmAction::Pause
}

impl Context for Stream {
    fn on_done(&mut self) -> bool {
        if let Some(shared) = self.shared.clone() {
            let mut host = WasmHost { shared: &shared };
            self.exchange.on_stream_end(&shared.engine, &mut host);
        }
        true
    }

    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        if self.calling != Some(token_id) {
            return;
        }
        self.calling = None;
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let answer = if status_code == 0 {
            hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, response_size)
                .map(Option::unwrap_or_default)
                .map_err(|_| Unavailable("answer unreadable"))
        } else {
            Err(remote::grpc_failure(status_code))
        };
        let mut host = WasmHost { shared: &shared };
        let action = self
            .exchange
            .on_state_answer(&shared.engine, answer, &mut host);
        if std::mem::take(&mut self.calling_response) {
            if hostcalls::resume_http_response().is_err() {
                log::error!("edge-warden could not resume a response after its state call");
            }
            return;
        }
        if let WasmAction::Continue = self.act(&shared, action, MapType::HttpRequestHeaders) {
            if hostcalls::resume_http_request().is_err() {
                log::error!("edge-warden could not resume a request after its state call");
            }
        }
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> WasmAction {
        let Some(shared) = self.shared.clone() else {
            return refuse("no configuration");
        };
        // One host call for all headers; values stay bytes (client-controlled, maybe not UTF-8).
        let Ok(pairs) = hostcalls::get_map_bytes(MapType::HttpRequestHeaders) else {
            return refuse("could not read the request headers");
        };
        #[cfg(feature = "wasm-fault-injection")]
        inject_fault(&pairs);
        let mut host = WasmHost { shared: &shared };
        let action =
            self.exchange
                .on_request_headers(&shared.engine, pairs, end_of_stream, &mut host);
        // Holding the headers for the body needs `allow_on_headers_stop_iteration`.
        self.act(&shared, action, MapType::HttpRequestHeaders)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> WasmAction {
        let Some(shared) = self.shared.clone() else {
            return WasmAction::Pause;
        };
        // Held (Pause returned before): Envoy buffers, and `body_size` is everything buffered
        // so far; read only the new bytes. Streamed (Continue returned before): nothing is
        // buffered, and `body_size` counts this callback's bytes only.
        let seen = match self.exchange.body_mode() {
            BodyMode::Ignore => {
                // Held for a state call: returning Continue now would send the held headers on.
                return if self.exchange.answered() || self.exchange.calling() {
                    WasmAction::Pause
                } else {
                    WasmAction::Continue
                };
            }
            BodyMode::Held => self.read,
            BodyMode::Streamed => 0,
        };
        let mut host = WasmHost { shared: &shared };
        if !self.exchange.wants_body_bytes() {
            // A size limit alone: the length is enough, so the bytes stay in Envoy (no copy
            // into the VM, no host call).
            let length = body_size.saturating_sub(seen);
            self.read = seen + length;
            let action = self.exchange.on_request_body_length(
                &shared.engine,
                length,
                end_of_stream,
                &mut host,
            );
            return self.act(&shared, action, MapType::HttpRequestHeaders);
        }
        let chunk = if body_size > seen {
            match hostcalls::get_buffer(BufferType::HttpRequestBody, seen, body_size - seen) {
                Ok(chunk) => chunk.unwrap_or_default(),
                // Fail closed: a body we cannot read cannot be checked.
                Err(_) => return refuse("could not read the request body"),
            }
        } else {
            Vec::new()
        };
        self.read = seen + chunk.len();
        let action =
            self.exchange
                .on_request_body(&shared.engine, &chunk, end_of_stream, &mut host);
        // Headers set here still reach the upstream: the headers were held.
        self.act(&shared, action, MapType::HttpRequestHeaders)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> WasmAction {
        let Some(shared) = self.shared.clone() else {
            return WasmAction::Pause;
        };
        let mut host = WasmHost { shared: &shared };
        let action = self.exchange.on_request_trailers(&shared.engine, &mut host);
        self.act(&shared, action, MapType::HttpRequestHeaders)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> WasmAction {
        let Some(shared) = self.shared.clone() else {
            return WasmAction::Continue;
        };
        // edge-warden's own replies carry their headers already.
        if self.exchange.answered() {
            return WasmAction::Continue;
        }
        // One read and one write of the whole map instead of a host call per header.
        let Ok(headers) = hostcalls::get_map_bytes(MapType::HttpResponseHeaders) else {
            return WasmAction::Continue;
        };
        let mut host = WasmHost { shared: &shared };
        if let ResponseAction::Replace(headers) =
            self.exchange
                .on_response_headers(&shared.engine, headers, &mut host)
        {
            let pairs: Vec<(&str, &[u8])> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_slice()))
                .collect();
            if hostcalls::set_map_bytes(MapType::HttpResponseHeaders, pairs).is_err() {
                log::warn!("edge-warden could not set response headers");
            }
        }
        if end_of_stream && self.exchange.captures_response() {
            return self.response_end(&shared);
        }
        WasmAction::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> WasmAction {
        let Some(shared) = self.shared.clone() else {
            return WasmAction::Continue;
        };
        if self.exchange.replaces_response_body() {
            if !end_of_stream {
                return WasmAction::Pause;
            }
            if let Some(body) = self.exchange.take_replacement_body() {
                if hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, &body).is_err()
                {
                    log::warn!("edge-warden could not reshape a rate-limited reply");
                }
            }
        } else if self.exchange.wants_response_body() && body_size > self.response_read {
            // A held body accumulates in the buffer (read past what was read); one that goes
            // on as it comes holds only this chunk.
            let start = self.response_read;
            match hostcalls::get_buffer(BufferType::HttpResponseBody, start, body_size - start) {
                Ok(chunk) => self.exchange.on_response_body(&chunk.unwrap_or_default()),
                // Unreadable: the key completes without its response kept.
                Err(_) => self.exchange.forgo_response_body(),
            }
        }
        if end_of_stream && self.exchange.captures_response() {
            return self.response_end(&shared);
        }
        if self.exchange.holds_response_body() {
            self.response_read = body_size;
            return WasmAction::Pause;
        }
        self.response_read = 0;
        WasmAction::Continue
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> WasmAction {
        match self.shared.clone() {
            Some(shared) if self.exchange.captures_response() => self.response_end(&shared),
            _ => WasmAction::Continue,
        }
    }
}
