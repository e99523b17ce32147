use super::*;
use crate::store::MemoryStore;

fn headers(pairs: &[(&str, &str)]) -> RequestHeaders {
    RequestHeaders::from_text(pairs)
}

#[test]
fn keys_in_either_header_and_either_form() {
    let k = |pairs: &[(&str, &str)]| find_key(&headers(pairs));
    assert_eq!(k(&[]), Ok(None));
    assert_eq!(k(&[(HEADER, "\"8e03-a1\"")]), Ok(Some("8e03-a1".into())));
    assert_eq!(k(&[(HEADER, " 8e03-a1 ")]), Ok(Some("8e03-a1".into())));
    assert_eq!(
        k(&[(HEADER, r#""a \"b\" \\c""#)]),
        Ok(Some(r#"a "b" \c"#.into()))
    );
    assert_eq!(k(&[(LEGACY_HEADER, "abc")]), Ok(Some("abc".into())));
    assert_eq!(
        k(&[(HEADER, "\"abc\""), (LEGACY_HEADER, "abc")]),
        Ok(Some("abc".into()))
    );
}

#[test]
fn bad_keys_are_refused() {
    let bad = |pairs: &[(&str, &str)]| {
        assert_eq!(
            find_key(&headers(pairs)),
            Err(Reject::IdempotencyKeyInvalid),
            "{pairs:?}"
        )
    };
    bad(&[(HEADER, "")]);
    bad(&[(HEADER, "\"\"")]);
    bad(&[(HEADER, "\"open")]);
    bad(&[(HEADER, "\"a\";p=1")]);
    bad(&[(HEADER, "\"a\\x\"")]);
    bad(&[(HEADER, "has space")]);
    bad(&[(HEADER, "a\u{1}b")]);
    bad(&[(LEGACY_HEADER, "\"quoted\"")]);
    bad(&[(HEADER, "a"), (HEADER, "a")]);
    bad(&[(HEADER, "a"), (LEGACY_HEADER, "b")]);
    bad(&[(HEADER, &"k".repeat(MAX_KEY_LEN + 1))]);
    assert!(find_key(&headers(&[(HEADER, &"k".repeat(MAX_KEY_LEN))])).is_ok());
    let raw = RequestHeaders::new(vec![(HEADER.to_string(), vec![0xff, 0x41])]);
    assert_eq!(find_key(&raw), Err(Reject::IdempotencyKeyInvalid));
}

#[test]
fn fingerprints_separate_scope_key_and_request() {
    assert_ne!(record_key("ip:1.2.3.4", "k"), record_key("ip:1.2.3.5", "k"));
    assert_ne!(record_key("sig:a", "bc"), record_key("sig:ab", "c"));
    let body = [0u8; 32];
    assert_ne!(
        request_fingerprint("POST", "/a", &body),
        request_fingerprint("PUT", "/a", &body)
    );
    assert_ne!(
        request_fingerprint("POST", "/a?x=1", &body),
        request_fingerprint("POST", "/a", &body)
    );
    let token = |n| attempt_token(&record_key("s", "k"), Some("id"), n);
    assert_ne!(token(1), token(1), "two attempts never share a token");
}

fn response(body: &[u8]) -> StoredResponse {
    StoredResponse {
        status: 201,
        content_type: "application/json".into(),
        body: body.to_vec(),
    }
}

#[test]
fn a_key_goes_from_claimed_to_replayed() {
    let store = MemoryStore::default();
    let table = Table::new(64);
    table.ensure_buckets(&store).unwrap();
    let (key, req, t1, t2) = ([1; 16], [2; 16], [3; 16], [4; 16]);
    assert_eq!(
        table.begin(&store, &key, &req, &t1, 60, 100),
        Begun::Claimed
    );
    assert_eq!(
        table.begin(&store, &key, &req, &t2, 60, 101),
        Begun::InProgress
    );
    assert_eq!(
        table.begin(&store, &key, &[9; 16], &t2, 60, 101),
        Begun::Mismatch
    );
    assert!(!table.complete(&store, &key, &t2, Some(response(b"x")), 600, 102));
    assert!(table.complete(&store, &key, &t1, Some(response(b"{\"id\":1}")), 600, 102));
    assert_eq!(
        table.begin(&store, &key, &req, &t2, 60, 103),
        Begun::Completed(response(b"{\"id\":1}"))
    );
    assert_eq!(
        table.begin(&store, &key, &[9; 16], &t2, 60, 103),
        Begun::Mismatch
    );
    // Expired after the ttl: the key is new again.
    assert_eq!(
        table.begin(&store, &key, &req, &t2, 60, 702),
        Begun::Claimed
    );
}

#[test]
fn release_and_lapsed_claims_free_the_key() {
    let store = MemoryStore::default();
    let table = Table::new(64);
    table.ensure_buckets(&store).unwrap();
    let (key, req) = ([1; 16], [2; 16]);
    assert_eq!(
        table.begin(&store, &key, &req, &[3; 16], 60, 100),
        Begun::Claimed
    );
    assert!(!table.release(&store, &key, &[4; 16], 100));
    assert!(table.release(&store, &key, &[3; 16], 100));
    assert_eq!(
        table.begin(&store, &key, &req, &[4; 16], 60, 101),
        Begun::Claimed
    );
    // The attempt died: after in_flight_seconds another takes the key, and the dead one
    // cannot complete it any more.
    assert_eq!(
        table.begin(&store, &key, &req, &[5; 16], 60, 161),
        Begun::Claimed
    );
    assert!(!table.complete(&store, &key, &[4; 16], None, 600, 162));
    assert!(table.complete(&store, &key, &[5; 16], None, 600, 162));
    assert_eq!(
        table.begin(&store, &key, &req, &[6; 16], 60, 163),
        Begun::CompletedNotStored
    );
}

#[test]
fn a_full_bucket_evicts_completed_records_but_never_one_in_flight() {
    let store = MemoryStore::default();
    let table = Table::new(RECORDS_PER_BUCKET); // one bucket
    table.ensure_buckets(&store).unwrap();
    let req = [2; 16];
    for i in 0..RECORDS_PER_BUCKET as u8 {
        assert_eq!(
            table.begin(&store, &[i; 16], &req, &[i; 16], 60, 100),
            Begun::Claimed
        );
    }
    assert_eq!(
        table.begin(&store, &[99; 16], &req, &[99; 16], 60, 100),
        Begun::Full
    );
    assert!(table.complete(&store, &[1; 16], &[1; 16], Some(response(b"a")), 600, 100));
    assert!(table.complete(&store, &[2; 16], &[2; 16], Some(response(b"b")), 500, 100));
    assert_eq!(
        table.begin(&store, &[99; 16], &req, &[99; 16], 60, 100),
        Begun::Claimed
    );
    // The one expiring first went; the other completed record stays.
    assert_eq!(
        table.begin(&store, &[2; 16], &req, &[7; 16], 60, 101),
        Begun::Claimed
    );
    assert!(matches!(
        table.begin(&store, &[1; 16], &req, &[7; 16], 60, 101),
        Begun::Completed(_) | Begun::Full
    ));
}

#[test]
fn records_round_trip_and_garbage_holds_none() {
    let record = Record {
        state: COMPLETED,
        key: [1; 16],
        request: [2; 16],
        token: [3; 16],
        expires_at: u64::MAX - 1,
        response: response(&[0xab; 300]),
    };
    let mut bytes = Vec::new();
    record.encode(&mut bytes);
    record.encode(&mut bytes);
    assert_eq!(bytes.len(), 2 * (RECORD_HEADER + 16 + 300));
    assert_eq!(Record::decode_all(&bytes), vec![record.clone(), record]);
    for cut in 0..bytes.len() - 1 {
        let decoded = Record::decode_all(&bytes[..cut]);
        assert!(decoded.is_empty() || cut == RECORD_HEADER + 316, "{cut}");
    }
}

#[test]
fn concurrent_claims_of_one_key_have_one_winner() {
    let store = std::sync::Arc::new(MemoryStore::default());
    let table = Table::new(64);
    table.ensure_buckets(&*store).unwrap();
    let winners: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..32u8)
            .map(|i| {
                let (store, table) = (store.clone(), table.clone());
                s.spawn(move || {
                    table.begin(&*store, &[7; 16], &[2; 16], &[i; 16], 60, 100) == Begun::Claimed
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| usize::from(h.join().unwrap()))
            .sum()
    });
    assert_eq!(winners, 1);
}

#[test]
fn policy_settings_are_checked() {
    let raw = |json: &str| -> RawPolicyIdempotency { serde_json::from_str(json).unwrap() };
    let p = compile_policy(&raw("{}"), "p").unwrap();
    assert_eq!(p.methods, ["POST", "PUT", "PATCH", "DELETE"]);
    assert!(p.required && p.covers("POST") && !p.covers("GET"));
    assert_eq!(
        (p.ttl_seconds, p.max_response_bytes, p.in_flight_seconds),
        (86_400, 16_384, 60)
    );
    let field = |json: &str| {
        compile_policy(&raw(json), "policies[0].idempotency")
            .unwrap_err()
            .field
    };
    assert_eq!(
        field(r#"{"methods":[]}"#),
        "policies[0].idempotency.methods"
    );
    assert_eq!(
        field(r#"{"methods":["post"]}"#),
        "policies[0].idempotency.methods[0]"
    );
    assert_eq!(
        field(r#"{"ttl_seconds":0}"#),
        "policies[0].idempotency.ttl_seconds"
    );
    assert_eq!(
        field(r#"{"ttl_seconds":604801}"#),
        "policies[0].idempotency.ttl_seconds"
    );
    assert_eq!(
        field(r#"{"in_flight_seconds":3601}"#),
        "policies[0].idempotency.in_flight_seconds"
    );
    assert_eq!(
        field(r#"{"max_response_bytes":1048577}"#),
        "policies[0].idempotency.max_response_bytes"
    );
    let store = |c: u32| compile_store(&RawIdempotencyStore { capacity: c }, "idempotency");
    assert!(store(3).is_err() && store(4).is_ok() && store(1_000_001).is_err());
}
