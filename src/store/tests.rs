//! The replay cache and the lockout over the in-memory store, and their config sections.

use super::*;
use crate::checks::signature::{parse_headers, sign, Keyring, SigningKey, Verifier};
use crate::headers::RequestHeaders;
use crate::secret::Secret;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

/// A real proof, made by verifying a real signature.
fn proof() -> SignatureVerified {
    let nonce = "proof-nonce-0123456789";
    let sig = sign(SECRET, b"", "1", nonce);
    let h = RequestHeaders::new(vec![
        ("x-request-signature".into(), sig.into_bytes()),
        ("x-request-timestamp".into(), b"1".to_vec()),
        ("x-request-nonce".into(), nonce.as_bytes().to_vec()),
    ]);
    let req = parse_headers(&h).unwrap();
    let key = SigningKey {
        id: "k".into(),
        secret: Secret::new(SECRET.to_vec()),
    };
    Verifier::new(&Keyring::new(&[key])).finish(&req).unwrap()
}

/// The window of most tests: slices of 10 s, as with the default window.
const WINDOW: u64 = 300;

fn cache(store: &MemoryStore, capacity: u32) -> NonceCache {
    let c = NonceCache::new(capacity, WINDOW);
    c.ensure_shards(store).unwrap();
    c
}

/// Bytes of every replay-cache value in the store (shards and the shard count).
fn replay_bytes(store: &MemoryStore) -> usize {
    store
        .sizes()
        .iter()
        .filter(|(key, _)| key.starts_with("edge-warden/replay/"))
        .map(|(_, len)| len)
        .sum()
}

#[test]
fn a_nonce_is_accepted_once_then_refused_as_replay() {
    let store = MemoryStore::default();
    let c = cache(&store, 1024);
    let p = proof();
    assert!(c
        .record(&store, &p, "nonce-aaaaaaaaaaaaaaaa", 1300, 1000)
        .is_ok());
    assert_eq!(
        c.record(&store, &p, "nonce-aaaaaaaaaaaaaaaa", 1300, 1100),
        Err(Reject::NonceReplayed)
    );
    assert!(c
        .record(&store, &p, "nonce-bbbbbbbbbbbbbbbb", 1300, 1100)
        .is_ok());
}

#[test]
fn replays_are_caught_through_the_last_second_of_their_window_across_slice_boundaries() {
    let store = MemoryStore::default();
    // One shard: every request below reads and writes the same key.
    let c = cache(&store, NONCES_PER_SHARD);
    assert_eq!((c.shards(), c.slice_seconds()), (1, 10));
    let p = proof();
    // Timestamps on a slice's first, middle and last second, the next slice's first, and a
    // whole window ahead of the clock.
    let captured: Vec<(String, u64)> = [1000, 1005, 1009, 1010, 1300]
        .iter()
        .map(|ts| (format!("captured-nonce-{ts}"), ts + WINDOW))
        .collect();
    for (nonce, expires_at) in &captured {
        c.record(&store, &p, nonce, *expires_at, 1000).unwrap();
    }
    // Other clients write the shard every second, dropping whatever has expired, while each
    // captured request is replayed every second up to its `expires_at`: the last second the
    // timestamp check lets it through.
    for now in 1000..=1300 + WINDOW {
        c.record(&store, &p, &format!("other-nonce-{now}"), now + WINDOW, now)
            .unwrap();
        for (nonce, expires_at) in captured.iter().filter(|(_, e)| now <= *e) {
            assert_eq!(
                c.record(&store, &p, nonce, *expires_at, now),
                Err(Reject::NonceReplayed),
                "{nonce} (expires at {expires_at}) replayed at {now}"
            );
        }
    }
}

