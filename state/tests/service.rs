//! edge-warden-state against one real redis-server: claims, lockouts, validation, a Redis
//! outage and restart, and --require-replicas with and without a replica.

mod common;

use std::time::{Duration, Instant};

use common::*;
use redis::Commands;
use tonic::Code;

#[tokio::test]
async fn a_claim_succeeds_once_and_sets_its_ttl() {
    let redis = Redis::start();
    let service = Service::start(&["--redis", &redis.url()]).await;
    let mut c = service.client().await;
    let fp = fingerprint();

    let first = admit(&mut c, claim_req(&fp, 300)).await.unwrap();
    assert!(first.claimed);
    assert_eq!(first.locked_for_seconds, 0);
    let second = admit(&mut c, claim_req(&fp, 300)).await.unwrap();
    assert!(!second.claimed, "a replay is refused");

    let mut r = redis.conn();
    let ttl: i64 = r.ttl(nonce_key(&fp)).unwrap();
    assert!((295..=300).contains(&ttl), "TTL {ttl}");
    // A different fingerprint is a different claim.
    assert!(
        admit(&mut c, claim_req(&fingerprint(), 5))
            .await
            .unwrap()
            .claimed
    );
}

#[tokio::test]
async fn concurrent_claims_of_one_fingerprint_admit_exactly_one() {
    let redis = Redis::start();
    let service = Service::start(&["--redis", &redis.url()]).await;
    let fp = fingerprint();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        // Half share one HTTP/2 connection, half have their own.
        let mut c = service.client().await;
        let fp = fp.clone();
        tasks.push(tokio::spawn(async move {
            admit(&mut c, claim_req(&fp, 60)).await
        }));
    }
    let mut claimed = 0;
    for t in tasks {
        if t.await.unwrap().unwrap().claimed {
            claimed += 1;
        }
    }
    assert_eq!(claimed, 1);
}

#[tokio::test]
async fn lockout_after_max_failures_refuses_and_claims_nothing() {
    let redis = Redis::start();
    let service = Service::start(&["--redis", &redis.url()]).await;
    let mut c = service.client().await;
    let client = "198.51.100.7";
    let mut r = redis.conn();

    let f1 = record_failure(&mut c, client, 60, 3).await.unwrap();
    assert_eq!((f1.failures, f1.locked_for_seconds), (1, 0));
    let ttl: i64 = r.ttl("ew:fail:198.51.100.7").unwrap();
    assert!(
        (58..=60).contains(&ttl),
        "the first failure starts the window: TTL {ttl}"
    );
    // Later failures do not move the window: shorten it by hand, it must stay short.
    let _: () = r.expire("ew:fail:198.51.100.7", 30).unwrap();
    let f2 = record_failure(&mut c, client, 60, 3).await.unwrap();
    assert_eq!((f2.failures, f2.locked_for_seconds), (2, 0));
    let f3 = record_failure(&mut c, client, 60, 3).await.unwrap();
    assert_eq!(f3.failures, 3);
    assert!(
        (1..=30).contains(&f3.locked_for_seconds),
        "locked for the rest of the window: {}",
        f3.locked_for_seconds
    );

    // Admit with the lockout check refuses, and the claim in the same call is not made.
    let fp = fingerprint();
    let a = admit(&mut c, lockout_req(client, 3, Some((&fp, 300))))
        .await
        .unwrap();
    assert!(
        (1..=30).contains(&a.locked_for_seconds),
        "{}",
        a.locked_for_seconds
    );
    assert!(!a.claimed);
    let exists: bool = r.exists(nonce_key(&fp)).unwrap();
    assert!(!exists, "a locked-out client claims nothing");
    // The lockout check alone says the same.
    let a = admit(&mut c, lockout_req(client, 3, None)).await.unwrap();
    assert!(a.locked_for_seconds > 0);
    // With a higher threshold the client is not locked out, and the claim is made.
    let a = admit(&mut c, lockout_req(client, 4, Some((&fp, 300))))
        .await
        .unwrap();
    assert_eq!(a.locked_for_seconds, 0);
    assert!(a.claimed);
    // Another client is not affected.
    let a = admit(
        &mut c,
        lockout_req("203.0.113.9", 3, Some((&fingerprint(), 300))),
    )
    .await;
    assert!(a.unwrap().claimed);
}

#[tokio::test]
async fn invalid_arguments_are_refused_before_redis() {
    let redis = Redis::start();
    let service = Service::start(&["--redis", &redis.url()]).await;
    let mut c = service.client().await;
    let long = "x".repeat(129);
    let cases = [
        edge_warden_state::pb::AdmitRequest {
            lockout: None,
            claim: None,
        },
        claim_req(&[], 60),
        claim_req(&[7; 65], 60),
        claim_req(&[7; 16], 0),
        claim_req(&[7; 16], 86_401),
        lockout_req("", 3, None),
        lockout_req(&long, 3, None),
        lockout_req("198.51.100.7", 0, None),
        lockout_req("198.51.100.7", 3, Some((&[7; 16], 0))),
    ];
    for req in cases {
        let e = admit(&mut c, req.clone()).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{req:?}: {e:?}");
        assert!(!e.message().contains("xxxx"), "the value is not echoed");
    }
    for (client, window, max) in [
        ("", 60, 3),
        (long.as_str(), 60, 3),
        ("a", 0, 3),
        ("a", 86_401, 3),
        ("a", 60, 0),
    ] {
        let e = record_failure(&mut c, client, window, max)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{client:?} {window} {max}");
    }
    let keys: Vec<String> = redis.conn().keys("*").unwrap();
    assert!(keys.is_empty(), "nothing was written: {keys:?}");
    // The edges are accepted.
    assert!(
        admit(&mut c, claim_req(&[7; 64], 86_400))
            .await
            .unwrap()
            .claimed
    );
    assert!(admit(&mut c, claim_req(&[8], 1)).await.unwrap().claimed);
    let edge = "é".repeat(128);
    assert_eq!(
        record_failure(&mut c, &edge, 86_400, 1)
            .await
            .unwrap()
            .failures,
        1
    );
}

