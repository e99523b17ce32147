//! The HTTP stream: turns Envoy's callbacks into calls of the pure checks. Host calls use the
//! `Result`-returning `hostcalls` functions and read client data as bytes, so nothing a client
//! sends can make this code panic (a panic would disable the filter on that worker).

use std::net::IpAddr;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};

use crate::checks::cors;
use crate::checks::host;
use crate::checks::signature::{self, SignedRequest, Verifier};
use crate::checks::{api_key, ip};
use crate::headers::{self, RequestHeaders};
use crate::plugin::{HostStore, Metric, Shared};
use crate::reject::{self, Reject};

pub(crate) struct Stream {
    shared: Option<Rc<Shared>>,
    request_id: Option<String>,
    policy: String,
    state: State,
    /// CORS headers the response gets (an allowed cross-origin request).
    cors_headers: Vec<(&'static str, String)>,
    /// Whether the response varies by `Origin` (the policy has CORS settings).
    vary_origin: bool,
    /// The client address Envoy determined, canonical (for IP rules, the lockout and the client
    /// header); read on first use, as it costs a host call most requests do not need.
    client_ip: Option<Option<IpAddr>>,
    /// A body that replaces the response body (a rate limiter's 429 in problem+json).
    replacement_body: Option<Vec<u8>>,
    /// The request headers as read, and the edits (identity headers set, client copies and the
    /// raw API key removed) written back in one host call when the request passes.
    request_headers: Vec<(String, Vec<u8>)>,
    edits: Vec<(String, Option<String>)>,
}

enum State {
    /// Nothing (more) to check on this request.
    Pass,
    /// Waiting for the body; `read` bytes of it are already in the verifier.
    Verifying {
        request: SignedRequest,
        verifier: Verifier,
        limit: u64,
        read: usize,
    },
    /// A local reply was sent (a rejection or a preflight answer); ignore the rest of the
    /// request.
    Answered,
}

impl Stream {
    pub fn new(shared: Option<Rc<Shared>>) -> Self {
        Self {
            shared,
            request_id: None,
            policy: String::new(),
            state: State::Pass,
            cors_headers: Vec::new(),
            vary_origin: false,
            client_ip: None,
            replacement_body: None,
            request_headers: Vec::new(),
            edits: Vec::new(),
        }
    }