#[test]
fn a_record_is_kept_to_the_end_of_its_slice_then_dropped_with_it() {
    let store = MemoryStore::default();
    let c = cache(&store, NONCES_PER_SHARD);
    let p = proof();
    // Both expire in the slice 1300–1309.
    c.record(&store, &p, "first-nonce-00000000", 1301, 1000)
        .unwrap();
    c.record(&store, &p, "second-nonce-0000000", 1309, 1001)
        .unwrap();
    // At 1309 the slice is still there, the first record included (kept 8 s past its expiry).
    assert_eq!(
        c.record(&store, &p, "third-nonce-00000000", 1609, 1309),
        Ok(Recorded {
            shard_len: 3,
            purged: 0
        })
    );
    assert_eq!(
        c.record(&store, &p, "first-nonce-00000000", 1301, 1309),
        Err(Reject::NonceReplayed)
    );
    // The first write after it drops the whole slice.
    assert_eq!(
        c.record(&store, &p, "fourth-nonce-0000000", 1610, 1310),
        Ok(Recorded {
            shard_len: 2,
            purged: 2
        })
    );
}

#[test]
fn a_slice_left_from_long_ago_reads_as_empty() {
    let store = MemoryStore::default();
    let c = cache(&store, 64);
    let p = proof();
    c.record(&store, &p, "old-nonce-0000000000", 1300, 1000)
        .unwrap();
    // Nothing writes the shard for a hundred windows. The same nonce, signed again then, is a
    // new nonce: the stale slice counts for nothing and is dropped by this write.
    let later = 1000 + 100 * WINDOW;
    assert_eq!(
        c.record(&store, &p, "old-nonce-0000000000", later + WINDOW, later),
        Ok(Recorded {
            shard_len: 1,
            purged: 1
        })
    );
    // The shard holds one slice of one record (the shard count key holds 4 bytes).
    assert_eq!(replay_bytes(&store), SLICE_HEADER + FINGERPRINT + 4);
}

#[test]
fn a_full_shard_refuses_until_its_earliest_slice_ends() {
    let store = MemoryStore::default();
    // One shard of 64.
    let c = cache(&store, 64);
    let p = proof();
    for i in 0..64 {
        // Half expire in the slice ending at 1309, half in the one ending at 1319.
        c.record(
            &store,
            &p,
            &format!("fill-nonce-{i:08}"),
            1300 + i % 2 * 10,
            1000,
        )
        .unwrap();
    }
    assert_eq!(
        c.record(&store, &p, "one-more-nonce-00000", 1300, 1000),
        Err(Reject::ReplayCacheFull { retry_after: 310 })
    );
    assert!(replay_bytes(&store) as u64 <= c.max_bytes() + 4);
    // Once the earliest slice has ended, its room is free again.
    assert_eq!(
        c.record(&store, &p, "one-more-nonce-00000", 1610, 1310),
        Ok(Recorded {
            shard_len: 33,
            purged: 32
        })
    );
}

/// `rate` unique nonces per second for `seconds` seconds from `start`, each with its timestamp
/// `skew(i)` seconds from the clock; the `expires_at` of every nonce accepted. Fails on any
/// refusal.
fn flood(
    store: &MemoryStore,
    c: &NonceCache,
    start: u64,
    rate: u64,
    seconds: u64,
    skew: impl Fn(u64) -> i64,
) -> Vec<u64> {
    let p = proof();
    let mut accepted = Vec::new();
    for now in start..start + seconds {
        for i in 0..rate {
            let n = (now - start) * rate + i;
            let expires_at = now.saturating_add_signed(skew(n)) + WINDOW;
            match c.record(store, &p, &format!("flood-nonce-{n:010}"), expires_at, now) {
                Ok(_) => accepted.push(expires_at),
                Err(e) => panic!("nonce {n} at {now}: {e:?}"),
            }
        }
    }
    accepted
}

