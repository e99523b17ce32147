//! Idempotency keys against one real redis-server: every Begin outcome, a stored response
//! replayed, concurrent Begins, tokens, expiry, the 1 MiB body limit, bounds, an outage and
//! --require-replicas without and with a replica.

mod common;

use std::time::Duration;

use common::*;
use edge_warden_state::pb::begin_idempotent_response::Outcome;
use redis::Commands;
use tonic::Code;

const REQUEST: &[u8] = &[0xa1; 16];
const OTHER_REQUEST: &[u8] = &[0xb2; 16];
const TOKEN: &[u8] = &[0x7e; 16];
const OTHER_TOKEN: &[u8] = &[0x7f; 16];
const MIB: usize = 1 << 20;

#[tokio::test]
async fn a_claimed_key_is_in_progress_then_replays_its_stored_response() {
    let redis = Redis::start();
    let service = Service::start(&["--redis", &redis.url()]).await;
    let mut c = service.client().await;
    let mut r = redis.conn();
    let key = fingerprint();

    let first = begin(&mut c, begin_req(&key, REQUEST, TOKEN, 30))
        .await
        .unwrap();
    assert_eq!(outcome(&first), Outcome::Claimed);
    assert_eq!(first.response, None);
    let ttl: i64 = r.ttl(idem_key(&key)).unwrap();
    assert!(
        (25..=30).contains(&ttl),
        "in flight for in_flight_seconds: TTL {ttl}"
    );

    // Another attempt with the same request while the first is in flight.
    let second = begin(&mut c, begin_req(&key, REQUEST, OTHER_TOKEN, 30))
        .await
        .unwrap();
    assert_eq!(outcome(&second), Outcome::InProgress);
    assert_eq!(second.response, None);

    let body = b"{\"id\":42}";
    let stored = complete(
        &mut c,
        complete_req(&key, TOKEN, 600, Some((201, "application/json", body))),
    )
    .await
    .unwrap();
    assert!(stored);
    let ttl: i64 = r.ttl(idem_key(&key)).unwrap();
    assert!(
        (595..=600).contains(&ttl),
        "kept for ttl_seconds: TTL {ttl}"
    );

    for _ in 0..2 {
        let replay = begin(&mut c, begin_req(&key, REQUEST, OTHER_TOKEN, 30))
            .await
            .unwrap();
        assert_eq!(outcome(&replay), Outcome::Completed);
        let response = replay.response.unwrap();
        assert_eq!(response.status, 201);
        assert_eq!(response.content_type, "application/json");
        assert_eq!(response.body, body);
    }
    // A completed record is no longer in flight: its token completes and releases nothing.
    assert!(!complete(&mut c, complete_req(&key, TOKEN, 600, None))
        .await
        .unwrap());
    assert!(!release(&mut c, &key, TOKEN).await.unwrap());
    // Another key is another record.
    let other = begin(&mut c, begin_req(&fingerprint(), REQUEST, TOKEN, 30))
        .await
        .unwrap();
    assert_eq!(outcome(&other), Outcome::Claimed);
}

#[tokio::test]
async fn a_response_with_an_empty_body_and_a_completion_without_one_are_told_apart() {
    let redis = Redis::start();
    let service = Service::start(&["--redis", &redis.url()]).await;
    let mut c = service.client().await;

    let empty = fingerprint();
    assert_eq!(
        outcome(
            &begin(&mut c, begin_req(&empty, REQUEST, TOKEN, 30))
                .await
                .unwrap()
        ),
        Outcome::Claimed
    );
    assert!(complete(
        &mut c,
        complete_req(&empty, TOKEN, 60, Some((204, "", b"")))
    )
    .await
    .unwrap());
    let replay = begin(&mut c, begin_req(&empty, REQUEST, OTHER_TOKEN, 30))
        .await
        .unwrap();
    assert_eq!(outcome(&replay), Outcome::Completed);
    let response = replay.response.unwrap();
    assert_eq!(
        (
            response.status,
            response.content_type.as_str(),
            response.body.len()
        ),
        (204, "", 0)
    );

    let not_stored = fingerprint();
    assert_eq!(
        outcome(
            &begin(&mut c, begin_req(&not_stored, REQUEST, TOKEN, 30))
                .await
                .unwrap()
        ),
        Outcome::Claimed
    );
    assert!(complete(&mut c, complete_req(&not_stored, TOKEN, 60, None))
        .await
        .unwrap());
    let later = begin(&mut c, begin_req(&not_stored, REQUEST, OTHER_TOKEN, 30))
        .await
        .unwrap();
    assert_eq!(outcome(&later), Outcome::CompletedNotStored);
    assert_eq!(later.response, None);
}

