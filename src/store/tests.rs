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

fn cache(store: &MemoryStore, capacity: u32) -> NonceCache {
    let c = NonceCache::new(capacity);
    c.ensure_shards(store).unwrap();
    c
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
fn an_expired_record_is_purged_and_the_nonce_can_be_reused() {
    let store = MemoryStore::default();
    let c = cache(&store, 64);
    let p = proof();
    c.record(&store, &p, "nonce-aaaaaaaaaaaaaaaa", 1300, 1000)
        .unwrap();
    let r = c
        .record(&store, &p, "nonce-aaaaaaaaaaaaaaaa", 1700, 1301)
        .unwrap();
    assert_eq!(
        r,
        Recorded {
            shard_len: 1,
            purged: 1
        }
    );
}

#[test]
fn a_flood_of_unique_nonces_never_grows_past_the_bound() {
    let store = MemoryStore::default();
    let c = cache(&store, 256);
    let p = proof();
    let mut accepted = 0;
    let mut full = 0;
    for i in 0..5_000 {
        match c.record(&store, &p, &format!("flood-nonce-{i:08}"), 2000, 1000) {
            Ok(_) => accepted += 1,
            Err(Reject::ReplayCacheFull { retry_after }) => {
                assert_eq!(retry_after, 1000);
                full += 1
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(accepted <= 256 && accepted > 200, "{accepted}");
    assert_eq!(accepted + full, 5_000);
    let sizes = store.sizes();
    let total: usize = sizes.iter().map(|(_, len)| len).sum();
    assert!(total as u64 <= c.max_record_bytes());
    assert_eq!(sizes.len(), 4);
}

#[test]
fn ensure_shards_keeps_existing_records() {
    let store = MemoryStore::default();
    let c = cache(&store, 64);
    let p = proof();
    c.record(&store, &p, "nonce-aaaaaaaaaaaaaaaa", 1300, 1000)
        .unwrap();
    c.ensure_shards(&store).unwrap();
    assert_eq!(
        c.record(&store, &p, "nonce-aaaaaaaaaaaaaaaa", 1300, 1000),
        Err(Reject::NonceReplayed)
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
fn lockout_memory_is_bounded_under_many_source_addresses() {
    let store = MemoryStore::default();
    let l = Lockout::new(128, 5, 300);
    l.ensure_shards(&store).unwrap();
    for i in 0..10_000 {
        l.record_failure(
            &store,
            &format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
            1000,
        );
    }
    let sizes = store.sizes();
    // Two shards plus the summary of when the latest lockout ends.
    assert_eq!(sizes.len(), 3);
    assert!(sizes
        .iter()
        .all(|(_, len)| *len <= FAILURE_RECORD * FAILURES_PER_SHARD));
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
    let c = NonceCache::new(64);
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
            r#"{"replay": {"capacity": 100}, "policies": [{"name": "a", "signature": false}]}"#,
            "replay.capacity",
        ),
        (
            r#"{"lockout": {"max_failures": 0}, "policies": [{"name": "a", "signature": false}]}"#,
            "lockout.max_failures",
        ),
        (
            r#"{"lockout": {"capacity": 100}, "policies": [{"name": "a", "signature": false}]}"#,
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