#[test]
fn the_sustained_rate_for_whole_windows_is_never_refused_at_under_10_bytes_per_live_nonce() {
    // The default's shards, at the default's load per shard, but 64 of them instead of 15625.
    let capacity = 64 * NONCES_PER_SHARD;
    // Accurate clocks; clocks spread evenly over the window either side; every clock a whole
    // window ahead, at half the rate (its records live twice as long).
    let spread = |n: u64| (n.wrapping_mul(2_654_435_761) % (2 * WINDOW + 1)) as i64 - WINDOW as i64;
    type Skew<'a> = &'a dyn Fn(u64) -> i64;
    let cases: [(&str, u64, Skew); 3] = [
        ("accurate", 1, &|_| 0),
        ("spread", 1, &spread),
        ("ahead", 2, &|_| WINDOW as i64),
    ];
    for (name, divisor, skew) in cases {
        let store = MemoryStore::default();
        let c = cache(&store, capacity);
        let rate = c.sustained_rate() / divisor;
        assert!(rate >= 29, "{name}: {rate}");
        // Two windows and a few slices: every shard has dropped expired slices many times.
        let (start, seconds) = (1_000_000, 2 * WINDOW + 30);
        let accepted = flood(&store, &c, start, rate, seconds, skew);
        let now = start + seconds - 1;
        let live = accepted.iter().filter(|e| **e >= now).count();
        let bytes = replay_bytes(&store);
        let per_nonce = bytes as f64 / live as f64;
        assert!(
            per_nonce <= 10.0,
            "{name}: {bytes} B for {live} live nonces"
        );
        assert!(bytes as u64 <= c.max_bytes() + 4, "{name}: {bytes} B");
    }
}

/// P(X ≥ n) for X Poisson-distributed with mean `mean`: P(X = k) by recurrence from P(X = 0),
/// the tail summed directly (1 − P(X < n) would lose it to rounding).
fn poisson_tail(mean: f64, n: u32) -> f64 {
    let mut term = (-mean).exp();
    for k in 0..n {
        term *= mean / f64::from(k + 1);
    }
    (n..n + 2000)
        .map(|k| {
            let p = term;
            term *= mean / f64::from(k + 1);
            p
        })
        .sum()
}

#[test]
fn the_default_cache_sustains_14000_signed_requests_per_second_in_62_mb() {
    let c = NonceCache::new(DEFAULT_REPLAY_CAPACITY, 300);
    assert_eq!(
        (c.shards(), c.slice_seconds(), c.max_records()),
        (15_625, 10, 7_000_000)
    );
    assert_eq!(c.sustained_rate(), 14_344);
    // Every client a whole window ahead: records live 2 × 300 s plus half a slice.
    let live = c.max_records() * 5 / 8;
    assert_eq!(live / 605, 7_231);
    // At that fill a request finds its shard full with probability ~1.6 × 10^-20.
    let full = poisson_tail(f64::from(NONCES_PER_SHARD) * 5.0 / 8.0, NONCES_PER_SHARD);
    assert!(full < 1e-19, "{full}");
    // Memory: 61.7 MB at most, under 4 KiB per shard.
    assert_eq!(c.max_bytes(), 61_718_750);
    assert!(c.max_bytes() / u64::from(c.shards()) <= 4096);
    // At that fill a shard holds 280 fingerprints in the ~31 slices one window spans.
    let at_fill = 280 * FINGERPRINT + 31 * SLICE_HEADER;
    assert!(at_fill as f64 / 280.0 < 8.7);
}

#[test]
fn every_window_and_capacity_keeps_shards_under_4_kib_and_keys_in_the_tens_of_thousands() {
    for window in [1, 2, 5, 31, 32, 33, 300, 1000, 3599, 3600] {
        for capacity in [
            MIN_REPLAY_CAPACITY,
            1000,
            DEFAULT_REPLAY_CAPACITY,
            MAX_REPLAY_CAPACITY,
        ] {
            let c = NonceCache::new(capacity, window);
            assert!(c.max_records() >= u64::from(capacity));
            assert!(
                c.max_bytes() / u64::from(c.shards()) <= 4096,
                "{capacity} nonces, window {window}: {} B per shard",
                c.max_bytes() / u64::from(c.shards())
            );
            assert!(c.shards() <= 40_000, "{capacity}: {} shards", c.shards());
        }
    }
}