#[tokio::test]
async fn a_key_sent_with_another_request_is_a_mismatch_in_flight_and_completed() {
    let redis = Redis::start();
    let service = Service::start(&["--redis", &redis.url()]).await;
    let mut c = service.client().await;
    let key = fingerprint();

    begin(&mut c, begin_req(&key, REQUEST, TOKEN, 30))
        .await
        .unwrap();
    let in_flight = begin(&mut c, begin_req(&key, OTHER_REQUEST, OTHER_TOKEN, 30))
        .await
        .unwrap();
    assert_eq!(outcome(&in_flight), Outcome::Mismatch);
    // A request fingerprint that only shares a prefix is another request too.
    let prefix = begin(&mut c, begin_req(&key, &REQUEST[..8], OTHER_TOKEN, 30))
        .await
        .unwrap();
    assert_eq!(outcome(&prefix), Outcome::Mismatch);
    // The mismatch did not take the claim: the first attempt still completes.
    assert!(complete(
        &mut c,
        complete_req(&key, TOKEN, 60, Some((200, "text/plain", b"ok")))
    )
    .await
    .unwrap());
    let completed = begin(&mut c, begin_req(&key, OTHER_REQUEST, OTHER_TOKEN, 30))
        .await
        .unwrap();
    assert_eq!(outcome(&completed), Outcome::Mismatch);
    assert_eq!(
        completed.response, None,
        "another request learns nothing of the response"
    );

    let not_stored = fingerprint();
    begin(&mut c, begin_req(&not_stored, REQUEST, TOKEN, 30))
        .await
        .unwrap();
    complete(&mut c, complete_req(&not_stored, TOKEN, 60, None))
        .await
        .unwrap();
    let other = begin(&mut c, begin_req(&not_stored, OTHER_REQUEST, TOKEN, 30))
        .await
        .unwrap();
    assert_eq!(outcome(&other), Outcome::Mismatch);
}

