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
            invalid: self.invalid.wrapping_sub(earlier.invalid),
            errors: self.errors.wrapping_sub(earlier.errors),
        }
    }

    /// The summary line: `admits=.. claims=.. replays=.. lockouts=.. failures=.. invalid=.. errors=..`.
    pub fn line(&self) -> String {
        format!(
            "admits={} claims={} replays={} lockouts={} failures={} invalid={} errors={}",
            self.admits,
            self.claims,
            self.replays,
            self.lockouts,
            self.failures,
            self.invalid,
            self.errors
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
        let d = s.snapshot().since(&a);
        assert_eq!(
            d.line(),
            "admits=0 claims=2 replays=0 lockouts=0 failures=0 invalid=0 errors=1"
        );
    }
}