#[test]
fn concurrent_claims_of_one_nonce_across_threads_have_exactly_one_winner() {
    let store = MemoryStore::default();
    // One shard, so that every thread's every write contends for the same key.
    let c = cache(&store, NONCES_PER_SHARD);
    let p = proof();
    let threads = 8;
    for round in 0..20 {
        let barrier = std::sync::Barrier::new(threads);
        let nonce = format!("contended-nonce-{round:04}");
        let results: Vec<Result<Recorded, Reject>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (c, store, p, barrier, nonce) = (&c, &store, &p, &barrier, &nonce);
                    s.spawn(move || {
                        barrier.wait();
                        // A nonce of its own too: no record may be lost to a race either.
                        let own = format!("own-nonce-{round:04}-{t:02}");
                        c.record(store, p, &own, 1300, 1000).unwrap();
                        c.record(store, p, nonce, 1300, 1000)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(winners, 1, "round {round}: {results:?}");
        assert!(results
            .iter()
            .all(|r| r.is_ok() || *r == Err(Reject::NonceReplayed)));
    }
    // Every nonce of every round is still recorded.
    for round in 0..20 {
        for t in 0..threads {
            let own = format!("own-nonce-{round:04}-{t:02}");
            assert_eq!(
                c.record(&store, &p, &own, 1300, 1001),
                Err(Reject::NonceReplayed)
            );
        }
    }
}

#[test]
fn a_reload_with_the_same_capacity_finds_the_nonces_already_recorded() {
    let store = MemoryStore::default();
    let c = cache(&store, 1024);
    let p = proof();
    c.record(&store, &p, "nonce-aaaaaaaaaaaaaaaa", 1300, 1000)
        .unwrap();
    c.ensure_shards(&store).unwrap();
    assert_eq!(
        c.record(&store, &p, "nonce-aaaaaaaaaaaaaaaa", 1300, 1000),
        Err(Reject::NonceReplayed)
    );
    // Another window (slices of 2 s instead of 10) and a capacity with the same shard count:
    // the same keys, and the records in them are found.
    let reloaded = NonceCache::new(1000, 60);
    assert_eq!((reloaded.shards(), reloaded.slice_seconds()), (3, 2));
    reloaded.ensure_shards(&store).unwrap();
    assert_eq!(
        reloaded.record(&store, &p, "nonce-aaaaaaaaaaaaaaaa", 1300, 1100),
        Err(Reject::NonceReplayed)
    );
}

#[test]
fn a_reload_with_another_shard_count_is_refused() {
    let store = MemoryStore::default();
    let c = cache(&store, 1024);
    let bigger = NonceCache::new(4096, WINDOW);
    assert_eq!(bigger.ensure_shards(&store), Err(SetError::Failed));
    // The cache in the store is unchanged: the configuration it belongs to keeps working.
    c.ensure_shards(&store).unwrap();
    assert!(!store
        .sizes()
        .iter()
        .any(|(key, _)| key == "edge-warden/replay/3"));
}

#[test]
fn a_shard_value_this_cache_did_not_write_fails_closed() {
    let store = MemoryStore::default();
    let c = cache(&store, 64);
    store
        .set("edge-warden/replay/0", b"not a list of slices", None)
        .unwrap();
    assert_eq!(
        c.record(&store, &proof(), "nonce-aaaaaaaaaaaaaaaa", 1300, 1000),
        Err(Reject::ReplayCheckUnavailable)
    );
}

#[test]
fn lockout_after_max_failures_until_the_window_ends() {
    let store = MemoryStore::default();
    let l = Lockout::new(64, 3, 300);
    l.ensure_shards(&store).unwrap();
    for expected in 1..=3 {
        assert!(l.check(&store, ip("10.0.0.1"), 1000).is_ok());
        assert_eq!(l.record_failure(&store, "10.0.0.1", 1000), Some(expected));
    }
    assert_eq!(
        l.check(&store, ip("10.0.0.1"), 1100),
        Err(Reject::TooManyAuthFailures { retry_after: 200 })
    );
    // Another IP is unaffected.
    assert!(l.check(&store, ip("10.0.0.2"), 1100).is_ok());
    // The window ends: the IP may try again, and counting restarts.
    assert!(l.check(&store, ip("10.0.0.1"), 1300).is_ok());
    assert_eq!(l.record_failure(&store, "10.0.0.1", 1300), Some(1));
}

/// The client address as the stream would supply it.
fn ip(addr: &'static str) -> impl FnOnce() -> Option<String> {
    move || Some(addr.to_string())
}

#[test]
fn the_address_is_read_only_while_some_lockout_is_in_force() {
    let store = MemoryStore::default();
    let l = Lockout::new(64, 2, 300);
    l.ensure_shards(&store).unwrap();
    let asked = std::cell::Cell::new(0);
    let counted = |addr: &'static str| {
        let asked = &asked;
        move || {
            asked.set(asked.get() + 1);
            Some(addr.to_string())
        }
    };
    // Failures below the limit lock nobody out: no address needed.
    l.record_failure(&store, "10.0.0.1", 1000);
    assert!(l.check(&store, counted("10.0.0.1"), 1000).is_ok());
    assert_eq!(asked.get(), 0);
    // A lockout starts: every check now looks the address up, and only it is refused.
    l.record_failure(&store, "10.0.0.1", 1010);
    assert_eq!(
        l.check(&store, counted("10.0.0.1"), 1100),
        Err(Reject::TooManyAuthFailures { retry_after: 200 })
    );
    assert!(l.check(&store, counted("10.0.0.2"), 1100).is_ok());
    assert_eq!(asked.get(), 2);
    // A later lockout of another address moves the end forward, never back.
    l.record_failure(&store, "10.0.0.3", 1200);
    l.record_failure(&store, "10.0.0.3", 1200);
    assert!(l.check(&store, counted("10.0.0.1"), 1300).is_ok());
    assert_eq!(
        l.check(&store, counted("10.0.0.3"), 1300),
        Err(Reject::TooManyAuthFailures { retry_after: 200 })
    );
    assert_eq!(asked.get(), 4);
    // A lockout that ends sooner does not move the end back.
    l.record_failure(&store, "10.0.0.4", 1000);
    l.record_failure(&store, "10.0.0.4", 1000);
    assert_eq!(
        l.check(&store, counted("10.0.0.3"), 1400),
        Err(Reject::TooManyAuthFailures { retry_after: 100 })
    );
    assert_eq!(asked.get(), 5);
    // Once the last lockout ends, checks are back to the summary alone, also after a reload.
    l.ensure_shards(&store).unwrap();
    assert!(l.check(&store, counted("10.0.0.3"), 1500).is_ok());
    assert_eq!(asked.get(), 5);
}

#[test]
fn a_reload_with_stricter_settings_keeps_addresses_locked_that_they_lock() {
    let store = MemoryStore::default();
    let short = Lockout::new(64, 3, 300);
    short.ensure_shards(&store).unwrap();
    for _ in 0..3 {
        short.record_failure(&store, "10.0.0.1", 1000);
    }
    // Under the old window the lockout ended at 1300.
    assert!(short.check(&store, ip("10.0.0.1"), 1400).is_ok());
    // A longer window: the same failures lock until 4600.
    let long = Lockout::new(64, 3, 3600);
    long.ensure_shards(&store).unwrap();
    assert_eq!(
        long.check(&store, ip("10.0.0.1"), 1400),
        Err(Reject::TooManyAuthFailures { retry_after: 3200 })
    );

    // A lower limit: 4 failures were fine under 10, they lock under 3.
    let store = MemoryStore::default();
    let lenient = Lockout::new(64, 10, 300);
    lenient.ensure_shards(&store).unwrap();
    for _ in 0..4 {
        lenient.record_failure(&store, "10.0.0.2", 1000);
    }
    assert!(lenient.check(&store, ip("10.0.0.2"), 1100).is_ok());
    let strict = Lockout::new(64, 3, 300);
    strict.ensure_shards(&store).unwrap();
    assert!(strict.check(&store, ip("10.0.0.2"), 1100).is_err());
}

/// A store whose summary key cannot be written.
struct SummaryFails(MemoryStore);

impl SharedStore for SummaryFails {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), SetError> {
        self.0.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        if key == Lockout::ACTIVE_UNTIL_KEY {
            return Err(SetError::Failed);
        }
        self.0.set(key, value, cas)
    }
}