    /// Lets the request go upstream, writing the header edits first. Every path that passes a
    /// request goes through here, so client copies of identity headers can never slip through.
    fn pass(&mut self) -> Action {
        if !self.edits.is_empty() {
            let mut pairs = std::mem::take(&mut self.request_headers);
            RequestHeaders::apply(&mut pairs, &self.edits);
            let map: Vec<(&str, &[u8])> = pairs
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_slice()))
                .collect();
            if hostcalls::set_map_bytes(MapType::HttpRequestHeaders, map).is_err() {
                // Fail closed: the upstream must be able to rely on the identity headers.
                return self.reject(Reject::ReplayCheckUnavailable);
            }
            self.edits.clear();
        }
        if let Some(shared) = &self.shared {
            shared.metrics.add(Metric::Allowed, 1);
        }
        self.state = State::Pass;
        Action::Continue
    }

    fn client_ip(&mut self) -> Option<IpAddr> {
        *self.client_ip.get_or_insert_with(|| {
            hostcalls::get_property(vec!["source", "address"])
                .ok()
                .flatten()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|a| ip::parse_source(&a))
        })
    }

    /// The selected policy's name for log lines, `-` before one is selected.
    fn policy_label(&self) -> &str {
        if self.policy.is_empty() {
            "-"
        } else {
            &self.policy
        }
    }

    /// Answers a CORS preflight itself: browsers cannot sign a preflight or attach an API key,
    /// so it never goes upstream.
    fn answer_preflight(&mut self, headers: Vec<(&'static str, String)>) -> Action {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        self.state = State::Answered;
        if hostcalls::send_http_response(204, headers, None).is_err() {
            log::error!("edge-warden could not answer a preflight; the request stays paused");
        }
        Action::Pause
    }

    fn reject(&mut self, why: Reject) -> Action {
        let response = reject::respond(&why, self.request_id.as_deref());
        let headers: Vec<(&str, &str)> = response
            .headers
            .iter()
            .map(|(n, v)| (*n, v.as_str()))
            .collect();
        // One security event per rejection: the code and where, never a credential.
        log::info!(
            "edge-warden rejected request: code={} status={} policy={} request_id={}",
            why.code(),
            response.status,
            self.policy_label(),
            self.request_id.as_deref().unwrap_or("-"),
        );
        if let Some(shared) = self.shared.clone() {
            shared.metrics.add(Metric::Rejected, 1);
            // A wrong credential counts toward the lockout of the address that sent it.
            if let (true, Some(lockout)) = (why.is_auth_failure(), &shared.lockout) {
                if let Some(ip) = self.client_ip() {
                    // A fresh clock: a failure found after a slow upload belongs to now, not to
                    // when its headers arrived.
                    let key = ip::lockout_key(ip, lockout.ipv6_prefix);
                    lockout.record_failure(&HostStore, &key, now_unix());
                }
            }
        }
        self.state = State::Answered;
        if hostcalls::send_http_response(response.status, headers, Some(&response.body)).is_err() {
            log::error!("edge-warden could not send its rejection; the request stays paused");
        }
        Action::Pause
    }

    /// Verifies the signature over everything read, records the nonce, and lets the request go.
    /// `now` is the clock when the request ended: for a body that came after the headers, read
    /// anew, because a body can be held open until the timestamp has left the window and the
    /// first use of its nonce has been purged from the cache.
    fn finish(
        &mut self,
        shared: &Shared,
        request: SignedRequest,
        verifier: Verifier,
        now: u64,
    ) -> Action {
        let proof = match verifier.finish(&request) {
            Ok(proof) => proof,
            Err(why) => return self.reject(why),
        };
        let config = &shared.config;
        // Decided at the end: the nonce's record stays in the cache until exactly the moment
        // this check starts refusing its timestamp, so a replay is always caught by one of them.
        if let Err(why) = signature::check_window(request.timestamp, now, config.window_seconds) {
            return self.reject(why);
        }
        let expires_at = request.timestamp.saturating_add(config.window_seconds);
        match shared
            .cache
            .record(&HostStore, &proof, &request.nonce, expires_at, now)
        {
            Ok(recorded) => shared.metrics.add(
                Metric::ReplayEntries,
                1 - i64::try_from(recorded.purged).unwrap_or(0),
            ),
            Err(why) => return self.reject(why),
        }
        let key_id = config
            .keys
            .get(proof.key_index)
            .map(|k| k.id.clone())
            .unwrap_or_default();
        self.edits
            .push((config.key_id_header.clone(), Some(key_id)));
        self.pass()
    }

    /// A 429 that Envoy's rate limiters produced (not the upstream's) gets edge-warden's
    /// problem+json body, so clients see one error shape everywhere.
    fn reshape_rate_limited(&mut self, headers: &mut Vec<(String, Vec<u8>)>) {
        let details = hostcalls::get_property(vec!["response", "code_details"])
            .ok()
            .flatten()
            .unwrap_or_default();
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
            self.policy_label(),
            self.request_id.as_deref().unwrap_or("-"),
        );
        self.replacement_body = Some(response.body);
    }
}

fn is_status(headers: &[(String, Vec<u8>)], status: &[u8]) -> bool {
    headers
        .iter()
        .any(|(n, v)| n == ":status" && v.as_slice() == status)
}

