//! edge-warden-state against a real Redis Cluster (three primaries) and a real Sentinel
//! deployment, including a failover with --require-replicas.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use redis::Commands;
use tonic::Code;

const CLIENT: &str = "198.51.100.7";

struct Cluster {
    nodes: Vec<Redis>,
}

impl Cluster {
    fn start() -> Cluster {
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 3 {
            let p = free_port();
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        let nodes: Vec<Redis> = ports
            .iter()
            .map(|&p| {
                Redis::start_with(
                    p,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                    ],
                )
            })
            .collect();
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli (Debian's redis-tools, installed with redis-server)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        for n in &nodes {
            wait_blocking("cluster_state:ok", Duration::from_secs(20), || {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut n.conn())
                    .ok()?;
                info.contains("cluster_state:ok").then_some(())
            });
        }
        Cluster { nodes }
    }

    fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn conn(&self) -> redis::cluster::ClusterConnection {
        let urls: Vec<String> = self.nodes.iter().map(|n| n.url()).collect();
        redis::cluster::ClusterClient::new(urls)
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

#[tokio::test]
async fn redis_cluster_claims_and_lockouts() {
    let cluster = Cluster::start();
    let mut r = cluster.conn();
    // The default prefix puts the two keys of an Admit in different slots (two round trips);
    // a prefix with a hash tag puts every key in one slot (one round trip).
    for prefix in ["ew:", "{ew}:"] {
        let service =
            Service::start(&["--redis-cluster", &cluster.urls(), "--key-prefix", prefix]).await;
        let mut c = service.client().await;
        let fp = fingerprint();
        assert!(
            admit(&mut c, claim_req(&fp, 120)).await.unwrap().claimed,
            "{prefix}"
        );
        assert!(
            !admit(&mut c, claim_req(&fp, 120)).await.unwrap().claimed,
            "{prefix}"
        );
        let nonce = format!("{prefix}nonce:{}", hex::encode(&fp));
        let ttl: i64 = r.ttl(&nonce).unwrap();
        assert!((115..=120).contains(&ttl), "{prefix}: TTL {ttl}");

        let client = format!("{CLIENT}-{}", prefix.len());
        for n in 1..=3 {
            let f = record_failure(&mut c, &client, 60, 3).await.unwrap();
            assert_eq!(f.failures, n);
            assert_eq!(f.locked_for_seconds > 0, n == 3, "{prefix}: {f:?}");
        }
        let fp = fingerprint();
        let a = admit(&mut c, lockout_req(&client, 3, Some((&fp, 120))))
            .await
            .unwrap();
        assert!(a.locked_for_seconds > 0 && !a.claimed, "{prefix}: {a:?}");
        let exists: bool = r
            .exists(format!("{prefix}nonce:{}", hex::encode(&fp)))
            .unwrap();
        assert!(!exists, "{prefix}: a locked-out client claims nothing");
        let a = admit(&mut c, lockout_req("203.0.113.9", 3, Some((&fp, 120))))
            .await
            .unwrap();
        assert!(a.claimed && a.locked_for_seconds == 0, "{prefix}: {a:?}");
    }

    // --require-replicas in a cluster without replicas: the WAIT goes to the node of the key.
    let service = Service::start(&[
        "--redis-cluster",
        &cluster.urls(),
        "--require-replicas",
        "1",
        "--replica-timeout-ms",
        "50",
    ])
    .await;
    let mut c = service.client().await;
    let e = admit(&mut c, claim_req(&fingerprint(), 60))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
}

#[tokio::test]
async fn redis_cluster_idempotency_keys() {
    use edge_warden_state::pb::begin_idempotent_response::Outcome;
    let cluster = Cluster::start();
    let service = Service::start(&["--redis-cluster", &cluster.urls()]).await;
    let mut c = service.client().await;
    let mut r = cluster.conn();
    let (request, token, other) = ([1u8; 16], [2u8; 16], [3u8; 16]);
    // One key in each third of the slots (redis-cli gives each primary one third); each RPC
    // touches one key, so none needs a hash tag.
    let mut keys: Vec<Option<Vec<u8>>> = vec![None; 3];
    while keys.iter().any(Option::is_none) {
        let key = fingerprint();
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(idem_key(&key))
            .query(&mut r)
            .unwrap();
        let third = match slot {
            0..=5460 => 0,
            5461..=10922 => 1,
            _ => 2,
        };
        keys[third].get_or_insert(key);
    }
    for key in keys.into_iter().flatten() {
        let b = begin(&mut c, begin_req(&key, &request, &token, 30))
            .await
            .unwrap();
        assert_eq!(outcome(&b), Outcome::Claimed);
        let b = begin(&mut c, begin_req(&key, &request, &other, 30))
            .await
            .unwrap();
        assert_eq!(outcome(&b), Outcome::InProgress);
        let b = begin(&mut c, begin_req(&key, &other, &other, 30))
            .await
            .unwrap();
        assert_eq!(outcome(&b), Outcome::Mismatch);
        assert!(!release(&mut c, &key, &other).await.unwrap());
        let done = Some((200, "application/json", &b"{}"[..]));
        assert!(complete(&mut c, complete_req(&key, &token, 120, done))
            .await
            .unwrap());
        let b = begin(&mut c, begin_req(&key, &request, &other, 30))
            .await
            .unwrap();
        assert_eq!(outcome(&b), Outcome::Completed);
        assert_eq!(b.response.unwrap().body, b"{}");
        let ttl: i64 = r.ttl(idem_key(&key)).unwrap();
        assert!((115..=120).contains(&ttl), "TTL {ttl}");

        let released = fingerprint();
        begin(&mut c, begin_req(&released, &request, &token, 30))
            .await
            .unwrap();
        assert!(release(&mut c, &released, &token).await.unwrap());
        let exists: bool = r.exists(idem_key(&released)).unwrap();
        assert!(!exists);
    }
    for node in &cluster.nodes {
        let records: i64 = redis::cmd("DBSIZE").query(&mut node.conn()).unwrap();
        assert_eq!(records, 1, "each primary holds one completed record");
    }
}

/// A Sentinel process (redis-server in sentinel mode), killed on drop.
struct Sentinel {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    fn start(master: &str, primary_port: u16) -> Sentinel {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {}\n\
                 sentinel monitor {master} 127.0.0.1 {primary_port} 1\n\
                 sentinel down-after-milliseconds {master} 1000\n\
                 sentinel failover-timeout {master} 5000\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let s = Sentinel {
            child,
            port,
            _dir: dir,
        };
        s.primary_port(master, Duration::from_secs(10));
        s
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn conn(&self) -> Option<redis::Connection> {
        redis::Client::open(self.url().as_str())
            .ok()?
            .get_connection()
            .ok()
    }

    fn primary_port(&self, master: &str, timeout: Duration) -> u16 {
        wait_blocking("the sentinel to name the primary", timeout, || {
            let (_, port): (String, u16) = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(master)
                .query(&mut self.conn()?)
                .ok()?;
            Some(port)
        })
    }

    /// The primary's port in `SENTINEL MASTER`, which changes at +switch-master, after
    /// get-master-addr-by-name already names a promoted replica: the service (redis-rs) reads
    /// this one.
    fn master_port(&self, master: &str) -> Option<u16> {
        let info: std::collections::HashMap<String, String> = redis::cmd("SENTINEL")
            .arg("master")
            .arg(master)
            .query(&mut self.conn()?)
            .ok()?;
        info.get("port")?.parse().ok()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A primary, its replica, and a sentinel that monitors them and can promote the replica.
struct Failover {
    primary: Redis,
    replica: Redis,
    sentinel: Sentinel,
}

impl Failover {
    fn start(primary_args: &[&str]) -> Failover {
        let primary = Redis::start_with(free_port(), primary_args);
        let pport = primary.port.to_string();
        let replica = Redis::start_with(free_port(), &["--replicaof", "127.0.0.1", &pport]);
        primary.wait_for_replica();
        let sentinel = Sentinel::start("edge", primary.port);
        // A replica the sentinel can promote: connected to it, and linked to the primary.
        wait_blocking(
            "the sentinel to know the replica",
            Duration::from_secs(60),
            || {
                let replicas: Vec<std::collections::HashMap<String, String>> =
                    redis::cmd("SENTINEL")
                        .arg("replicas")
                        .arg("edge")
                        .query(&mut sentinel.conn()?)
                        .ok()?;
                replicas
                    .iter()
                    .any(|r| {
                        r.get("flags").map(String::as_str) == Some("slave")
                            && r.get("master-link-status").map(String::as_str) == Some("ok")
                    })
                    .then_some(())
            },
        );
        Failover {
            primary,
            replica,
            sentinel,
        }
    }

    /// Fails over: the replica becomes the primary. Returns once the sentinel names it in
    /// both of its answers.
    fn fail_over(&self) {
        // NOGOODSLAVE until the sentinel has a recent INFO from the replica: ask again.
        wait_blocking(
            "the sentinel to start a failover",
            Duration::from_secs(60),
            || {
                redis::cmd("SENTINEL")
                    .arg("failover")
                    .arg("edge")
                    .query::<()>(&mut self.sentinel.conn()?)
                    .ok()
            },
        );
        wait_blocking("the failover", Duration::from_secs(60), || {
            (self.sentinel.primary_port("edge", Duration::from_secs(30)) == self.replica.port
                && self.sentinel.master_port("edge") == Some(self.replica.port))
            .then_some(())
        });
    }
}

/// Scripts (EVALSHA and EVAL, answered or refused) that a Redis has run, from its command
/// statistics, which a resynchronization does not reset.
fn script_calls(r: &Redis) -> u64 {
    r.info("commandstats")
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .flat_map(|l| l.split([':', ',']))
        .filter_map(|f| {
            let (k, v) = f.split_once('=')?;
            matches!(k, "calls" | "rejected_calls")
                .then(|| v.parse::<u64>().ok())
                .flatten()
        })
        .sum()
}

/// The service's --redis-connections default: how many connections a pool has.
const POOL: usize = 4;

#[tokio::test]
async fn sentinel_follows_a_failover_and_a_replicated_claim_survives_it() {
    let f = Failover::start(&[]);
    let service = Service::start(&[
        "--sentinel",
        &f.sentinel.url(),
        "--sentinel-master",
        "edge",
        "--require-replicas",
        "1",
        "--replica-timeout-ms",
        "500",
        "--redis-timeout-ms",
        "1000",
    ])
    .await;
    let c = service.client().await;
    // The service asks the sentinel for the primary on its first call. Under load the replica
    // may be slow to acknowledge (UNAVAILABLE, the claim not trusted): claim a fresh
    // fingerprint until one is answered claimed, i.e. acknowledged by the replica.
    let fp = eventually(
        "a claim acknowledged by the replica",
        Duration::from_secs(60),
        || {
            let mut c = c.clone();
            async move {
                let fp = fingerprint();
                let a = admit(&mut c, claim_req(&fp, 300)).await.ok()?;
                assert!(a.claimed, "a fresh fingerprint is claimed: {a:?}");
                Some(fp)
            }
        },
    )
    .await;
    let key = nonce_key(&fp);

    // Fail over: the replica becomes the primary; the old primary, still up, stays a primary
    // (without replicas) until Sentinel turns it into a replica of the new one.
    f.fail_over();
    // The property, on Redis itself: the claim acknowledged by the replica is on it, now the
    // primary.
    let exists: bool = f.replica.conn().exists(&key).unwrap();
    assert!(exists, "the acknowledged claim is on the promoted replica");
    let on_old_primary = script_calls(&f.primary);

    let failed_over = std::time::Instant::now();
    // The service finds the new primary by itself. --require-replicas 1 can only be met again
    // once Sentinel has turned the old primary into a replica of the new one and it has
    // resynchronized (Sentinel does so about 10 s after the switch, and the full resync waits
    // for repl-diskless-sync-delay, 5 s): until then every claim is answered UNAVAILABLE.
    let fresh = eventually(
        "claims on the new primary",
        Duration::from_secs(120),
        || {
            let mut c = c.clone();
            async move { admit(&mut c, claim_req(&fingerprint(), 300)).await.ok() }
        },
    )
    .await;
    eprintln!(
        "claims worked again {:?} after the failover",
        failed_over.elapsed()
    );
    assert!(fresh.claimed);
    // Once the sentinels name the new primary, a pooled connection still on the old one makes
    // at most one more call there: its WAIT counts no replica (the old primary has none left),
    // and the service asks the sentinels before answering, which moves the whole pool (as
    // does its periodic check). A bound only: the test below is the one that shows the pool
    // leaving an old primary that nothing else makes it leave.
    let more = script_calls(&f.primary) - on_old_primary;
    assert!(
        more <= POOL as u64,
        "{more} calls on the old primary after the switch"
    );

    // The claim made before the failover was acknowledged by the replica now primary: its
    // replay is still refused. An answer of "too few replicas acknowledged" would mean the
    // script claimed the fingerprint again (the service consults WAIT only for a new claim),
    // i.e. the claim was lost: that fails at once. Only an undecided answer (the state store
    // did not answer in time, or a connection was dropped) is asked again; the key's TTL then
    // shows that no attempt claimed it anew (a new claim would restart it at 300 s).
    let ttl_before: i64 = f.replica.conn().ttl(&key).unwrap();
    assert!(ttl_before > 0, "the claim is still on the new primary");
    let replay = eventually("the replay's answer", Duration::from_secs(60), || {
        let mut c = c.clone();
        let fp = fp.clone();
        async move {
            match admit(&mut c, claim_req(&fp, 300)).await {
                Ok(r) => Some(r),
                Err(e) if e.message().contains("too few replicas") => {
                    panic!("the replay was claimed again (the claim was lost): {e:?}")
                }
                Err(e) => {
                    eprintln!("replay undecided, asking again: {e:?}");
                    None
                }
            }
        }
    })
    .await;
    assert!(!replay.claimed, "a replicated claim survives the failover");
    let ttl_after: i64 = f.replica.conn().ttl(&key).unwrap();
    assert!(
        (1..=ttl_before).contains(&ttl_after),
        "the replay claimed nothing anew: TTL {ttl_before} then {ttl_after}"
    );

    // Failure counts work on the new primary too. Right after the old primary's full resync,
    // a write may still miss --replica-timeout-ms: Redis only starts streaming to a replica
    // synced without disk at that replica's next REPLCONF ACK, up to a second later when the
    // RDB child was reaped after the replica's first ACK (as happens under load). The service
    // then rightly answers UNAVAILABLE; ask again, for a new client each time, so that a count
    // written but not acknowledged does not add to the one checked.
    let fc = eventually(
        "a failure count acknowledged by the new replica",
        Duration::from_secs(60),
        || {
            let mut c = c.clone();
            async move {
                let client = format!("{CLIENT}-{}", hex::encode(fingerprint()));
                match record_failure(&mut c, &client, 60, 3).await {
                    Ok(f) => Some(f),
                    Err(e) => {
                        eprintln!("failure count not acknowledged, asking again: {e:?}");
                        None
                    }
                }
            }
        },
    )
    .await;
    assert_eq!((fc.failures, fc.locked_for_seconds), (1, 0), "{fc:?}");
}

/// A failover whose old primary stays up and is never reconfigured: Sentinel cannot turn it
/// into a replica (its REPLICAOF is renamed here; in production, a primary the sentinels
/// cannot reach but the service can). It keeps accepting every write, so nothing makes the
/// service's connections to it fail: the service must leave it by itself, for the new
/// primary that the sentinels name. Without --require-replicas, as nothing else would tell.
#[tokio::test]
async fn sentinel_pool_leaves_an_old_primary_that_stays_up() {
    let f = Failover::start(&[
        "--rename-command",
        "SLAVEOF",
        "ew-test-slaveof",
        "--rename-command",
        "REPLICAOF",
        "ew-test-replicaof",
    ]);
    let service = Service::start(&[
        "--sentinel",
        &f.sentinel.url(),
        "--sentinel-master",
        "edge",
        "--redis-timeout-ms",
        "1000",
    ])
    .await;
    let c = service.client().await;
    // Connections are used in turn: after as many claims as connections, each is on the
    // primary.
    for _ in 0..POOL {
        let mut c = c.clone();
        let fp = fingerprint();
        let a = eventually("a claim on the primary", Duration::from_secs(60), || {
            let mut c = c.clone();
            let fp = fp.clone();
            async move { admit(&mut c, claim_req(&fp, 300)).await.ok() }
        })
        .await;
        assert!(a.claimed);
        let on_primary: bool = f.primary.conn().exists(nonce_key(&fp)).unwrap();
        assert!(on_primary);
        assert!(!admit(&mut c, claim_req(&fp, 300)).await.unwrap().claimed);
    }

    f.fail_over();
    // The old primary is still a primary: Sentinel could not reconfigure it.
    let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut f.primary.conn()).unwrap();
    assert_eq!(
        role.first(),
        Some(&redis::Value::BulkString(b"master".to_vec()))
    );

    // Eventually every claim lands on the new primary, whichever connection takes it: twice
    // round the pool in a row, each key on the new primary and not on the old one.
    eventually(
        "every pooled connection on the new primary",
        Duration::from_secs(60),
        || {
            let c = c.clone();
            let (primary, replica) = (&f.primary, &f.replica);
            async move {
                for _ in 0..2 * POOL {
                    let mut c = c.clone();
                    let fp = fingerprint();
                    let a = admit(&mut c, claim_req(&fp, 300)).await.ok()?;
                    assert!(a.claimed);
                    let on_new: bool = replica.conn().exists(nonce_key(&fp)).unwrap();
                    let on_old: bool = primary.conn().exists(nonce_key(&fp)).unwrap();
                    assert!(on_new != on_old, "a claim is on exactly one primary");
                    if !on_new {
                        return None;
                    }
                }
                Some(())
            }
        },
    )
    .await;
}
