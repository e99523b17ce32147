//! The gRPC State service: validates each call, runs it on the [`Store`], maps the outcome.
//!
//! Errors: a malformed call is INVALID_ARGUMENT, naming the field and the rule (never echoing the
//! value); anything that goes wrong on the Redis side is UNAVAILABLE with a generic message.
//! Log lines name the kind of error only: no client, key, fingerprint or Redis address.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tonic::{Request, Response, Status};

use crate::pb::begin_idempotent_response::Outcome;
use crate::pb::state_server::State;
use crate::pb::{
    AdmitRequest, AdmitResponse, BeginIdempotentRequest, BeginIdempotentResponse,
    CompleteIdempotentRequest, CompleteIdempotentResponse, RecordFailureRequest,
    RecordFailureResponse, ReleaseIdempotentRequest, ReleaseIdempotentResponse, StoredResponse,
};
use crate::stats::Stats;
use crate::store::{AdmitOp, BeginOutcome, IdemBytes, Replay, Store, StoreError};

/// Fingerprints: 1..=64 bytes (the filter sends 16).
pub const MAX_FINGERPRINT_BYTES: usize = 64;
/// Claim TTLs and failure windows: 1 s ..= 1 day.
pub const MAX_SECONDS: u32 = 86_400;
/// Lockout keys ("198.51.100.7", "2001:db8::/64"): 1..=128 characters.
pub const MAX_CLIENT_CHARS: usize = 128;
/// How long an idempotency key stays in flight without a Complete or Release: 1 s ..= 1 hour.
pub const MAX_IN_FLIGHT_SECONDS: u32 = 3_600;
/// How long a completed idempotency record is kept: 1 s ..= 7 days.
pub const MAX_IDEMPOTENCY_TTL_SECONDS: u32 = 604_800;
/// The largest request decoded: a Complete with the largest stored response (a 1 MiB body, a
/// content type of 256 characters of up to 4 bytes each, a key and a token of 64 bytes each)
/// and room for the protobuf framing. The limit is per service, so it applies to every RPC.
pub const MAX_REQUEST_BYTES: usize = Replay::MAX_BODY_BYTES + 4096;

pub struct StateService {
    store: Arc<Store>,
    stats: Arc<Stats>,
    /// Unix second of the last warning logged, so an outage logs one line a second, not one a call.
    last_warning: AtomicU64,
}

impl StateService {
    pub fn new(store: Arc<Store>, stats: Arc<Stats>) -> Self {
        StateService {
            store,
            stats,
            last_warning: AtomicU64::new(0),
        }
    }

    fn invalid(&self, why: &'static str) -> Status {
        Stats::bump(&self.stats.invalid);
        Status::invalid_argument(why)
    }

    fn unavailable(&self, rpc: &str, e: StoreError) -> Status {
        Stats::bump(&self.stats.errors);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let last = self.last_warning.load(Ordering::Relaxed);
        if now != last
            && self
                .last_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            log::warn!(
                "{rpc}: state store error: {} (answered UNAVAILABLE)",
                e.kind()
            );
        }
        match e {
            StoreError::Unreplicated => {
                Status::unavailable("state store: too few replicas acknowledged the write")
            }
            _ => Status::unavailable("state store unavailable"),
        }
    }
}

/// `errors`: what to answer for an empty client and for one that is too long.
fn check_client(client: &str, errors: [&'static str; 2]) -> Result<(), &'static str> {
    if client.is_empty() {
        return Err(errors[0]);
    }
    if client.chars().count() > MAX_CLIENT_CHARS {
        return Err(errors[1]);
    }
    Ok(())
}

/// The checks of an Admit, as an [`AdmitOp`].
pub fn validate_admit(req: &AdmitRequest) -> Result<AdmitOp<'_>, &'static str> {
    let lockout = match &req.lockout {
        None => None,
        Some(l) => {
            check_client(
                &l.client,
                [
                    "lockout.client: must not be empty",
                    "lockout.client: at most 128 characters",
                ],
            )?;
            if l.max_failures == 0 {
                return Err("lockout.max_failures: must be at least 1");
            }
            Some((l.client.as_str(), l.max_failures))
        }
    };
    let claim = match &req.claim {
        None => None,
        Some(c) => {
            if c.fingerprint.is_empty() || c.fingerprint.len() > MAX_FINGERPRINT_BYTES {
                return Err("claim.fingerprint: 1 to 64 bytes");
            }
            if c.ttl_seconds == 0 || c.ttl_seconds > MAX_SECONDS {
                return Err("claim.ttl_seconds: 1 to 86400");
            }
            Some((c.fingerprint.as_slice(), c.ttl_seconds))
        }
    };
    if lockout.is_none() && claim.is_none() {
        return Err("an Admit needs a lockout check, a claim or both");
    }
    Ok(AdmitOp { lockout, claim })
}

/// The checks of a RecordFailure.
pub fn validate_record_failure(req: &RecordFailureRequest) -> Result<(), &'static str> {
    check_client(
        &req.client,
        [
            "client: must not be empty",
            "client: at most 128 characters",
        ],
    )?;
    if req.window_seconds == 0 || req.window_seconds > MAX_SECONDS {
        return Err("window_seconds: 1 to 86400");
    }
    if req.max_failures == 0 {
        return Err("max_failures: must be at least 1");
    }
    Ok(())
}

/// A key, request fingerprint or token of an idempotency call (1..=64 bytes), or `error`.
fn idem_bytes<'a>(bytes: &'a [u8], error: &'static str) -> Result<IdemBytes<'a>, &'static str> {
    IdemBytes::new(bytes).ok_or(error)
}