#[tokio::test]
async fn concurrent_begins_with_one_key_claim_it_exactly_once() {
    let redis = Redis::start();
    let service = Service::start(&["--redis", &redis.url()]).await;
    let key = fingerprint();
    let mut tasks = Vec::new();
    for i in 0..32u8 {
        let mut c = service.client().await;
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            begin(&mut c, begin_req(&key, REQUEST, &[i; 16], 30)).await
        }));
    }
    let mut claimed = 0;
    let mut in_progress = 0;
    for t in tasks {
        match outcome(&t.await.unwrap().unwrap()) {
            Outcome::Claimed => claimed += 1,
            Outcome::InProgress => in_progress += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((claimed, in_progress), (1, 31));
}

#[tokio::test]
async fn only_the_claiming_token_completes_or_releases() {
    let redis = Redis::start();
    let service = Service::start(&["--redis", &redis.url()]).await;
    let mut c = service.client().await;
    let key = fingerprint();
    begin(&mut c, begin_req(&key, REQUEST, TOKEN, 30))
        .await
        .unwrap();

    assert!(!complete(
        &mut c,
        complete_req(&key, OTHER_TOKEN, 60, Some((200, "", b"x")))
    )
    .await
    .unwrap());
    assert!(!release(&mut c, &key, OTHER_TOKEN).await.unwrap());
    // A token that starts like the right one is another token.
    assert!(!release(&mut c, &key, &TOKEN[..8]).await.unwrap());
    let still = begin(&mut c, begin_req(&key, REQUEST, OTHER_TOKEN, 30))
        .await
        .unwrap();
    assert_eq!(outcome(&still), Outcome::InProgress, "the claim holds");

    // The claiming token releases it: the next Begin is a first one, with its own token.
    assert!(release(&mut c, &key, TOKEN).await.unwrap());
    let exists: bool = redis.conn().exists(idem_key(&key)).unwrap();
    assert!(!exists, "a release deletes the record");
    assert!(
        !release(&mut c, &key, TOKEN).await.unwrap(),
        "released once"
    );
    let next = begin(&mut c, begin_req(&key, REQUEST, OTHER_TOKEN, 30))
        .await
        .unwrap();
    assert_eq!(outcome(&next), Outcome::Claimed);
    // The released token no longer holds anything; the new one does.
    assert!(!complete(&mut c, complete_req(&key, TOKEN, 60, None))
        .await
        .unwrap());
    assert!(complete(&mut c, complete_req(&key, OTHER_TOKEN, 60, None))
        .await
        .unwrap());

    // No record at all: nothing to complete or release, and nothing is created.
    let absent = fingerprint();
    assert!(!complete(&mut c, complete_req(&absent, TOKEN, 60, None))
        .await
        .unwrap());
    assert!(!release(&mut c, &absent, TOKEN).await.unwrap());
    let exists: bool = redis.conn().exists(idem_key(&absent)).unwrap();
    assert!(!exists);
}

#[tokio::test]
async fn an_expired_claim_lets_a_new_begin_claim_and_the_old_token_store_nothing() {
    let redis = Redis::start();
    let service = Service::start(&["--redis", &redis.url()]).await;
    let mut c = service.client().await;
    let key = fingerprint();
    begin(&mut c, begin_req(&key, REQUEST, TOKEN, 1))
        .await
        .unwrap();
    let pttl: i64 = redis.conn().pttl(idem_key(&key)).unwrap();
    assert!((1..=1000).contains(&pttl), "PTTL {pttl}");

    // The attempt died: once in_flight_seconds have passed, a retry claims the key.
    claim_when_free(&c, &key, OTHER_TOKEN, Outcome::InProgress).await;
    assert!(
        !complete(&mut c, complete_req(&key, TOKEN, 60, None))
            .await
            .unwrap(),
        "the expired claim's token stores nothing"
    );
    assert!(!release(&mut c, &key, TOKEN).await.unwrap());
    assert!(complete(&mut c, complete_req(&key, OTHER_TOKEN, 60, None))
        .await
        .unwrap());
}

#[tokio::test]
async fn a_completed_record_expires_after_its_ttl() {
    let redis = Redis::start();
    let service = Service::start(&["--redis", &redis.url()]).await;
    let mut c = service.client().await;
    let key = fingerprint();
    begin(&mut c, begin_req(&key, REQUEST, TOKEN, 30))
        .await
        .unwrap();
    assert!(complete(
        &mut c,
        complete_req(&key, TOKEN, 1, Some((200, "", b"done")))
    )
    .await
    .unwrap());
    let pttl: i64 = redis.conn().pttl(idem_key(&key)).unwrap();
    assert!(
        (1..=1000).contains(&pttl),
        "completion sets ttl_seconds: PTTL {pttl}"
    );
    claim_when_free(&c, &key, OTHER_TOKEN, Outcome::Completed).await;
}

/// Begins with `key` until it is claimed (within 5 s); until then every answer must be `before`.
async fn claim_when_free(
    c: &edge_warden_state::pb::state_client::StateClient<tonic::transport::Channel>,
    key: &[u8],
    token: &[u8],
    before: Outcome,
) {
    eventually("the record to expire", Duration::from_secs(5), || {
        let mut c = c.clone();
        let req = begin_req(key, REQUEST, token, 30);
        async move {
            let answer = outcome(&begin(&mut c, req).await.unwrap());
            if answer == Outcome::Claimed {
                return Some(());
            }
            assert_eq!(answer, before);
            None
        }
    })
    .await;
}

#[tokio::test]
async fn a_body_of_1_mib_is_stored_and_replayed_and_one_byte_more_is_refused() {
    let redis = Redis::start();
    // A deadline generous for the debug build on a loaded machine (the default is 40 ms).
    let service = Service::start(&["--redis", &redis.url(), "--redis-timeout-ms", "2000"]).await;
    let mut c = service.client().await;
    let key = fingerprint();
    begin(&mut c, begin_req(&key, REQUEST, TOKEN, 30))
        .await
        .unwrap();

    let too_big: Vec<u8> = (0..=MIB).map(|i| (i % 251) as u8).collect();
    let e = complete(
        &mut c,
        complete_req(
            &key,
            TOKEN,
            60,
            Some((200, "application/octet-stream", &too_big)),
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("response.body:"), "{}", e.message());
    let still = begin(&mut c, begin_req(&key, REQUEST, OTHER_TOKEN, 30))
        .await
        .unwrap();
    assert_eq!(
        outcome(&still),
        Outcome::InProgress,
        "a refused Complete stores nothing"
    );

    let body = &too_big[..MIB];
    let ct = "é".repeat(256);
    assert!(complete(
        &mut c,
        complete_req(&key, TOKEN, 60, Some((599, &ct, body)))
    )
    .await
    .unwrap());
    let replay = begin(&mut c, begin_req(&key, REQUEST, OTHER_TOKEN, 30))
        .await
        .unwrap();
    assert_eq!(outcome(&replay), Outcome::Completed);
    let response = replay.response.unwrap();
    assert_eq!(response.status, 599);
    assert_eq!(response.content_type, ct);
    assert!(
        response.body == body,
        "the 1 MiB body comes back byte for byte"
    );
}

#[tokio::test]
async fn idempotency_arguments_out_of_bounds_are_refused_naming_the_field() {
    let redis = Redis::start();
    let service = Service::start(&["--redis", &redis.url()]).await;
    let mut c = service.client().await;
    let k = [1u8; 16];
    let long = [9u8; 65];
    let edge = [9u8; 64];

    let begins = [
        (begin_req(&[], REQUEST, TOKEN, 30), "key:"),
        (begin_req(&long, REQUEST, TOKEN, 30), "key:"),
        (begin_req(&k, &[], TOKEN, 30), "request:"),
        (begin_req(&k, &long, TOKEN, 30), "request:"),
        (begin_req(&k, REQUEST, &[], 30), "token:"),
        (begin_req(&k, REQUEST, &long, 30), "token:"),
        (begin_req(&k, REQUEST, TOKEN, 0), "in_flight_seconds:"),
        (begin_req(&k, REQUEST, TOKEN, 3_601), "in_flight_seconds:"),
    ];
    for (req, field) in begins {
        let e = begin(&mut c, req.clone()).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{req:?}: {e:?}");
        assert!(e.message().starts_with(field), "{field} {}", e.message());
    }
    let long_ct = "a".repeat(257);
    let completes = [
        (complete_req(&[], TOKEN, 60, None), "key:"),
        (complete_req(&long, TOKEN, 60, None), "key:"),
        (complete_req(&k, &[], 60, None), "token:"),
        (complete_req(&k, &long, 60, None), "token:"),
        (complete_req(&k, TOKEN, 0, None), "ttl_seconds:"),
        (complete_req(&k, TOKEN, 604_801, None), "ttl_seconds:"),
        (
            complete_req(&k, TOKEN, 60, Some((99, "", b""))),
            "response.status:",
        ),
        (
            complete_req(&k, TOKEN, 60, Some((600, "", b""))),
            "response.status:",
        ),
        (
            complete_req(&k, TOKEN, 60, Some((65_736, "", b""))),
            "response.status:",
        ),
        (
            complete_req(&k, TOKEN, 60, Some((200, &long_ct, b""))),
            "response.content_type:",
        ),
    ];
    for (req, field) in completes {
        let e = complete(&mut c, req.clone()).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{req:?}: {e:?}");
        assert!(e.message().starts_with(field), "{field} {}", e.message());
    }
    for (key, token, field) in [
        (&[][..], TOKEN, "key:"),
        (&long[..], TOKEN, "key:"),
        (&k[..], &[][..], "token:"),
        (&k[..], &long[..], "token:"),
    ] {
        let e = release(&mut c, key, token).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with(field), "{field} {}", e.message());
    }
    let keys: Vec<String> = redis.conn().keys("*").unwrap();
    assert!(keys.is_empty(), "nothing was written: {keys:?}");

    // The edges are accepted.
    let r = begin(&mut c, begin_req(&edge, &edge, &edge, 3_600))
        .await
        .unwrap();
    assert_eq!(outcome(&r), Outcome::Claimed);
    let r = begin(&mut c, begin_req(&[2], &[3], &[4], 1)).await.unwrap();
    assert_eq!(outcome(&r), Outcome::Claimed);
    let ct = "é".repeat(256);
    assert!(complete(
        &mut c,
        complete_req(&edge, &edge, 604_800, Some((100, &ct, b"")))
    )
    .await
    .unwrap());
    assert!(release(&mut c, &[2], &[4]).await.unwrap());
}

#[tokio::test]
async fn idempotency_calls_answer_unavailable_while_redis_is_down() {
    let mut redis = Redis::start();
    let service = Service::start(&["--redis", &redis.url()]).await;
    let mut c = service.client().await;
    let key = fingerprint();
    redis.kill();
    let e = begin(&mut c, begin_req(&key, REQUEST, TOKEN, 30))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::Unavailable, "state store unavailable")
    );
    let e = complete(&mut c, complete_req(&key, TOKEN, 60, Some((200, "", b"x"))))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let e = release(&mut c, &key, TOKEN).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let log = service.log();
    assert!(log.contains("state store error"), "{log}");
    assert!(!log.contains(&hex::encode(&key)), "{log}");
}