#[test]
fn a_failure_that_would_lock_is_not_recorded_when_the_summary_cannot_be_written() {
    let store = SummaryFails(MemoryStore::default());
    let l = Lockout::new(64, 2, 300);
    l.ensure_shards(&store.0).unwrap();
    assert_eq!(l.record_failure(&store, "10.0.0.1", 1000), Some(1));
    // The locking failure is dropped as a whole: the shard still holds one failure, so the
    // summary and the shards never disagree.
    assert_eq!(l.record_failure(&store, "10.0.0.1", 1000), None);
    assert_eq!(l.record_failure(&store.0, "10.0.0.1", 1000), Some(2));
    assert!(l.check(&store.0, ip("10.0.0.1"), 1000).is_err());
}

#[test]
fn lockout_memory_is_14_bytes_per_tracked_address_under_many_source_addresses() {
    let store = MemoryStore::default();
    let l = Lockout::new(512, 5, 300);
    l.ensure_shards(&store).unwrap();
    assert_eq!(l.max_bytes(), 512 * 14);
    for i in 0..10_000 {
        l.record_failure(
            &store,
            &format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
            1000,
        );
    }
    let sizes = store.sizes();
    // Two shards of 256, full, plus the summary of when the latest lockout ends (empty).
    assert_eq!(sizes.len(), 3);
    let shards: Vec<usize> = sizes
        .iter()
        .filter(|(key, _)| key.starts_with("edge-warden/failures/"))
        .map(|(_, len)| *len)
        .collect();
    assert_eq!(shards, [256 * 14, 256 * 14]);
    let total: usize = sizes.iter().map(|(_, len)| len).sum();
    assert_eq!(total as u64, l.max_bytes());
}