fn now_unix() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            return self.reject(Reject::NoMatchingPolicy);
        };
        let config = &shared.config;
        // One host call for all headers; values stay bytes (client-controlled, maybe not UTF-8).
        let headers = match hostcalls::get_map_bytes(MapType::HttpRequestHeaders) {
            Ok(pairs) => RequestHeaders::new(pairs),
            Err(_) => return self.reject(Reject::NoMatchingPolicy),
        };
        // Envoy's id (it replaces a client's at the edge); anything that is not a plain token of
        // at most 128 characters is not written into a log line or a reply.
        self.request_id = headers
            .first("x-request-id")
            .and_then(reject::usable_request_id)
            .map(str::to_string);

        // The identity headers are ours alone: drop any copy the client sent, on every route,
        // also spelled with underscores (`x_edge_warden_role`), which WSGI/CGI-style servers
        // read as the same header.
        let identity = [
            &config.key_id_header,
            &config.api_key_id_header,
            &config.role_header,
            &config.client_header,
        ];
        for name in headers.names() {
            if identity.iter().any(|ours| headers::same_name(name, ours)) {
                self.edits.push((name.to_string(), None));
            }
        }
        // The raw API key never reaches the upstream (or its logs), whatever the route,
        // unless `api_keys.strip` is false.
        if config.strip_api_key && headers.first(&config.key_source.header).is_some() {
            self.edits.push((config.key_source.header.clone(), None));
        }
        let method = headers.first_str(":method").unwrap_or("");
        let path = headers.first_str(":path").unwrap_or("");
        let origin = headers.first("origin");
        // A preflight (Fetch standard): OPTIONS with Origin and Access-Control-Request-Method.
        // It is matched to the policy of the request it asks about, so by the requested method.
        let requested_method = headers.first("access-control-request-method");
        let preflight = match (method, origin, requested_method) {
            ("OPTIONS", Some(_), Some(m)) => Some(m),
            _ => None,
        };
        let select_method = preflight
            .and_then(|m| std::str::from_utf8(m).ok())
            .unwrap_or(method);
        let route = if config.uses_route_names {
            hostcalls::get_property(vec!["xds", "route_name"])
                .ok()
                .flatten()
                .and_then(|b| String::from_utf8(b).ok())
        } else {
            None
        };
        let Some(policy) = config.select(route.as_deref(), select_method, path) else {
            return self.reject(Reject::NoMatchingPolicy);
        };
        self.policy = policy.name.clone();

        let policy_signature = policy.signature;
        if !policy.trusted_hosts.is_empty() {
            if let Err(why) = host::check(&policy.trusted_hosts, headers.first(":authority")) {
                return self.reject(why);
            }
        }

        if let Err(why) = policy.ip.check(|| self.client_ip()) {
            return self.reject(why);
        }

        if let Some(cors) = &policy.cors {
            self.vary_origin = true;
            if let (Some(origin), Some(requested_method)) = (origin, preflight) {
                let asked_headers = headers.first("access-control-request-headers");
                return match cors.preflight(origin, requested_method, asked_headers) {
                    Ok(answer) => self.answer_preflight(answer),
                    Err(why) => self.reject(why),
                };
            }
            match cors.check(origin) {
                Ok(cors::Outcome::Allow(origin)) => {
                    self.cors_headers = cors.response_headers(&origin)
                }
                Ok(_) => {}
                Err(why) => return self.reject(why),
            }
        } else if preflight.is_some() {
            // No CORS settings on this route: cross-origin browser calls are not allowed.
            return self.reject(Reject::OriginNotAllowed);
        }

        // The clock for the header-time checks; a body that follows is judged by a fresh one.
        let now = now_unix();
        let presented = match &policy.api_key {
            Some(_) => match config.key_source.find(&headers) {
                Ok(p) => p,
                Err(why) => return self.reject(why),
            },
            None => None,
        };
        // Wherever a credential is checked (required, or presented to an optional key), a
        // locked-out address is refused even with a valid one, so guessing cannot go on.
        let checks_credential = policy.requires_credential() || presented.is_some();
        if let (true, Some(lockout)) = (checks_credential, &shared.lockout) {
            let client_key = || {
                self.client_ip()
                    .map(|ip| ip::lockout_key(ip, lockout.ipv6_prefix))
            };
            if let Err(why) = lockout.check(&HostStore, client_key, now) {
                return self.reject(why);
            }
        }

        let mut client = None;
        if let Some(requirement) = &policy.api_key {
            match presented {
                None if requirement.required => return self.reject(Reject::MissingApiKey),
                None => {}
                Some(presented) => {
                    let key = match api_key::authenticate(&config.api_keys, presented.key, now) {
                        Ok(found) => &config.api_keys[found.index],
                        Err(why) => return self.reject(why),
                    };
                    if let Err(why) = api_key::authorize(&requirement.roles, key) {
                        return self.reject(why);
                    }
                    client = Some(format!("key:{}", key.id));
                    self.edits
                        .push((config.api_key_id_header.clone(), Some(key.id.clone())));
                    self.edits.push((
                        config.role_header.clone(),
                        Some(key.role.as_str().to_string()),
                    ));
                    // A bearer key goes too (the key header was dropped above already).
                    if config.strip_api_key {
                        self.edits.push((presented.header.clone(), None));
                    }
                }
            }
        }
        if client.is_none() {
            client = self.client_ip().map(|ip| format!("ip:{ip}"));
        }
        if let Some(client) = client {
            self.edits
                .push((config.client_header.clone(), Some(client)));
        }

        if !policy_signature {
            self.request_headers = headers.into_pairs();
            return self.pass();
        }

        // Every header-only check runs before any body is read.
        let request = match signature::parse_headers(&headers) {
            Ok(request) => request,
            Err(why) => return self.reject(why),
        };
        if let Err(why) = signature::check_window(request.timestamp, now, config.window_seconds) {
            return self.reject(why);
        }
        let limit = policy.max_body_bytes;
        let declared = headers
            .first_str("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit) {
            return self.reject(Reject::BodyTooLarge { limit });
        }

        self.request_headers = headers.into_pairs();
        let verifier = Verifier::new(&shared.keyring);
        if end_of_stream {
            return self.finish(&shared, request, verifier, now);
        }
        self.state = State::Verifying {
            request,
            verifier,
            limit,
            read: 0,
        };
        // Hold the headers until the body is verified (needs `allow_on_headers_stop_iteration`).
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Pause;
        };
        match &mut self.state {
            State::Pass => Action::Continue,
            State::Answered => Action::Pause,
            State::Verifying {
                verifier,
                limit,
                read,
                ..
            } => {
                if body_size as u64 > *limit {
                    let limit = *limit;
                    return self.reject(Reject::BodyTooLarge { limit });
                }
                // `body_size` is everything buffered so far; read only the new bytes.
                if body_size > *read {
                    match hostcalls::get_buffer(
                        BufferType::HttpRequestBody,
                        *read,
                        body_size - *read,
                    ) {
                        Ok(Some(chunk)) => {
                            verifier.update(&chunk);
                            *read += chunk.len();
                        }
                        Ok(None) => {}
                        // Fail closed: a body we cannot read cannot be verified.
                        Err(_) => return self.reject(Reject::InvalidSignature),
                    }
                }
                if !end_of_stream {
                    return Action::Pause;
                }
                match std::mem::replace(&mut self.state, State::Pass) {
                    State::Verifying {
                        request, verifier, ..
                    } => self.finish(&shared, request, verifier, now_unix()),
                    _ => Action::Continue,
                }
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        let plan = &shared.config.response_headers;
        // The answer depends on Origin wherever CORS applies (a preflight answer already lists
        // it, and merging does not repeat it).
        let vary: &[&str] = if self.vary_origin { &["Origin"] } else { &[] };
        // (Even an empty plan rewrites: a rate limiter's 429 still gets its Retry-After.)
        // One read and one write of the whole map instead of a host call per header.
        let Ok(mut headers) = hostcalls::get_map_bytes(MapType::HttpResponseHeaders) else {
            return Action::Continue;
        };
        if is_status(&headers, b"429") && !matches!(self.state, State::Answered) {
            self.reshape_rate_limited(&mut headers);
        }
        let headers = plan.apply(headers, &self.cors_headers, vary);
        let pairs: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        if hostcalls::set_map_bytes(MapType::HttpResponseHeaders, pairs).is_err() {
            log::warn!("edge-warden could not set response headers");
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(body) = &self.replacement_body else {
            return Action::Continue;
        };
        if !end_of_stream {
            return Action::Pause;
        }
        if hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, body).is_err() {
            log::warn!("edge-warden could not reshape a rate-limited reply");
        }
        self.replacement_body = None;
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        // A body followed by trailers ends here rather than with end_of_stream on the body.
        let Some(shared) = self.shared.clone() else {
            return Action::Pause;
        };
        match std::mem::replace(&mut self.state, State::Pass) {
            State::Verifying {
                request, verifier, ..
            } => self.finish(&shared, request, verifier, now_unix()),
            State::Answered => {
                self.state = State::Answered;
                Action::Pause
            }
            State::Pass => Action::Continue,
        }
    }
}