/// A validated BeginIdempotent.
#[derive(Debug, Clone, Copy)]
pub struct BeginOp<'a> {
    pub key: IdemBytes<'a>,
    pub request: IdemBytes<'a>,
    pub token: IdemBytes<'a>,
    pub in_flight_seconds: u32,
}

/// The checks of a BeginIdempotent.
pub fn validate_begin(req: &BeginIdempotentRequest) -> Result<BeginOp<'_>, &'static str> {
    let key = idem_bytes(&req.key, "key: 1 to 64 bytes")?;
    let request = idem_bytes(&req.request, "request: 1 to 64 bytes")?;
    let token = idem_bytes(&req.token, "token: 1 to 64 bytes")?;
    if req.in_flight_seconds == 0 || req.in_flight_seconds > MAX_IN_FLIGHT_SECONDS {
        return Err("in_flight_seconds: 1 to 3600");
    }
    Ok(BeginOp {
        key,
        request,
        token,
        in_flight_seconds: req.in_flight_seconds,
    })
}

/// A validated CompleteIdempotent (`response` None: completed, nothing stored).
#[derive(Debug, Clone, Copy)]
pub struct CompleteOp<'a> {
    pub key: IdemBytes<'a>,
    pub token: IdemBytes<'a>,
    pub ttl_seconds: u32,
    pub response: Option<Replay<'a>>,
}

/// The checks of a CompleteIdempotent.
pub fn validate_complete(req: &CompleteIdempotentRequest) -> Result<CompleteOp<'_>, &'static str> {
    let key = idem_bytes(&req.key, "key: 1 to 64 bytes")?;
    let token = idem_bytes(&req.token, "token: 1 to 64 bytes")?;
    if req.ttl_seconds == 0 || req.ttl_seconds > MAX_IDEMPOTENCY_TTL_SECONDS {
        return Err("ttl_seconds: 1 to 604800");
    }
    let response = match &req.response {
        None => None,
        Some(r) => Some(Replay::new(r.status, &r.content_type, &r.body)?),
    };
    Ok(CompleteOp {
        key,
        token,
        ttl_seconds: req.ttl_seconds,
        response,
    })
}

/// The checks of a ReleaseIdempotent: (key, token).
pub fn validate_release(
    req: &ReleaseIdempotentRequest,
) -> Result<(IdemBytes<'_>, IdemBytes<'_>), &'static str> {
    Ok((
        idem_bytes(&req.key, "key: 1 to 64 bytes")?,
        idem_bytes(&req.token, "token: 1 to 64 bytes")?,
    ))
}

#[tonic::async_trait]
impl State for StateService {
    async fn admit(
        &self,
        request: Request<AdmitRequest>,
    ) -> Result<Response<AdmitResponse>, Status> {
        Stats::bump(&self.stats.admits);
        let req = request.into_inner();
        let op = validate_admit(&req).map_err(|why| self.invalid(why))?;
        let outcome = self
            .store
            .admit(op)
            .await
            .map_err(|e| self.unavailable("Admit", e))?;
        if outcome.locked_for_seconds > 0 {
            Stats::bump(&self.stats.lockouts);
        } else if op.claim.is_some() {
            Stats::bump(if outcome.claimed {
                &self.stats.claims
            } else {
                &self.stats.replays
            });
        }
        Ok(Response::new(AdmitResponse {
            locked_for_seconds: outcome.locked_for_seconds,
            claimed: outcome.claimed,
        }))
    }

    async fn record_failure(
        &self,
        request: Request<RecordFailureRequest>,
    ) -> Result<Response<RecordFailureResponse>, Status> {
        Stats::bump(&self.stats.failures);
        let req = request.into_inner();
        validate_record_failure(&req).map_err(|why| self.invalid(why))?;
        let outcome = self
            .store
            .record_failure(&req.client, req.window_seconds, req.max_failures)
            .await
            .map_err(|e| self.unavailable("RecordFailure", e))?;
        Ok(Response::new(RecordFailureResponse {
            failures: outcome.failures,
            locked_for_seconds: outcome.locked_for_seconds,
        }))
    }

