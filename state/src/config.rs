//! Command-line flags; each one can also be set by an `EDGE_WARDEN_STATE_*` environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{ArgGroup, Parser};

/// edge-warden-state: replay-nonce claims, lockout counters and idempotency records for every
/// edge-warden filter, kept in Redis. Stateless: run as many instances as you like against the same Redis.
#[derive(Parser, Debug, Clone)]
#[command(name = "edge-warden-state", version, about, long_about = None)]
#[command(group(
    ArgGroup::new("backend")
        .required(true)
        .multiple(false)
        .args(["redis", "redis_cluster", "sentinel"]),
))]
pub struct Config {
    /// Address the gRPC server (State and grpc.health.v1.Health) listens on.
    #[arg(
        long,
        env = "EDGE_WARDEN_STATE_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    pub listen: SocketAddr,

    /// One Redis server, e.g. redis://127.0.0.1:6379 (redis://:PASSWORD@host:port/DB for auth).
    #[arg(long, env = "EDGE_WARDEN_STATE_REDIS", value_name = "URL")]
    pub redis: Option<String>,

    /// Redis Cluster: some of its nodes, comma-separated (redis://10.0.0.1:6379,redis://...).
    #[arg(
        long,
        env = "EDGE_WARDEN_STATE_REDIS_CLUSTER",
        value_name = "URL,...",
        value_delimiter = ','
    )]
    pub redis_cluster: Vec<String>,

    /// Redis Sentinel: the sentinels, comma-separated; the primary is asked of them by name.
    #[arg(
        long,
        env = "EDGE_WARDEN_STATE_SENTINEL",
        value_name = "URL,...",
        value_delimiter = ',',
        requires = "sentinel_master"
    )]
    pub sentinel: Vec<String>,

    /// The name the sentinels monitor the primary under (with --sentinel).
    #[arg(
        long,
        env = "EDGE_WARDEN_STATE_SENTINEL_MASTER",
        value_name = "NAME",
        requires = "sentinel"
    )]
    pub sentinel_master: Option<String>,

    /// Prefix of every Redis key: PREFIXnonce:<hex fingerprint>, PREFIXfail:<client>,
    /// PREFIXidem:<hex key fingerprint>.
    #[arg(long, env = "EDGE_WARDEN_STATE_KEY_PREFIX", default_value = "ew:", value_parser = parse_prefix)]
    pub key_prefix: String,

    /// After each write, wait until this many replicas acknowledged it (Redis WAIT); answer
    /// UNAVAILABLE when fewer did. 0: do not wait (see README: what survives a failover).
    #[arg(long, env = "EDGE_WARDEN_STATE_REQUIRE_REPLICAS", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=64))]
    pub require_replicas: u32,

    /// How long WAIT waits for the replicas, in milliseconds (with --require-replicas).
    #[arg(long, env = "EDGE_WARDEN_STATE_REPLICA_TIMEOUT_MS", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub replica_timeout_ms: u64,

    /// Deadline of one Redis round trip, in milliseconds (plus the replica timeout when it
    /// waits for replicas); past it the call answers UNAVAILABLE.
    #[arg(long, env = "EDGE_WARDEN_STATE_REDIS_TIMEOUT_MS", default_value_t = 40,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub redis_timeout_ms: u64,

    /// Independent Redis connections per instance, used in turn. Commands are pipelined on
    /// each; more help mostly with --require-replicas, as a WAIT holds its connection.
    #[arg(long, env = "EDGE_WARDEN_STATE_REDIS_CONNECTIONS", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub redis_connections: u16,
}

/// Where the state lives: exactly one of the three is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Single(String),
    Cluster(Vec<String>),
    Sentinel {
        sentinels: Vec<String>,
        master: String,
    },
}

impl Config {
    /// The Redis deployment named by the flags. clap has checked that exactly one is present.
    pub fn backend(&self) -> Result<Backend, String> {
        if let Some(url) = &self.redis {
            return Ok(Backend::Single(url.clone()));
        }
        if !self.redis_cluster.is_empty() {
            return non_empty(&self.redis_cluster, "--redis-cluster").map(Backend::Cluster);
        }
        if !self.sentinel.is_empty() {
            let sentinels = non_empty(&self.sentinel, "--sentinel")?;
            let master = match self.sentinel_master.as_deref().map(str::trim) {
                Some(name) if !name.is_empty() => name.to_string(),
                _ => return Err("--sentinel needs --sentinel-master NAME".into()),
            };
            return Ok(Backend::Sentinel { sentinels, master });
        }
        Err("name the Redis deployment: --redis, --redis-cluster or --sentinel".into())
    }

    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }

    pub fn replica_timeout(&self) -> Duration {
        Duration::from_millis(self.replica_timeout_ms)
    }
}

fn non_empty(urls: &[String], flag: &str) -> Result<Vec<String>, String> {
    let urls: Vec<String> = urls
        .iter()
        .map(|u| u.trim())
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect();
    if urls.is_empty() {
        return Err(format!("{flag} needs at least one URL"));
    }
    Ok(urls)
}

fn parse_prefix(s: &str) -> Result<String, String> {
    if s.len() > 64 {
        return Err("at most 64 bytes".into());
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("edge-warden-state").chain(args.iter().copied()))
    }

    #[test]
    fn exactly_one_backend() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--redis", "redis://a", "--redis-cluster", "redis://b"]).is_err());
        assert!(
            parse(&["--sentinel", "redis://s"]).is_err(),
            "needs --sentinel-master"
        );
        assert!(parse(&["--sentinel-master", "m"]).is_err());
        let c = parse(&["--redis-cluster", "redis://a:1,redis://b:2"]).unwrap();
        assert_eq!(
            c.backend().unwrap(),
            Backend::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()])
        );
        let c = parse(&["--sentinel", "redis://s:1", "--sentinel-master", "m"]).unwrap();
        assert_eq!(
            c.backend().unwrap(),
            Backend::Sentinel {
                sentinels: vec!["redis://s:1".into()],
                master: "m".into()
            }
        );
    }

    #[test]
    fn defaults_and_bounds() {
        let c = parse(&["--redis", "redis://127.0.0.1:6379"]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(c.key_prefix, "ew:");
        assert_eq!(
            (c.require_replicas, c.replica_timeout_ms, c.redis_timeout_ms),
            (0, 20, 40)
        );
        assert!(parse(&["--redis", "redis://x", "--replica-timeout-ms", "0"]).is_err());
        assert!(parse(&["--redis", "redis://x", "--redis-timeout-ms", "0"]).is_err());
    }
}