#[test]
fn the_default_lockout_tracks_262144_addresses_in_3_5_mib() {
    let l = Lockout::new(default_lockout_capacity(), 5, 300);
    assert_eq!(l.layout.shards, 1024);
    assert_eq!(l.max_bytes(), 3_670_016);
    // 5/8 of it is 546 new failing addresses a second for a whole window, at which a new
    // address finds its shard full with probability ~2 × 10^-12.
    assert_eq!(default_lockout_capacity() / 8 * 5 / 300, 546);
    let full = poisson_tail(
        f64::from(FAILURES_PER_SHARD) * 5.0 / 8.0,
        FAILURES_PER_SHARD,
    );
    assert!(full < 1e-11, "{full}");
}

#[test]
fn a_flood_of_fresh_addresses_does_not_free_a_locked_one() {
    let store = MemoryStore::default();
    // One shard of 64: every address below competes for its room.
    let l = Lockout::new(64, 2, 300);
    l.ensure_shards(&store).unwrap();
    l.record_failure(&store, "10.0.0.1", 1000);
    l.record_failure(&store, "10.0.0.1", 1000);
    for i in 0..1000 {
        l.record_failure(&store, &format!("192.0.{}.{}", i / 256, i % 256), 1001);
    }
    assert_eq!(
        l.check(&store, ip("10.0.0.1"), 1002),
        Err(Reject::TooManyAuthFailures { retry_after: 298 })
    );
    // The shard stayed full, evicting the oldest unlocked counts.
    assert_eq!(
        store
            .get("edge-warden/failures/0")
            .unwrap()
            .0
            .unwrap()
            .len(),
        64 * 14
    );
}

