//! The remote level of shared state: `edge-warden-state`, a stateless gRPC service in front of
//! Redis, shared by every Envoy of a fleet (`proto/edge_warden_state.proto`). The engine only
//! builds requests and reads answers here; the runtimes carry them (wasm: `dispatch_grpc_call`,
//! native: an HTTP/2 callout with gRPC framing), so the checks never know where state lives.
//!
//! The local store always answers first: a replay seen by this Envoy, or an address it already
//! locked out, is refused without a remote call. What the service is sent are derived values
//! only: a fingerprint of the nonce (never the nonce) and the address's lockout key.
//!
//! A call that fails or times out is ambiguous (a claim may have landed after the timeout), so
//! it counts as "unavailable" and the configured [`FailureMode`] decides.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::{err, ConfigError};

/// The gRPC service, as the proto names it.
pub const SERVICE: &str = "edgewarden.state.v1.State";

/// The operations the filter calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Admit,
    RecordFailure,
    BeginIdempotent,
    CompleteIdempotent,
    ReleaseIdempotent,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Admit => "Admit",
            Method::RecordFailure => "RecordFailure",
            Method::BeginIdempotent => "BeginIdempotent",
            Method::CompleteIdempotent => "CompleteIdempotent",
            Method::ReleaseIdempotent => "ReleaseIdempotent",
        }
    }

    /// The HTTP/2 `:path` of the call.
    pub fn path(self) -> &'static str {
        match self {
            Method::Admit => "/edgewarden.state.v1.State/Admit",
            Method::RecordFailure => "/edgewarden.state.v1.State/RecordFailure",
            Method::BeginIdempotent => "/edgewarden.state.v1.State/BeginIdempotent",
            Method::CompleteIdempotent => "/edgewarden.state.v1.State/CompleteIdempotent",
            Method::ReleaseIdempotent => "/edgewarden.state.v1.State/ReleaseIdempotent",
        }
    }
}

/// One call for the runtime to make: the method and the encoded request message (unframed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub method: Method,
    pub message: Vec<u8>,
}

/// Why a call brought no usable answer; for log lines (never request data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable(pub &'static str);

// The messages of `proto/edge_warden_state.proto`, field for field (same tags).