    async fn begin_idempotent(
        &self,
        request: Request<BeginIdempotentRequest>,
    ) -> Result<Response<BeginIdempotentResponse>, Status> {
        Stats::bump(&self.stats.begins);
        let req = request.into_inner();
        let op = validate_begin(&req).map_err(|why| self.invalid(why))?;
        let found = self
            .store
            .begin_idempotent(op.key, op.request, op.token, op.in_flight_seconds)
            .await
            .map_err(|e| self.unavailable("BeginIdempotent", e))?;
        let (counter, outcome, response) = match found {
            BeginOutcome::Claimed => (&self.stats.idem_claims, Outcome::Claimed, None),
            BeginOutcome::InProgress => (&self.stats.in_progress, Outcome::InProgress, None),
            BeginOutcome::Completed(r) => (
                &self.stats.completed,
                Outcome::Completed,
                Some(StoredResponse {
                    status: r.status,
                    content_type: r.content_type,
                    body: r.body,
                }),
            ),
            BeginOutcome::CompletedNotStored => {
                (&self.stats.completed, Outcome::CompletedNotStored, None)
            }
            BeginOutcome::Mismatch => (&self.stats.mismatches, Outcome::Mismatch, None),
        };
        Stats::bump(counter);
        Ok(Response::new(BeginIdempotentResponse {
            outcome: outcome as i32,
            response,
        }))
    }

    async fn complete_idempotent(
        &self,
        request: Request<CompleteIdempotentRequest>,
    ) -> Result<Response<CompleteIdempotentResponse>, Status> {
        Stats::bump(&self.stats.completes);
        let req = request.into_inner();
        let op = validate_complete(&req).map_err(|why| self.invalid(why))?;
        let stored = self
            .store
            .complete_idempotent(op.key, op.token, op.ttl_seconds, op.response)
            .await
            .map_err(|e| self.unavailable("CompleteIdempotent", e))?;
        if !stored {
            Stats::bump(&self.stats.stale);
        }
        Ok(Response::new(CompleteIdempotentResponse { stored }))
    }

    async fn release_idempotent(
        &self,
        request: Request<ReleaseIdempotentRequest>,
    ) -> Result<Response<ReleaseIdempotentResponse>, Status> {
        Stats::bump(&self.stats.releases);
        let req = request.into_inner();
        let (key, token) = validate_release(&req).map_err(|why| self.invalid(why))?;
        let released = self
            .store
            .release_idempotent(key, token)
            .await
            .map_err(|e| self.unavailable("ReleaseIdempotent", e))?;
        if !released {
            Stats::bump(&self.stats.stale);
        }
        Ok(Response::new(ReleaseIdempotentResponse { released }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{Claim, LockoutCheck};

    fn admit(lockout: Option<(&str, u32)>, claim: Option<(Vec<u8>, u32)>) -> AdmitRequest {
        AdmitRequest {
            lockout: lockout.map(|(c, m)| LockoutCheck {
                client: c.into(),
                max_failures: m,
            }),
            claim: claim.map(|(f, t)| Claim {
                fingerprint: f,
                ttl_seconds: t,
            }),
        }
    }

    #[test]
    fn admit_bounds() {
        assert!(validate_admit(&admit(None, None)).is_err());
        assert!(validate_admit(&admit(Some(("", 3)), None)).is_err());
        assert!(validate_admit(&admit(Some(("a", 0)), None)).is_err());
        let long = "é".repeat(128);
        assert!(
            validate_admit(&admit(Some((&long, 3)), None)).is_ok(),
            "128 chars, 256 bytes"
        );
        let longer = "a".repeat(129);
        assert!(validate_admit(&admit(Some((&longer, 3)), None)).is_err());
        assert!(validate_admit(&admit(None, Some((vec![], 10)))).is_err());
        assert!(validate_admit(&admit(None, Some((vec![1; 65], 10)))).is_err());
        assert!(validate_admit(&admit(None, Some((vec![1; 64], 10)))).is_ok());
        assert!(validate_admit(&admit(None, Some((vec![1], 0)))).is_err());
        assert!(validate_admit(&admit(None, Some((vec![1], 86_401)))).is_err());
        assert!(validate_admit(&admit(None, Some((vec![1], 86_400)))).is_ok());
        assert!(
            validate_admit(&admit(Some(("198.51.100.7", 5)), Some((vec![1; 16], 300)))).is_ok()
        );
    }

    #[test]
    fn record_failure_bounds() {
        let r = |c: &str, w, m| RecordFailureRequest {
            client: c.into(),
            window_seconds: w,
            max_failures: m,
        };
        assert!(validate_record_failure(&r("a", 60, 3)).is_ok());
        assert!(validate_record_failure(&r("", 60, 3)).is_err());
        assert!(validate_record_failure(&r("a", 0, 3)).is_err());
        assert!(validate_record_failure(&r("a", 86_401, 3)).is_err());
        assert!(validate_record_failure(&r("a", 60, 0)).is_err());
    }
}