/// A store whose first write after each read loses a race, as when another worker writes the
/// same shard in between.
struct Contended {
    inner: MemoryStore,
    steal: std::cell::RefCell<bool>,
}

impl SharedStore for Contended {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), SetError> {
        self.inner.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        if self.steal.replace(false) {
            // The other worker records the same nonce first.
            let (_, c) = self.inner.get(key)?;
            self.inner.set(key, value, c)?;
        }
        self.inner.set(key, value, cas)
    }
}

#[test]
fn losing_a_cas_race_to_the_same_nonce_is_a_replay() {
    let store = Contended {
        inner: MemoryStore::default(),
        steal: std::cell::RefCell::new(false),
    };
    let c = NonceCache::new(64, WINDOW);
    c.ensure_shards(&store).unwrap();
    store.steal.replace(true);
    assert_eq!(
        c.record(&store, &proof(), "nonce-aaaaaaaaaaaaaaaa", 1300, 1000),
        Err(Reject::NonceReplayed)
    );
}

// The `replay` and `lockout` sections, compiled through the whole configuration so the paths
// are the ones an operator sees.

fn load(json: &str) -> Result<crate::config::Config, ConfigError> {
    crate::config::Config::from_json(json.as_bytes(), &|_| None)
}

/// A configuration that loads with no environment; the tests insert one section into it.
const BASE: &str = r#"{"policies": [{"name": "a", "signature": false}]}"#;

#[test]
fn invalid_replay_and_lockout_settings_name_the_field() {
    let cases: &[(&str, &str)] = &[
        (
            r#"{"replay": {"capacity": 63}, "policies": [{"name": "a", "signature": false}]}"#,
            "replay.capacity",
        ),
        (
            r#"{"lockout": {"max_failures": 0}, "policies": [{"name": "a", "signature": false}]}"#,
            "lockout.max_failures",
        ),
        (
            r#"{"lockout": {"capacity": 2000000}, "policies": [{"name": "a", "signature": false}]}"#,
            "lockout.capacity",
        ),
    ];
    for (json, field) in cases {
        let e = load(json).expect_err(json);
        assert_eq!(&e.field, field, "{json}: {e}");
        assert!(e.to_string().contains(field), "{e}");
    }
}

#[test]
fn capacities_of_earlier_versions_keep_loading_and_the_reason_is_given() {
    // Earlier versions took multiples of 64 from 64 to 16777216 (their default was 524288).
    for capacity in [64, 524_288, 16_777_216] {
        let c = load(&BASE.replacen(
            "\"policies\"",
            &format!("\"replay\": {{\"capacity\": {capacity}}}, \"policies\""),
            1,
        ))
        .unwrap();
        assert_eq!(c.replay_capacity, capacity);
    }
    assert_eq!(load(BASE).unwrap().replay_capacity, DEFAULT_REPLAY_CAPACITY);
    let e = load(r#"{"replay": {"capacity": 16777217}, "policies": []}"#).unwrap_err();
    assert!(
        e.to_string()
            .contains("must be between 64 and 16777216 nonces, got 16777217"),
        "{e}"
    );
}

#[test]
fn lockout_ipv6_prefix_defaults_to_64_and_is_bounded() {
    let c = load(BASE).unwrap();
    assert_eq!(c.lockout.unwrap().ipv6_prefix, 64);
    let with = |prefix: u32| {
        load(&BASE.replacen(
            "\"policies\"",
            &format!("\"lockout\": {{\"ipv6_prefix\": {prefix}}}, \"policies\""),
            1,
        ))
    };
    assert_eq!(with(56).unwrap().lockout.unwrap().ipv6_prefix, 56);
    for bad in [0, 8, 129] {
        let e = with(bad).expect_err("out of range");
        assert_eq!(e.field, "lockout.ipv6_prefix", "{e}");
    }
}
