//! Every reason edge-warden refuses a request, and the one mapping from a reason to the wire:
//! status, stable code, and an RFC 9457 problem-details body.
//!
//! Codes are public API: clients branch on them, so a code is never renamed. Details help the
//! client developer fix the request but never contain a secret, the expected signature, the
//! signed string, the nonce or anything internal.

use serde::Serialize;

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reject {
    /// A signature header is absent on a route that requires a signature.
    MissingSignature { header: &'static str },
    /// A header is present but not in the required form (e.g. non-hex signature).
    MalformedHeader {
        header: &'static str,
        reason: &'static str,
    },
    /// A header that must appear once was sent several times.
    DuplicatedHeader { header: &'static str },
    /// `X-Request-Timestamp` is further from Envoy's clock than the window allows.
    /// `skew` is request time minus Envoy time, in seconds.
    /// `what` names the timestamp as the client sent it (a header, or a scheme's parameter).
    TimestampOutOfWindow {
        skew: i64,
        window: u64,
        what: &'static str,
    },
    /// The signature does not match the body, timestamp and nonce under any active secret.
    InvalidSignature,
    /// The nonce was already accepted within the timestamp window.
    NonceReplayed,
    /// The body is larger than the route allows.
    BodyTooLarge { limit: u64 },
    /// The replay cache has no room left for this nonce until older entries expire.
    ReplayCacheFull { retry_after: u64 },
    /// The shared replay cache could not be updated (contention); retry with a fresh nonce.
    ReplayCheckUnavailable,
    /// The fleet's shared state (edge-warden-state) did not answer in time and the
    /// configuration fails closed; retry with a fresh nonce.
    StateUnavailable,
    /// No policy in the configuration covers this route.
    NoMatchingPolicy,
    /// The `Origin` is not in the route's CORS allow list.
    OriginNotAllowed,
    /// A preflight asked for a method or header the route's CORS settings do not allow.
    CorsMethodNotAllowed { what: &'static str, allowed: String },
    /// The `Host` / `:authority` is not one of the trusted hosts.
    HostNotAllowed,
    /// The route requires an API key and none was sent.
    MissingApiKey,
    /// The API key matches no configured key.
    InvalidApiKey,
    /// The API key's `expires_at` has passed.
    ExpiredApiKey,
    /// The API key's `not_before` has not come yet.
    ApiKeyNotYetValid,
    /// The API key is valid but its role may not use this route.
    InsufficientRole,
    /// The client address is denied or not in the allow list.
    IpNotAllowed,
    /// Too many failed authentications from this client address; retry after the window.
    TooManyAuthFailures { retry_after: u64 },
    /// A rate limiter after edge-warden (Envoy's local_ratelimit or ratelimit filter) refused
    /// the request; edge-warden only gives its reply the common shape.
    RateLimited,
    /// An uploaded file's name breaks the name rules (`reason` is fixed text; the name itself is
    /// never echoed).
    InvalidFileName { reason: &'static str },
    /// An uploaded file's extension or declared type is not allowed on this route. `allowed` is
    /// the route's extension list, from the configuration.
    FileTypeNotAllowed { allowed: String },
    /// An uploaded file's first bytes do not match its extension or declared type, or its
    /// extension and declared type name different kinds.
    ContentMismatch,
    /// A multipart body that cannot be read as RFC 7578 / RFC 2046 multipart.
    MalformedMultipart { reason: &'static str },
    /// An uploaded file is larger than the route allows.
    FileTooLarge { limit: u64 },
    /// A multipart body has more files (`what: "files"`) or parts than the route allows.
    TooManyParts { what: &'static str, limit: u32 },
    /// edge-warden itself failed (a host call failed, or a panic was caught in the native
    /// runtime): the request is refused, never forwarded unchecked.
    Internal,
    /// The route requires an `Idempotency-Key` on this method and none was sent.
    IdempotencyKeyMissing,
    /// The idempotency key is malformed, too long, sent twice, or differs between the two
    /// headers that may carry it.
    IdempotencyKeyInvalid,
    /// A request with this key is still being processed.
    IdempotencyRequestInProgress,
    /// The key was used before with a different request (method, path or body).
    IdempotencyKeyReused,
    /// The request with this key was processed, but its response was too large to keep.
    IdempotencyResponseNotStored,
    /// The idempotency table has no room for another request in flight right now.
    IdempotencyUnavailable,
    /// The route does not accept this method (`policies[i].request.methods`); `allow` is the
    /// `Allow` header value.
    MethodNotAllowed { allow: String },
    /// The body's media type is not one the route accepts, or a body came without one.
    UnsupportedMediaType { accepted: String },
    /// A header the route requires is absent (or empty). `header` is the configured name.
    MissingHeader { header: String },
    /// A required header is sent twice or does not match its pattern. The value is never
    /// quoted: it is the client's, and may be hostile.
    InvalidHeader {
        header: String,
        reason: &'static str,
    },
    /// The path holds a traversal in some spelling (`..`, `%2e%2e`, `%252e`, `..\`, overlong
    /// UTF-8, `//`), refused before a policy is selected.
    InvalidPath,
    /// A control character (raw or percent-encoded) in the path, the query or a header value.
    InvalidCharacters { part: &'static str },
    /// A standard or webhook signature scheme's header is absent (`scheme`: what it is, for the
    /// detail, e.g. "an RFC 9421 signature"). Code `missing_signature`, like the reference
    /// scheme's.
    NoSignature {
        header: &'static str,
        scheme: &'static str,
    },
    /// A standard or webhook signature does not verify (`scheme`: how it is computed, for the
    /// detail). Code `invalid_signature`, like the reference scheme's.
    WrongSignature { scheme: &'static str },
    /// An RFC 9421 signature verifies but does not cover what the policy requires: `missing`
    /// lists the component identifiers, space-separated, as the policy names them.
    MissingSignedComponents { missing: String },
    /// An RFC 9421 signature's parameters are not acceptable (expired, no nonce where one is
    /// required, another algorithm, the wrong tag): `reason` says which.
    SignatureNotAccepted { reason: &'static str },
    /// The body does not match its `Content-Digest` (RFC 9530).
    ContentDigestMismatch,
}

/// The headers a signed request carries; the names appear in details, so they are spelled as
/// clients write them.
pub const SIGNATURE_HEADER: &str = "X-Request-Signature";
pub const TIMESTAMP_HEADER: &str = "X-Request-Timestamp";
pub const NONCE_HEADER: &str = "X-Request-Nonce";

impl Reject {
    pub fn status(&self) -> u32 {
        match self {
            Reject::MissingSignature { .. }
            | Reject::TimestampOutOfWindow { .. }
            | Reject::InvalidSignature
            | Reject::NonceReplayed
            | Reject::NoSignature { .. }
            | Reject::WrongSignature { .. }
            | Reject::MissingSignedComponents { .. }
            | Reject::SignatureNotAccepted { .. } => 401,
            Reject::ContentDigestMismatch => 400,
            Reject::MalformedHeader { .. } | Reject::DuplicatedHeader { .. } => 400,
            Reject::BodyTooLarge { .. } => 413,
            Reject::ReplayCacheFull { .. } | Reject::ReplayCheckUnavailable => 429,
            Reject::NoMatchingPolicy
            | Reject::OriginNotAllowed
            | Reject::CorsMethodNotAllowed { .. } => 403,
            Reject::HostNotAllowed => 400,
            Reject::MissingApiKey
            | Reject::InvalidApiKey
            | Reject::ExpiredApiKey
            | Reject::ApiKeyNotYetValid => 401,
            Reject::InsufficientRole | Reject::IpNotAllowed => 403,
            Reject::TooManyAuthFailures { .. } | Reject::RateLimited => 429,
            Reject::Internal => 500,
            Reject::StateUnavailable | Reject::IdempotencyUnavailable => 503,
            Reject::IdempotencyKeyMissing | Reject::IdempotencyKeyInvalid => 400,
            Reject::IdempotencyRequestInProgress | Reject::IdempotencyResponseNotStored => 409,
            Reject::IdempotencyKeyReused => 422,
            Reject::InvalidFileName { .. }
            | Reject::MalformedMultipart { .. }
            | Reject::TooManyParts { .. } => 400,
            Reject::FileTypeNotAllowed { .. } | Reject::ContentMismatch => 415,
            Reject::FileTooLarge { .. } => 413,
            Reject::MethodNotAllowed { .. } => 405,
            Reject::UnsupportedMediaType { .. } => 415,
            Reject::MissingHeader { .. }
            | Reject::InvalidHeader { .. }
            | Reject::InvalidPath
            | Reject::InvalidCharacters { .. } => 400,
        }
    }

    /// Every code [`Reject::code`] gives, once each: the metrics define a series per code up
    /// front (a unit test keeps this list and `code` in step).
    pub const CODES: [&'static str; 43] = [
        "missing_signature",
        "malformed_header",
        "timestamp_out_of_window",
        "invalid_signature",
        "nonce_replayed",
        "body_too_large",
        "replay_cache_full",
        "replay_check_unavailable",
        "no_matching_policy",
        "origin_not_allowed",
        "cors_method_not_allowed",
        "host_not_allowed",
        "missing_api_key",
        "invalid_api_key",
        "expired_api_key",
        "api_key_not_yet_valid",
        "insufficient_role",
        "ip_not_allowed",
        "too_many_auth_failures",
        "rate_limited",
        "internal_error",
        "state_unavailable",
        "idempotency_key_missing",
        "idempotency_key_invalid",
        "idempotency_request_in_progress",
        "idempotency_key_reused",
        "idempotency_response_not_stored",
        "idempotency_unavailable",
        "invalid_file_name",
        "file_type_not_allowed",
        "content_mismatch",
        "malformed_multipart",
        "file_too_large",
        "too_many_parts",
        "method_not_allowed",
        "unsupported_media_type",
        "missing_header",
        "invalid_header",
        "invalid_path",
        "invalid_characters",
        "missing_signed_components",
        "signature_not_accepted",
        "content_digest_mismatch",
    ];

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Reject::MissingSignature { .. } => "missing_signature",
            Reject::MalformedHeader { .. } | Reject::DuplicatedHeader { .. } => "malformed_header",
            Reject::TimestampOutOfWindow { .. } => "timestamp_out_of_window",
            Reject::InvalidSignature => "invalid_signature",
            Reject::NonceReplayed => "nonce_replayed",
            Reject::BodyTooLarge { .. } => "body_too_large",
            Reject::ReplayCacheFull { .. } => "replay_cache_full",
            Reject::ReplayCheckUnavailable => "replay_check_unavailable",
            Reject::NoMatchingPolicy => "no_matching_policy",
            Reject::OriginNotAllowed => "origin_not_allowed",
            Reject::CorsMethodNotAllowed { .. } => "cors_method_not_allowed",
            Reject::HostNotAllowed => "host_not_allowed",
            Reject::MissingApiKey => "missing_api_key",
            Reject::InvalidApiKey => "invalid_api_key",
            Reject::ExpiredApiKey => "expired_api_key",
            Reject::ApiKeyNotYetValid => "api_key_not_yet_valid",
            Reject::InsufficientRole => "insufficient_role",
            Reject::IpNotAllowed => "ip_not_allowed",
            Reject::TooManyAuthFailures { .. } => "too_many_auth_failures",
            Reject::RateLimited => "rate_limited",
            Reject::Internal => "internal_error",
            Reject::StateUnavailable => "state_unavailable",
            Reject::IdempotencyKeyMissing => "idempotency_key_missing",
            Reject::IdempotencyKeyInvalid => "idempotency_key_invalid",
            Reject::IdempotencyRequestInProgress => "idempotency_request_in_progress",
            Reject::IdempotencyKeyReused => "idempotency_key_reused",
            Reject::IdempotencyResponseNotStored => "idempotency_response_not_stored",
            Reject::IdempotencyUnavailable => "idempotency_unavailable",
            Reject::InvalidFileName { .. } => "invalid_file_name",
            Reject::FileTypeNotAllowed { .. } => "file_type_not_allowed",
            Reject::ContentMismatch => "content_mismatch",
            Reject::MalformedMultipart { .. } => "malformed_multipart",
            Reject::FileTooLarge { .. } => "file_too_large",
            Reject::TooManyParts { .. } => "too_many_parts",
            Reject::MethodNotAllowed { .. } => "method_not_allowed",
            Reject::UnsupportedMediaType { .. } => "unsupported_media_type",
            Reject::MissingHeader { .. } => "missing_header",
            Reject::InvalidHeader { .. } => "invalid_header",
            Reject::InvalidPath => "invalid_path",
            Reject::InvalidCharacters { .. } => "invalid_characters",
            Reject::NoSignature { .. } => "missing_signature",
            Reject::WrongSignature { .. } => "invalid_signature",
            Reject::MissingSignedComponents { .. } => "missing_signed_components",
            Reject::SignatureNotAccepted { .. } => "signature_not_accepted",
            Reject::ContentDigestMismatch => "content_digest_mismatch",
        }
    }

    pub fn title(&self) -> &'static str {
        match self {
            Reject::MissingSignature { .. } => "Request signature missing",
            Reject::MalformedHeader { .. } | Reject::DuplicatedHeader { .. } => "Malformed header",
            Reject::TimestampOutOfWindow { .. } => "Request timestamp out of window",
            Reject::InvalidSignature => "Invalid request signature",
            Reject::NonceReplayed => "Nonce already used",
            Reject::BodyTooLarge { .. } => "Request body too large",
            Reject::ReplayCacheFull { .. } => "Replay cache full",
            Reject::ReplayCheckUnavailable => "Replay check unavailable",
            Reject::NoMatchingPolicy => "No policy for this route",
            Reject::OriginNotAllowed => "Origin not allowed",
            Reject::CorsMethodNotAllowed { .. } => "CORS request not allowed",
            Reject::HostNotAllowed => "Host not allowed",
            Reject::MissingApiKey => "API key missing",
            Reject::InvalidApiKey => "Invalid API key",
            Reject::ExpiredApiKey => "API key expired",
            Reject::ApiKeyNotYetValid => "API key not yet valid",
            Reject::InsufficientRole => "Insufficient role",
            Reject::IpNotAllowed => "Client address not allowed",
            Reject::TooManyAuthFailures { .. } => "Too many failed authentications",
            Reject::RateLimited => "Too many requests",
            Reject::Internal => "Internal error",
            Reject::StateUnavailable => "Shared state unavailable",
            Reject::IdempotencyKeyMissing => "Idempotency key missing",
            Reject::IdempotencyKeyInvalid => "Invalid idempotency key",
            Reject::IdempotencyRequestInProgress => "Request in progress",
            Reject::IdempotencyKeyReused => "Idempotency key reused",
            Reject::IdempotencyResponseNotStored => "Response not stored",
            Reject::IdempotencyUnavailable => "Idempotency check unavailable",
            Reject::InvalidFileName { .. } => "Invalid file name",
            Reject::FileTypeNotAllowed { .. } => "File type not allowed",
            Reject::ContentMismatch => "File content does not match its type",
            Reject::MalformedMultipart { .. } => "Malformed multipart body",
            Reject::FileTooLarge { .. } => "Uploaded file too large",
            Reject::TooManyParts { .. } => "Too many parts",
            Reject::MethodNotAllowed { .. } => "Method not allowed",
            Reject::UnsupportedMediaType { .. } => "Unsupported media type",
            Reject::MissingHeader { .. } => "Required header missing",
            Reject::InvalidHeader { .. } => "Invalid header",
            Reject::InvalidPath => "Invalid path",
            Reject::InvalidCharacters { .. } => "Invalid characters",
            Reject::NoSignature { .. } => "Request signature missing",
            Reject::WrongSignature { .. } => "Invalid request signature",
            Reject::MissingSignedComponents { .. } => "Signature does not cover enough",
            Reject::SignatureNotAccepted { .. } => "Signature not accepted",
            Reject::ContentDigestMismatch => "Content-Digest does not match the body",
        }
    }

    /// What the client developer should fix.
    pub fn detail(&self) -> String {
        match self {
            Reject::MissingSignature { header } => format!(
                "The {header} header is required on this route. Sign the request with \
                 {SIGNATURE_HEADER}, {TIMESTAMP_HEADER} and {NONCE_HEADER}."
            ),
            Reject::MalformedHeader { header, reason } => format!("The {header} header {reason}."),
            Reject::DuplicatedHeader { header } => {
                format!("The {header} header must be sent exactly once.")
            }
            Reject::TimestampOutOfWindow { skew, window, what } => {
                if *skew < 0 {
                    format!(
                        "The {what} is {} s old; it must be within {window} s of the \
                         server's clock. Use the current unix time in seconds and check the \
                         client's clock.",
                        skew.unsigned_abs()
                    )
                } else {
                    format!(
                        "The {what} is {skew} s in the future; it must be within \
                         {window} s of the server's clock. Check the client's clock."
                    )
                }
            }
            Reject::InvalidSignature => format!(
                "The {SIGNATURE_HEADER} does not match. It must be the lowercase hex \
                 HMAC-SHA256 of the raw body bytes followed by the {TIMESTAMP_HEADER} and \
                 {NONCE_HEADER} values exactly as sent, keyed with the shared secret."
            ),
            Reject::NonceReplayed => format!(
                "This {NONCE_HEADER} was already used. Every transmission, including a retry, \
                 needs a fresh nonce and a new signature."
            ),
            Reject::BodyTooLarge { limit } => {
                format!("The request body exceeds the limit of {limit} bytes for this route.")
            }
            Reject::ReplayCacheFull { retry_after } => format!(
                "The server cannot record more nonces right now; retry in {retry_after} s with a \
                 fresh nonce."
            ),
            Reject::ReplayCheckUnavailable => {
                "The replay check could not complete; retry with a fresh nonce.".to_string()
            }
            Reject::NoMatchingPolicy => {
                "No edge-warden policy covers this route, so the request is refused.".to_string()
            }
            Reject::OriginNotAllowed => {
                "Requests from this Origin are not allowed on this route.".to_string()
            }
            Reject::CorsMethodNotAllowed { what, allowed } => format!(
                "The preflight asked for a {what} this route does not allow cross-origin; \
                 allowed: {allowed}."
            ),
            Reject::HostNotAllowed => {
                "The Host header does not name a host this service answers for.".to_string()
            }
            Reject::MissingApiKey => "This route requires an API key.".to_string(),
            Reject::InvalidApiKey => "The API key is not valid.".to_string(),
            Reject::ExpiredApiKey => "The API key has expired; use its replacement.".to_string(),
            Reject::ApiKeyNotYetValid => {
                "The API key is not valid yet; use the current key until its start date."
                    .to_string()
            }
            Reject::InsufficientRole => {
                "The API key is valid but its role may not use this route.".to_string()
            }
            Reject::IpNotAllowed => {
                "Requests from this client address are not allowed on this route.".to_string()
            }
            Reject::TooManyAuthFailures { retry_after } => format!(
                "Too many failed authentications from this address; retry in {retry_after} s."
            ),
            Reject::RateLimited => "This caller exceeded the rate limit of this route; retry \
                                    after the seconds in Retry-After."
                .to_string(),
            Reject::Internal => "edge-warden could not process this request, so it was not \
                                 forwarded; retry, and report the request id if it persists."
                .to_string(),
            Reject::StateUnavailable => "The replay and lockout state shared by this \
                                         service's gateways could not be reached in time, so \
                                         the request was not forwarded; retry after the \
                                         seconds in Retry-After, with a fresh nonce if signed."
                .to_string(),
            Reject::IdempotencyKeyMissing => "This route requires an Idempotency-Key header on \
                                              this method: a unique value per operation, the \
                                              same on every retry of it."
                .to_string(),
            Reject::IdempotencyKeyInvalid => format!(
                "The Idempotency-Key must be sent once, as a quoted string (\"...\") or a bare \
                 token of 1 to {} visible ASCII characters; X-Idempotency-Key, if also sent, \
                 must hold the same key.",
                crate::idempotency::MAX_KEY_LEN
            ),
            Reject::IdempotencyRequestInProgress => "A request with this Idempotency-Key is \
                                                     still being processed; retry after the \
                                                     seconds in Retry-After to get its response."
                .to_string(),
            Reject::IdempotencyKeyReused => "This Idempotency-Key was used with a different \
                                             request (method, path or body); use a new key for \
                                             a new operation."
                .to_string(),
            Reject::IdempotencyResponseNotStored => "The request with this Idempotency-Key was \
                                                     processed, but its response was too large \
                                                     to keep for replay; it will not be \
                                                     processed again. Look the result up instead."
                .to_string(),
            Reject::IdempotencyUnavailable => "The idempotency check could not record this \
                                               request, so it was not forwarded; retry after \
                                               the seconds in Retry-After with the same key."
                .to_string(),
            Reject::InvalidFileName { reason } => format!(
                "A file name in the upload {reason}. Names must be 1 to 255 bytes of UTF-8 \
                 without path separators, `..` or control characters."
            ),
            Reject::FileTypeNotAllowed { allowed } => format!(
                "An uploaded file's extension or declared Content-Type is not allowed on this \
                 route; allowed extensions: {allowed}."
            ),
            Reject::ContentMismatch => "The first bytes of an uploaded file do not match the \
                                        type its extension and Content-Type declare."
                .to_string(),
            Reject::MalformedMultipart { reason } => {
                format!("The multipart/form-data body {reason}.")
            }
            Reject::FileTooLarge { limit } => {
                format!("An uploaded file exceeds the limit of {limit} bytes for this route.")
            }
            Reject::TooManyParts { what, limit } => {
                format!("The upload has more {what} than the {limit} this route allows.")
            }
            Reject::MethodNotAllowed { allow } => {
                format!("This route does not accept this method; allowed: {allow}.")
            }
            Reject::UnsupportedMediaType { accepted } => format!(
                "This route accepts request bodies of these media types only, named in \
                 Content-Type: {accepted}."
            ),
            Reject::MissingHeader { header } => {
                format!("The {header} header is required on this route.")
            }
            Reject::InvalidHeader { header, reason } => format!("The {header} header {reason}."),
            Reject::InvalidPath => "The path holds a dot segment (`.` or `..`, in any \
                                    encoding), an overlong UTF-8 sequence or an empty segment; \
                                    send the path in its plain, resolved form."
                .to_string(),
            Reject::InvalidCharacters { part } => format!(
                "The {part} holds a control character (raw or percent-encoded), which this \
                 service does not accept."
            ),
            Reject::NoSignature { header, scheme } => {
                format!("This route requires {scheme}: the {header} header is missing.")
            }
            Reject::WrongSignature { scheme } => {
                format!("The signature does not match. This route expects {scheme}.")
            }
            Reject::MissingSignedComponents { missing } => format!(
                "The signature does not cover what this route requires; add to its covered \
                 components: {missing}."
            ),
            Reject::SignatureNotAccepted { reason } => {
                format!("The signature is not accepted: {reason}.")
            }
            Reject::ContentDigestMismatch => "The Content-Digest header does not match the \
                                              request body; compute it over the body bytes \
                                              exactly as sent (RFC 9530)."
                .to_string(),
        }
    }

    /// Whether this rejection is a failed attempt at authenticating (a wrong credential), which
    /// counts toward the brute-force lockout. Missing credentials do not count.
    pub fn is_auth_failure(&self) -> bool {
        matches!(
            self,
            Reject::InvalidSignature | Reject::WrongSignature { .. } | Reject::InvalidApiKey
        )
    }

    /// Headers that belong to this rejection beyond the content type.
    pub fn extra_headers(&self) -> Vec<(&'static str, String)> {
        match self {
            Reject::MissingSignature { .. }
            | Reject::TimestampOutOfWindow { .. }
            | Reject::InvalidSignature
            | Reject::NonceReplayed => vec![(
                "www-authenticate",
                format!(
                    "HMAC-SHA256 realm=\"edge-warden\", headers=\"{} {} {}\"",
                    SIGNATURE_HEADER.to_ascii_lowercase(),
                    TIMESTAMP_HEADER.to_ascii_lowercase(),
                    NONCE_HEADER.to_ascii_lowercase()
                ),
            )],
            // A 401 carries a challenge (RFC 9110); the other schemes name no headers in it.
            Reject::NoSignature { .. }
            | Reject::WrongSignature { .. }
            | Reject::MissingSignedComponents { .. }
            | Reject::SignatureNotAccepted { .. } => vec![(
                "www-authenticate",
                "Signature realm=\"edge-warden\"".to_string(),
            )],
            Reject::ReplayCacheFull { retry_after } => {
                vec![("retry-after", retry_after.to_string())]
            }
            Reject::ReplayCheckUnavailable
            | Reject::StateUnavailable
            | Reject::IdempotencyUnavailable
            | Reject::IdempotencyRequestInProgress => {
                vec![("retry-after", "1".to_string())]
            }
            Reject::TooManyAuthFailures { retry_after } => {
                vec![("retry-after", retry_after.to_string())]
            }
            Reject::MethodNotAllowed { allow } => vec![("allow", allow.clone())],
            Reject::UnsupportedMediaType { accepted } => vec![("accept", accepted.clone())],
            Reject::MissingApiKey
            | Reject::InvalidApiKey
            | Reject::ExpiredApiKey
            | Reject::ApiKeyNotYetValid => {
                vec![(
                    "www-authenticate",
                    "ApiKey realm=\"edge-warden\"".to_string(),
                )]
            }
            _ => Vec::new(),
        }
    }
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u32,
    detail: String,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
}

/// The complete local reply for a rejection.
pub struct Response {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// Turns a rejection into the reply the client receives. `request_id` is Envoy's `x-request-id`.
pub fn respond(reject: &Reject, request_id: Option<&str>) -> Response {
    let problem = Problem {
        kind: format!("urn:edge-warden:problem:{}", reject.code()),
        title: reject.title(),
        status: reject.status(),
        detail: reject.detail(),
        code: reject.code(),
        request_id: request_id.filter(|id| usable_request_id(id.as_bytes()).is_some()),
    };
    // Serialising a struct of strings and integers cannot fail; fall back to a fixed body anyway so
    // that no path here can panic.
    let body = serde_json::to_vec(&problem).unwrap_or_else(|_| {
        format!(
            "{{\"status\":{},\"code\":\"{}\"}}",
            reject.status(),
            reject.code()
        )
        .into_bytes()
    });
    let mut headers = vec![
        ("content-type", "application/problem+json".to_string()),
        ("cache-control", "no-store".to_string()),
    ];
    headers.extend(reject.extra_headers());
    Response {
        status: reject.status(),
        headers,
        body,
    }
}

/// A request id fit for a log line and a reply: 1 to 128 letters, digits, `-`, `_`, `.` or `:`
/// (UUIDs, ULIDs, trace ids). Anything else (a forged `key=value` field, a 20 KB blob, control
/// characters) is not used at all.
pub fn usable_request_id(value: &[u8]) -> Option<&str> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    // Checked ASCII above, so this cannot fail.
    ok.then(|| std::str::from_utf8(value).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Reject> {
        vec![
            Reject::MissingSignature {
                header: SIGNATURE_HEADER,
            },
            Reject::MalformedHeader {
                header: NONCE_HEADER,
                reason: "is too short",
            },
            Reject::DuplicatedHeader {
                header: NONCE_HEADER,
            },
            Reject::TimestampOutOfWindow {
                skew: -412,
                window: 300,
                what: TIMESTAMP_HEADER,
            },
            Reject::InvalidSignature,
            Reject::NonceReplayed,
            Reject::BodyTooLarge { limit: 10 },
            Reject::ReplayCacheFull { retry_after: 7 },
            Reject::ReplayCheckUnavailable,
            Reject::StateUnavailable,
            Reject::IdempotencyKeyMissing,
            Reject::IdempotencyKeyInvalid,
            Reject::IdempotencyRequestInProgress,
            Reject::IdempotencyKeyReused,
            Reject::IdempotencyResponseNotStored,
            Reject::IdempotencyUnavailable,
            Reject::NoMatchingPolicy,
            Reject::OriginNotAllowed,
            Reject::CorsMethodNotAllowed {
                what: "method",
                allowed: "GET".into(),
            },
            Reject::HostNotAllowed,
            Reject::MissingApiKey,
            Reject::InvalidApiKey,
            Reject::ExpiredApiKey,
            Reject::ApiKeyNotYetValid,
            Reject::InsufficientRole,
            Reject::IpNotAllowed,
            Reject::TooManyAuthFailures { retry_after: 9 },
            Reject::RateLimited,
            Reject::Internal,
            Reject::InvalidFileName {
                reason: "contains `..`",
            },
            Reject::FileTypeNotAllowed {
                allowed: "mp3, wav".into(),
            },
            Reject::ContentMismatch,
            Reject::MalformedMultipart {
                reason: "ends before its closing boundary",
            },
            Reject::FileTooLarge { limit: 100 },
            Reject::TooManyParts {
                what: "files",
                limit: 1,
            },
            Reject::MethodNotAllowed {
                allow: "GET, POST".into(),
            },
            Reject::UnsupportedMediaType {
                accepted: "application/json".into(),
            },
            Reject::MissingHeader {
                header: "x-device-id".into(),
            },
            Reject::InvalidHeader {
                header: "x-device-id".into(),
                reason: "does not have the form this route requires",
            },
            Reject::InvalidPath,
            Reject::InvalidCharacters { part: "query" },
            Reject::NoSignature {
                header: "Signature-Input",
                scheme: "an RFC 9421 HTTP message signature",
            },
            Reject::WrongSignature {
                scheme: "an RFC 9421 hmac-sha256 signature",
            },
            Reject::MissingSignedComponents {
                missing: "@authority content-digest".into(),
            },
            Reject::SignatureNotAccepted {
                reason: "it has expired",
            },
            Reject::ContentDigestMismatch,
        ]
    }

    #[test]
    fn the_code_list_holds_every_code_once() {
        let mut listed = Reject::CODES.to_vec();
        listed.sort_unstable();
        listed.dedup();
        assert_eq!(listed.len(), Reject::CODES.len(), "a code is listed twice");
        let mut given: Vec<&str> = all().iter().map(Reject::code).collect();
        given.sort_unstable();
        given.dedup();
        assert_eq!(given, listed);
    }

    #[test]
    fn every_rejection_is_problem_json_with_its_code_and_status() {
        for r in all() {
            let resp = respond(&r, Some("abc-123"));
            let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
            assert_eq!(v["code"], r.code());
            assert_eq!(v["status"], r.status());
            assert_eq!(v["request_id"], "abc-123");
            assert!(v["type"].as_str().unwrap().ends_with(r.code()));
            assert!(resp
                .headers
                .contains(&("content-type", "application/problem+json".to_string())));
        }
    }

    #[test]
    fn authentication_failures_are_401_with_a_challenge() {
        for r in all().into_iter().filter(|r| r.status() == 401) {
            let resp = respond(&r, None);
            assert_eq!(resp.status, 401);
            assert!(resp.headers.iter().any(|(n, _)| *n == "www-authenticate"));
        }
    }

    #[test]
    fn stale_timestamp_detail_says_how_old_it_is() {
        let r = Reject::TimestampOutOfWindow {
            skew: -412,
            window: 300,
            what: TIMESTAMP_HEADER,
        };
        assert!(r.detail().contains("412 s old"));
        let r = Reject::TimestampOutOfWindow {
            skew: 301,
            window: 300,
            what: "webhook-timestamp",
        };
        assert!(r
            .detail()
            .contains("webhook-timestamp is 301 s in the future"));
    }

    #[test]
    fn forged_fields_and_huge_ids_are_not_usable_request_ids() {
        assert_eq!(
            usable_request_id(b"0f8a7c1e-6b2d-4f3a-9e1c-2b7d9a4c5e6f"),
            Some("0f8a7c1e-6b2d-4f3a-9e1c-2b7d9a4c5e6f")
        );
        for bad in [
            &b"abc code=ok status=200"[..],
            b"id\nedge-warden rejected request",
            b"",
            &[0xff, 0xfe],
        ] {
            assert_eq!(usable_request_id(bad), None, "{bad:?}");
        }
        assert_eq!(usable_request_id(&[b'a'; 128]).map(str::len), Some(128));
        assert_eq!(usable_request_id(&[b'a'; 129]), None);
        assert_eq!(usable_request_id(&[b'a'; 20_000]), None);
    }

    #[test]
    fn odd_request_ids_are_not_echoed() {
        let resp = respond(&Reject::InvalidSignature, Some("<script>"));
        let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert!(v.get("request_id").is_none());
    }
}