#[derive(Clone, PartialEq, prost::Message)]
pub struct AdmitRequest {
    #[prost(message, optional, tag = "1")]
    pub lockout: Option<LockoutCheck>,
    #[prost(message, optional, tag = "2")]
    pub claim: Option<Claim>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LockoutCheck {
    #[prost(string, tag = "1")]
    pub client: String,
    #[prost(uint32, tag = "2")]
    pub max_failures: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Claim {
    #[prost(bytes = "vec", tag = "1")]
    pub fingerprint: Vec<u8>,
    #[prost(uint32, tag = "2")]
    pub ttl_seconds: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AdmitResponse {
    #[prost(uint64, tag = "1")]
    pub locked_for_seconds: u64,
    #[prost(bool, tag = "2")]
    pub claimed: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RecordFailureRequest {
    #[prost(string, tag = "1")]
    pub client: String,
    #[prost(uint32, tag = "2")]
    pub window_seconds: u32,
    #[prost(uint32, tag = "3")]
    pub max_failures: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RecordFailureResponse {
    #[prost(uint32, tag = "1")]
    pub failures: u32,
    #[prost(uint64, tag = "2")]
    pub locked_for_seconds: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct BeginIdempotentRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub request: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub token: Vec<u8>,
    #[prost(uint32, tag = "4")]
    pub in_flight_seconds: u32,
}

/// `BeginIdempotentResponse.Outcome`. Zero is never sent: an empty or truncated answer decodes
/// to it and counts as no answer, never as a claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Outcome {
    Unspecified = 0,
    Claimed = 1,
    InProgress = 2,
    Completed = 3,
    CompletedNotStored = 4,
    Mismatch = 5,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct BeginIdempotentResponse {
    #[prost(enumeration = "Outcome", tag = "1")]
    pub outcome: i32,
    #[prost(message, optional, tag = "2")]
    pub response: Option<StoredResponse>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredResponse {
    #[prost(uint32, tag = "1")]
    pub status: u32,
    #[prost(string, tag = "2")]
    pub content_type: String,
    #[prost(bytes = "vec", tag = "3")]
    pub body: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CompleteIdempotentRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub token: Vec<u8>,
    #[prost(uint32, tag = "3")]
    pub ttl_seconds: u32,
    #[prost(message, optional, tag = "4")]
    pub response: Option<StoredResponse>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CompleteIdempotentResponse {
    #[prost(bool, tag = "1")]
    pub stored: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ReleaseIdempotentRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub token: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ReleaseIdempotentResponse {
    #[prost(bool, tag = "1")]
    pub released: bool,
}

impl Call {
    pub fn begin_idempotent(request: &BeginIdempotentRequest) -> Self {
        Self {
            method: Method::BeginIdempotent,
            message: prost::Message::encode_to_vec(request),
        }
    }

    pub fn complete_idempotent(request: &CompleteIdempotentRequest) -> Self {
        Self {
            method: Method::CompleteIdempotent,
            message: prost::Message::encode_to_vec(request),
        }
    }

    pub fn release_idempotent(request: &ReleaseIdempotentRequest) -> Self {
        Self {
            method: Method::ReleaseIdempotent,
            message: prost::Message::encode_to_vec(request),
        }
    }

    pub fn admit(request: &AdmitRequest) -> Self {
        Self {
            method: Method::Admit,
            message: prost::Message::encode_to_vec(request),
        }
    }

    pub fn record_failure(request: &RecordFailureRequest) -> Self {
        Self {
            method: Method::RecordFailure,
            message: prost::Message::encode_to_vec(request),
        }
    }
}

/// Decodes an answer; a message that does not decode is as good as no answer.
pub fn decode<M: prost::Message + Default>(
    answer: Result<Vec<u8>, Unavailable>,
) -> Result<M, Unavailable> {
    let bytes = answer?;
    M::decode(bytes.as_slice()).map_err(|_| Unavailable("undecodable answer"))
}

/// What the service is sent for a nonce: the first 16 bytes of its SHA-256. A replay has the
/// same nonce, so the same fingerprint; a collision between two live nonces (2^-128 per pair)
/// is not a practical concern.
pub fn fingerprint(nonce: &str) -> Vec<u8> {
    Sha256::digest(nonce.as_bytes())[..16].to_vec()
}

/// A message in gRPC's length-prefixed framing (uncompressed), for runtimes that send the
/// HTTP/2 request themselves.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 5);
    out.push(0);
    out.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(message);
    out
}

/// The one uncompressed message of a unary gRPC response body.
pub fn unframe(body: &[u8]) -> Result<Vec<u8>, Unavailable> {
    let Some((&[flag, a, b, c, d], rest)) = body.split_first_chunk::<5>() else {
        return Err(Unavailable("no answer message"));
    };
    let length = u32::from_be_bytes([a, b, c, d]) as usize;
    if flag != 0 || rest.len() != length {
        return Err(Unavailable("malformed answer frame"));
    }
    Ok(rest.to_vec())
}

/// The HTTP/2 request of a unary gRPC call, for runtimes that send it themselves: headers
/// (`:authority` is the cluster's name; `grpc-timeout` lets the service give up as the filter
/// does) and the framed body.
pub fn grpc_request(call: &Call, remote: &RemoteState) -> (Vec<(&'static str, Vec<u8>)>, Vec<u8>) {
    let headers = vec![
        (":method", b"POST".to_vec()),
        (":path", call.method.path().as_bytes().to_vec()),
        (":authority", remote.cluster.as_bytes().to_vec()),
        ("content-type", b"application/grpc".to_vec()),
        ("te", b"trailers".to_vec()),
        (
            "grpc-timeout",
            format!("{}m", remote.timeout_ms).into_bytes(),
        ),
    ];
    (headers, frame(&call.message))
}

/// The answer message of a unary gRPC response seen as headers and body (trailers unseen): a
/// failed call is a trailers-only response, whose `grpc-status` is in the headers.
pub fn grpc_answer(headers: &[(String, Vec<u8>)], body: &[u8]) -> Result<Vec<u8>, Unavailable> {
    let value = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    };
    if value(":status") != Some(b"200") {
        return Err(Unavailable("HTTP error"));
    }
    let status = match value("grpc-status") {
        None => 0,
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(u32::MAX),
    };
    match status {
        0 => unframe(body),
        failed => Err(grpc_failure(failed)),
    }
}

/// Why a call that ended with a gRPC status other than OK brought no answer: 4 is
/// DEADLINE_EXCEEDED (the call's timeout), 14 UNAVAILABLE (refused, reset, the store down).
pub fn grpc_failure(status: u32) -> Unavailable {
    Unavailable(match status {
        4 => "timed out",
        14 => "unavailable",
        _ => "gRPC error",
    })
}

// ---------------------------------------------------------------------------------------------
// Configuration: the `remote_state` section, and its compile step.

/// What a request gets when the state service cannot answer in time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Refuse it: 503 `state_unavailable` with `Retry-After` (the default).
    #[default]
    FailClosed,
    /// Let it through on the local checks alone, and count it (`edge_warden_state_failed_open`).
    FailOpen,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRemoteState {
    /// The Envoy cluster (HTTP/2) of the edge-warden-state service.
    pub cluster: String,
    /// How long a call may take before the request is handled by `failure_mode`.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub failure_mode: FailureMode,
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

pub const DEFAULT_TIMEOUT_MS: u64 = 50;
pub const MAX_TIMEOUT_MS: u64 = 5_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteState {
    pub cluster: String,
    pub timeout_ms: u64,
    pub failure_mode: FailureMode,
}

/// The remote state configured at `field` (`remote_state`).
pub(crate) fn compile_remote_state(
    raw: &RawRemoteState,
    field: &str,
) -> Result<RemoteState, ConfigError> {
    let cluster = raw.cluster.trim();
    // Envoy's names are free-form (Istio's look like `outbound|50051||state.ns.svc.cluster.local`):
    // refuse only what cannot be a name.
    if cluster.is_empty() || cluster.len() > 256 || !cluster.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(err(
            format!("{field}.cluster"),
            "must name an Envoy cluster (1 to 256 visible ASCII characters, no spaces)",
        ));
    }
    if !(1..=MAX_TIMEOUT_MS).contains(&raw.timeout_ms) {
        return Err(err(
            format!("{field}.timeout_ms"),
            format!(
                "must be between 1 and {MAX_TIMEOUT_MS} milliseconds, got {}",
                raw.timeout_ms
            ),
        ));
    }
    Ok(RemoteState {
        cluster: cluster.to_string(),
        timeout_ms: raw.timeout_ms,
        failure_mode: raw.failure_mode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_malformed_frames_are_unavailable() {
        let message = Call::admit(&AdmitRequest {
            lockout: None,
            claim: Some(Claim {
                fingerprint: fingerprint("n-1"),
                ttl_seconds: 300,
            }),
        })
        .message;
        assert_eq!(unframe(&frame(&message)), Ok(message.clone()));
        assert!(unframe(&[]).is_err());
        assert!(unframe(&[0, 0, 0, 0, 9, 1]).is_err());
        let mut compressed = frame(&message);
        compressed[0] = 1;
        assert!(unframe(&compressed).is_err());
    }

    #[test]
    fn a_grpc_answer_is_its_one_message_and_errors_are_unavailable() {
        let h = |pairs: &[(&str, &str)]| -> Vec<(String, Vec<u8>)> {
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect()
        };
        let ok = h(&[(":status", "200"), ("content-type", "application/grpc")]);
        assert_eq!(
            grpc_answer(&ok, &frame(b"\x10\x01")),
            Ok(b"\x10\x01".to_vec())
        );
        // A trailers-only error, a proxy's 503, a success whose message is missing.
        let failed = h(&[(":status", "200"), ("grpc-status", "14")]);
        assert_eq!(grpc_answer(&failed, &[]), Err(Unavailable("unavailable")));
        assert!(grpc_answer(&h(&[(":status", "503")]), &[]).is_err());
        assert!(grpc_answer(&ok, &[]).is_err());
        let remote = RemoteState {
            cluster: "edge_warden_state".into(),
            timeout_ms: 50,
            failure_mode: FailureMode::FailClosed,
        };
        let call = Call::admit(&AdmitRequest::default());
        let (headers, body) = grpc_request(&call, &remote);
        assert!(headers.contains(&(":path", b"/edgewarden.state.v1.State/Admit".to_vec())));
        assert!(headers.contains(&("grpc-timeout", b"50m".to_vec())));
        assert_eq!(unframe(&body), Ok(call.message));
    }

    #[test]
    fn an_answer_that_does_not_decode_is_unavailable() {
        let answer: Result<AdmitResponse, _> = decode(Ok(vec![0xff, 0xff, 0xff]));
        assert!(answer.is_err());
        let ok = AdmitResponse {
            locked_for_seconds: 0,
            claimed: true,
        };
        let answer: Result<AdmitResponse, _> = decode(Ok(prost::Message::encode_to_vec(&ok)));
        assert_eq!(answer, Ok(ok));
    }

    #[test]
    fn the_fingerprint_never_contains_the_nonce() {
        let print = fingerprint("nonce-abcdef");
        assert_eq!(print.len(), 16);
        assert_ne!(print, b"nonce-abcdef"[..].to_vec());
        assert_eq!(print, fingerprint("nonce-abcdef"));
    }

    #[test]
    fn configuration_names_the_field() {
        let raw = |cluster: &str, timeout_ms| RawRemoteState {
            cluster: cluster.into(),
            timeout_ms,
            failure_mode: FailureMode::FailClosed,
        };
        let e = compile_remote_state(&raw("", 50), "remote_state").unwrap_err();
        assert_eq!(e.field, "remote_state.cluster");
        let e = compile_remote_state(&raw("a b", 50), "remote_state").unwrap_err();
        assert_eq!(e.field, "remote_state.cluster");
        let e = compile_remote_state(&raw("state", 0), "remote_state").unwrap_err();
        assert_eq!(e.field, "remote_state.timeout_ms");
        assert!(compile_remote_state(&raw("edge_warden_state", 50), "remote_state").is_ok());
        let istio = "outbound|50051||edge-warden-state.edge-warden.svc.cluster.local";
        assert!(compile_remote_state(&raw(istio, 50), "remote_state").is_ok());
    }
}