#[tokio::test]
async fn require_replicas_refuses_unreplicated_writes_stands_by_reads_and_accepts_a_replica() {
    // No 5 s wait before the replica's first synchronization (Redis's default delay).
    let redis = Redis::start_with(free_port(), &["--repl-diskless-sync-delay", "0"]);
    let service = Service::start(&[
        "--redis",
        &redis.url(),
        "--require-replicas",
        "1",
        "--replica-timeout-ms",
        "50",
        "--redis-timeout-ms",
        "1000",
    ])
    .await;
    let mut c = service.client().await;
    let key = fingerprint();

    // The claim is written but not replicated: UNAVAILABLE, never CLAIMED.
    let e = begin(&mut c, begin_req(&key, REQUEST, TOKEN, 30))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("replicas"), "{}", e.message());
    // Answers that wrote nothing stand.
    let r = begin(&mut c, begin_req(&key, REQUEST, OTHER_TOKEN, 30))
        .await
        .unwrap();
    assert_eq!(outcome(&r), Outcome::InProgress);
    let r = begin(&mut c, begin_req(&key, OTHER_REQUEST, OTHER_TOKEN, 30))
        .await
        .unwrap();
    assert_eq!(outcome(&r), Outcome::Mismatch);
    assert!(!release(&mut c, &key, OTHER_TOKEN).await.unwrap());
    // A Complete and a Release that wrote are UNAVAILABLE.
    let e = complete(&mut c, complete_req(&key, TOKEN, 60, None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let r = begin(&mut c, begin_req(&key, REQUEST, OTHER_TOKEN, 30))
        .await
        .unwrap();
    assert_eq!(
        outcome(&r),
        Outcome::CompletedNotStored,
        "the unreplicated write is there"
    );

    let released = fingerprint();
    let e = begin(&mut c, begin_req(&released, REQUEST, TOKEN, 30))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let e = release(&mut c, &released, TOKEN).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let exists: bool = redis.conn().exists(idem_key(&released)).unwrap();
    assert!(!exists, "the unreplicated release deleted the claim");

    let port = redis.port.to_string();
    let _replica = Redis::start_with(free_port(), &["--replicaof", "127.0.0.1", &port]);
    redis.wait_for_replica();
    let key = fingerprint();
    let r = begin(&mut c, begin_req(&key, REQUEST, TOKEN, 30))
        .await
        .unwrap();
    assert_eq!(outcome(&r), Outcome::Claimed);
    assert!(complete(
        &mut c,
        complete_req(&key, TOKEN, 60, Some((200, "", b"ok")))
    )
    .await
    .unwrap());
    let key = fingerprint();
    begin(&mut c, begin_req(&key, REQUEST, TOKEN, 30))
        .await
        .unwrap();
    assert!(release(&mut c, &key, TOKEN).await.unwrap());
}

#[tokio::test]
async fn a_record_costs_its_body_and_a_small_overhead_in_redis() {
    // Prints MEMORY USAGE (`-- --nocapture`); asserts only that the body is stored as bytes,
    // not in an encoding that grows it (base64 is 4/3 of it).
    let redis = Redis::start();
    let service = Service::start(&["--redis", &redis.url(), "--redis-timeout-ms", "2000"]).await;
    let mut c = service.client().await;
    let mut r = redis.conn();
    let usage = |r: &mut redis::Connection, key: &[u8]| -> i64 {
        redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(idem_key(key))
            .arg("SAMPLES")
            .arg(0)
            .query(r)
            .unwrap()
    };
    let key = [0x11u8; 16];
    begin(&mut c, begin_req(&key, REQUEST, TOKEN, 30))
        .await
        .unwrap();
    println!(
        "in flight (16-byte key, request and token): {} bytes",
        usage(&mut r, &key)
    );
    for (name, len) in [("small", 9usize), ("64 KiB", 64 * 1024), ("1 MiB", MIB)] {
        let key = [len.to_be_bytes(), [0x22; 8]].concat();
        let body = vec![b'x'; len];
        begin(&mut c, begin_req(&key, REQUEST, TOKEN, 30))
            .await
            .unwrap();
        assert!(complete(
            &mut c,
            complete_req(&key, TOKEN, 60, Some((200, "application/json", &body)))
        )
        .await
        .unwrap());
        let bytes = usage(&mut r, &key);
        println!(
            "completed, {name} body ({len} bytes), content type application/json: {bytes} bytes"
        );
        assert!(bytes < (len as i64) * 4 / 3 + 256, "{name}: {bytes}");
    }
}

#[tokio::test]
async fn large_body_round_trip_times_on_loopback() {
    // Prints only: no timing is asserted. `cargo test --release -p edge-warden-state --test
    // idempotency round_trip -- --nocapture` shows the numbers of the release build.
    let redis = Redis::start();
    let service = Service::start(&["--redis", &redis.url(), "--redis-timeout-ms", "2000"]).await;
    let mut c = service.client().await;
    for len in [16usize, 64 * 1024, MIB] {
        let body = vec![b'x'; len];
        let (mut completes, mut replays) = (Vec::new(), Vec::new());
        for _ in 0..50 {
            let key = fingerprint();
            begin(&mut c, begin_req(&key, REQUEST, TOKEN, 30))
                .await
                .unwrap();
            let started = std::time::Instant::now();
            let req = complete_req(&key, TOKEN, 60, Some((200, "application/json", &body)));
            assert!(complete(&mut c, req).await.unwrap());
            completes.push(started.elapsed());
            let started = std::time::Instant::now();
            let r = begin(&mut c, begin_req(&key, REQUEST, OTHER_TOKEN, 30))
                .await
                .unwrap();
            replays.push(started.elapsed());
            assert_eq!(r.response.map(|r| r.body.len()), Some(len));
        }
        for (name, times) in [
            ("Complete", &mut completes),
            ("Begin (replay)", &mut replays),
        ] {
            times.sort();
            println!(
                "{name}, {len}-byte body: 50 sequential calls, p50 {:?}, max {:?}",
                times[25], times[49]
            );
        }
    }
}
