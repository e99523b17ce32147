//! Call counters, logged as one line a minute. Counts only: no client, key or fingerprint.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Stats {
    /// Admit calls answered (any outcome, errors included).
    pub admits: AtomicU64,
    /// Claims made: the fingerprint was new.
    pub claims: AtomicU64,
    /// Claims refused: the fingerprint was claimed before (a replay).
    pub replays: AtomicU64,
    /// Admit calls refused because the client was locked out.
    pub lockouts: AtomicU64,
    /// RecordFailure calls answered.
    pub failures: AtomicU64,
    /// BeginIdempotent calls answered (any outcome, errors included).
    pub begins: AtomicU64,
    /// Idempotency keys claimed (CLAIMED).
    pub idem_claims: AtomicU64,
    /// Begins that found the key in flight (IN_PROGRESS).
    pub in_progress: AtomicU64,
    /// Begins that found the key completed (COMPLETED or COMPLETED_NOT_STORED).
    pub completed: AtomicU64,
    /// Begins that found the key used with another request (MISMATCH).
    pub mismatches: AtomicU64,
    /// CompleteIdempotent calls answered.
    pub completes: AtomicU64,
    /// ReleaseIdempotent calls answered.
    pub releases: AtomicU64,
    /// Completes and Releases whose token no longer held the claim (stored or released false).
    pub stale: AtomicU64,
    /// Calls answered INVALID_ARGUMENT.
    pub invalid: AtomicU64,
    /// Calls answered UNAVAILABLE (Redis error, deadline, or too few replicas acknowledged).
    pub errors: AtomicU64,
}

/// One reading of every counter.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub admits: u64,
    pub claims: u64,
    pub replays: u64,
    pub lockouts: u64,
    pub failures: u64,
    pub begins: u64,
    pub idem_claims: u64,
    pub in_progress: u64,
    pub completed: u64,
    pub mismatches: u64,
    pub completes: u64,
    pub releases: u64,
    pub stale: u64,
    pub invalid: u64,
    pub errors: u64,
}

impl Stats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            admits: r(&self.admits),
            claims: r(&self.claims),
            replays: r(&self.replays),
            lockouts: r(&self.lockouts),
            failures: r(&self.failures),
            begins: r(&self.begins),
            idem_claims: r(&self.idem_claims),
            in_progress: r(&self.in_progress),
            completed: r(&self.completed),
            mismatches: r(&self.mismatches),
            completes: r(&self.completes),
            releases: r(&self.releases),
            stale: r(&self.stale),
            invalid: r(&self.invalid),
            errors: r(&self.errors),
        }
    }
}

impl Snapshot {
    /// The counts since `earlier`.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            admits: self.admits.wrapping_sub(earlier.admits),
            claims: self.claims.wrapping_sub(earlier.claims),
            replays: self.replays.wrapping_sub(earlier.replays),
            lockouts: self.lockouts.wrapping_sub(earlier.lockouts),
            failures: self.failures.wrapping_sub(earlier.failures),
            begins: self.begins.wrapping_sub(earlier.begins),
            idem_claims: self.idem_claims.wrapping_sub(earlier.idem_claims),
            in_progress: self.in_progress.wrapping_sub(earlier.in_progress),
            completed: self.completed.wrapping_sub(earlier.completed),
            mismatches: self.mismatches.wrapping_sub(earlier.mismatches),
            completes: self.completes.wrapping_sub(earlier.completes),
            releases: self.releases.wrapping_sub(earlier.releases),
            stale: self.stale.wrapping_sub(earlier.stale),
            invalid: self.invalid.wrapping_sub(earlier.invalid),
            errors: self.errors.wrapping_sub(earlier.errors),
        }
    }

    /// The summary line: `admits=.. claims=.. .. invalid=.. errors=..`, every counter in the
    /// order of [`Stats`].
    pub fn line(&self) -> String {
        format!(
            "admits={} claims={} replays={} lockouts={} failures={} begins={} idem_claims={} in_progress={} completed={} mismatches={} completes={} releases={} stale={} invalid={} errors={}",
            self.admits,
            self.claims,
            self.replays,
            self.lockouts,
            self.failures,
            self.begins,
            self.idem_claims,
            self.in_progress,
            self.completed,
            self.mismatches,
            self.completes,
            self.releases,
            self.stale,
            self.invalid,
            self.errors,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas() {
        let s = Stats::default();
        let a = s.snapshot();
        Stats::bump(&s.claims);
        Stats::bump(&s.claims);
        Stats::bump(&s.errors);
        Stats::bump(&s.mismatches);
        let d = s.snapshot().since(&a);
        assert_eq!(
            d.line(),
            "admits=0 claims=2 replays=0 lockouts=0 failures=0 begins=0 idem_claims=0 \
             in_progress=0 completed=0 mismatches=1 completes=0 releases=0 stale=0 invalid=0 errors=1"
        );
    }
}