#[tokio::test]
async fn health_reports_serving_for_the_state_service() {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};
    let redis = Redis::start();
    let service = Service::start(&["--redis", &redis.url()]).await;
    let mut h = HealthClient::new(service.channel().await);
    for name in ["edgewarden.state.v1.State", ""] {
        let req = tonic_health::pb::HealthCheckRequest {
            service: name.into(),
        };
        let status = h.check(req).await.unwrap().into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32, "{name:?}");
    }
}

#[tokio::test]
async fn redis_outage_answers_unavailable_and_recovers_without_a_restart() {
    let mut redis = Redis::start();
    let mut service = Service::start(&["--redis", &redis.url()]).await;
    let mut c = service.client().await;
    assert!(
        admit(&mut c, claim_req(&fingerprint(), 60))
            .await
            .unwrap()
            .claimed
    );

    redis.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let e = admit(&mut c, claim_req(&fingerprint(), 60))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert_eq!(e.message(), "state store unavailable");
        eprintln!("Admit with Redis down answered in {:?}", started.elapsed());
        let e = record_failure(&mut c, "198.51.100.7", 60, 3)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    }

    // Redis comes back on the same port (empty, and without the script cached).
    redis.restart();
    // Each of the service's Redis connections reconnects on its own: wait for a run of
    // successes longer than the pool (4 connections by default, used in turn).
    let since = Instant::now();
    let mut run = 0;
    while run < 8 {
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "Admit did not work again"
        );
        match admit(&mut c, claim_req(&fingerprint(), 60)).await {
            Ok(a) if a.claimed => run += 1,
            _ => {
                run = 0;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    eprintln!(
        "Admit worked again {:?} after Redis restarted",
        since.elapsed()
    );
    let fp = fingerprint();
    assert!(admit(&mut c, claim_req(&fp, 60)).await.unwrap().claimed);
    assert!(!admit(&mut c, claim_req(&fp, 60)).await.unwrap().claimed);
    assert_eq!(
        record_failure(&mut c, "198.51.100.7", 60, 3)
            .await
            .unwrap()
            .failures,
        1
    );

    // The log names kinds of errors, never a client or a fingerprint.
    let log = service.log();
    assert!(log.contains("state store error"), "{log}");
    assert!(
        !log.contains("198.51.100.7") && !log.contains(&hex::encode(&fp)),
        "{log}"
    );
    drop(c);
    let (status, took) = service.terminate().await;
    assert!(status.success(), "SIGTERM stops it cleanly: {status:?}");
    eprintln!("stopped {took:?} after SIGTERM");
}

#[tokio::test]
async fn require_replicas_without_a_replica_is_unavailable_then_works_with_one() {
    let redis = Redis::start();
    let service = Service::start(&[
        "--redis",
        &redis.url(),
        "--require-replicas",
        "1",
        // Generous for a loaded test machine; the defaults are 20 and 40 ms.
        "--replica-timeout-ms",
        "500",
        "--redis-timeout-ms",
        "1000",
    ])
    .await;
    let mut c = service.client().await;

    let e = admit(&mut c, claim_req(&fingerprint(), 60))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("replicas"), "{}", e.message());
    let e = record_failure(&mut c, "198.51.100.7", 60, 3)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    // A lockout check writes nothing, so it needs no replica.
    assert_eq!(
        admit(&mut c, lockout_req("203.0.113.9", 3, None))
            .await
            .unwrap()
            .locked_for_seconds,
        0
    );

    let port = redis.port.to_string();
    let _replica = Redis::start_with(free_port(), &["--replicaof", "127.0.0.1", &port]);
    wait_blocking("the replica to be online", Duration::from_secs(20), || {
        let info = redis.info("replication");
        (info.contains("connected_slaves:1") && info.contains("state=online")).then_some(())
    });
    redis.wait_for_replica();

    let fp = fingerprint();
    let a = admit(&mut c, claim_req(&fp, 60)).await.unwrap();
    assert!(a.claimed);
    assert!(!admit(&mut c, claim_req(&fp, 60)).await.unwrap().claimed);
    // The failure counted before (while unavailable) was written, so this is the second.
    let f = record_failure(&mut c, "198.51.100.7", 60, 3).await.unwrap();
    assert_eq!(f.failures, 2);
}

#[tokio::test]
async fn round_trip_times_on_loopback() {
    // Prints only: no timing is asserted. `cargo test -p edge-warden-state --test service
    // round_trip -- --nocapture` shows the numbers.
    let redis = Redis::start();
    let service = Service::start(&["--redis", &redis.url()]).await;
    let mut c = service.client().await;
    for (name, lockout) in [("claim", false), ("lockout check + claim", true)] {
        let mut times = Vec::with_capacity(1000);
        for _ in 0..1000 {
            let fp = fingerprint();
            let req = if lockout {
                lockout_req("198.51.100.7", 5, Some((&fp, 60)))
            } else {
                claim_req(&fp, 60)
            };
            let started = Instant::now();
            let a = admit(&mut c, req).await.unwrap();
            times.push(started.elapsed());
            assert!(a.claimed);
        }
        times.sort();
        let total: Duration = times.iter().sum();
        println!(
            "{name}: 1000 sequential Admit calls, mean {:?}, p50 {:?}, p99 {:?}, max {:?}",
            total / 1000,
            times[500],
            times[990],
            times[999]
        );
    }
}
