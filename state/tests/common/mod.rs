//! Real processes for the integration tests: Debian's `redis-server` on free loopback ports, and
//! the built `edge-warden-state` binary, called through the generated tonic client.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edge_warden_state::pb::begin_idempotent_response::Outcome;
use edge_warden_state::pb::state_client::StateClient;
use edge_warden_state::pb::{
    AdmitRequest, AdmitResponse, BeginIdempotentRequest, BeginIdempotentResponse, Claim,
    CompleteIdempotentRequest, LockoutCheck, RecordFailureRequest, RecordFailureResponse,
    ReleaseIdempotentRequest, StoredResponse,
};
use tonic::transport::Channel;

/// A loopback port nobody listens on right now (and, for cluster nodes, its bus port too).
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

fn redis_server() -> &'static str {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("redis-server is not installed: `make redis-deps` (Debian's redis-server)");
    }
    "redis-server"
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `redis-server` without persistence in its own temporary directory, killed on drop.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_with(free_port(), &[])
    }

    pub fn start_with(port: u16, extra: &[&str]) -> Redis {
        let mut r = Redis {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new(redis_server())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--loglevel", "warning", "--dir"])
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let url = self.url();
        wait_for("redis-server", Duration::from_secs(10), || {
            let mut c = redis::Client::open(url.as_str())
                .ok()?
                .get_connection()
                .ok()?;
            redis::cmd("PING").query::<String>(&mut c).ok()
        });
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url().as_str())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// SIGKILL: no goodbye to the clients, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: it has no persistence).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Waits until a replica acknowledges this server's writes (WAIT answers 1), which is a
    /// little later than `INFO replication` first shows it online.
    pub fn wait_for_replica(&self) {
        wait_for(
            "a replica acknowledging writes",
            Duration::from_secs(30),
            || {
                let mut c = self.conn();
                redis::cmd("SET")
                    .arg("probe")
                    .arg("1")
                    .query::<()>(&mut c)
                    .ok()?;
                let acked: i64 = redis::cmd("WAIT").arg(1).arg(100).query(&mut c).ok()?;
                let _ = redis::cmd("DEL").arg("probe").query::<()>(&mut c);
                (acked >= 1).then_some(())
            },
        );
    }

    pub fn info(&self, section: &str) -> String {
        redis::cmd("INFO")
            .arg(section)
            .query(&mut self.conn())
            .unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The built service on a free port, killed on drop (its log is printed if the test failed).
pub struct Service {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Service {
    pub async fn start(args: &[&str]) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("service.log");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_edge-warden-state"))
            .env_clear()
            .env("RUST_LOG", "info")
            .args(["--listen", &addr.to_string()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let service = Service {
            child,
            addr,
            log,
            _dir: dir,
        };
        let start = Instant::now();
        while TcpStream::connect(addr).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                panic!("edge-warden-state did not listen:\n{}", service.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        service
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn client(&self) -> StateClient<Channel> {
        StateClient::new(self.channel().await)
    }

    /// Stops it with SIGTERM and returns its exit status and how long it took. Waits without
    /// blocking the runtime, so the test's own client connections can close meanwhile.
    pub async fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- edge-warden-state log ---\n{}", self.log());
        }
    }
}

/// Every call of the tests carries this deadline: a call that hangs fails the test.
pub const CALL_DEADLINE: Duration = Duration::from_secs(2);

fn request<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(CALL_DEADLINE);
    r
}

pub fn claim_req(fingerprint: &[u8], ttl: u32) -> AdmitRequest {
    AdmitRequest {
        lockout: None,
        claim: Some(Claim {
            fingerprint: fingerprint.to_vec(),
            ttl_seconds: ttl,
        }),
    }
}

pub fn lockout_req(client: &str, max: u32, claim: Option<(&[u8], u32)>) -> AdmitRequest {
    AdmitRequest {
        lockout: Some(LockoutCheck {
            client: client.into(),
            max_failures: max,
        }),
        claim: claim.map(|(f, t)| Claim {
            fingerprint: f.to_vec(),
            ttl_seconds: t,
        }),
    }
}

pub async fn admit(
    c: &mut StateClient<Channel>,
    req: AdmitRequest,
) -> Result<AdmitResponse, tonic::Status> {
    c.admit(request(req)).await.map(|r| r.into_inner())
}

pub async fn record_failure(
    c: &mut StateClient<Channel>,
    client: &str,
    window: u32,
    max: u32,
) -> Result<RecordFailureResponse, tonic::Status> {
    let req = RecordFailureRequest {
        client: client.into(),
        window_seconds: window,
        max_failures: max,
    };
    c.record_failure(request(req)).await.map(|r| r.into_inner())
}

/// The Redis key of a fingerprint's claim with the default prefix.
pub fn nonce_key(fingerprint: &[u8]) -> String {
    format!("ew:nonce:{}", hex::encode(fingerprint))
}

/// A fresh 16-byte fingerprint per call.
pub fn fingerprint() -> Vec<u8> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    [n.to_be_bytes(), nanos.to_be_bytes()].concat()
}

/// Polls `f` until it returns Some, for at most `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn wait_blocking<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    wait_for(what, timeout, f)
}

pub fn begin_req(
    key: &[u8],
    request: &[u8],
    token: &[u8],
    in_flight: u32,
) -> BeginIdempotentRequest {
    BeginIdempotentRequest {
        key: key.to_vec(),
        request: request.to_vec(),
        token: token.to_vec(),
        in_flight_seconds: in_flight,
    }
}

pub async fn begin(
    c: &mut StateClient<Channel>,
    req: BeginIdempotentRequest,
) -> Result<BeginIdempotentResponse, tonic::Status> {
    c.begin_idempotent(request(req))
        .await
        .map(|r| r.into_inner())
}

/// Begin's outcome, for comparisons (an unknown number is a test failure).
pub fn outcome(r: &BeginIdempotentResponse) -> Outcome {
    Outcome::try_from(r.outcome).unwrap()
}

pub fn complete_req(
    key: &[u8],
    token: &[u8],
    ttl: u32,
    response: Option<(u32, &str, &[u8])>,
) -> CompleteIdempotentRequest {
    CompleteIdempotentRequest {
        key: key.to_vec(),
        token: token.to_vec(),
        ttl_seconds: ttl,
        response: response.map(|(status, content_type, body)| StoredResponse {
            status,
            content_type: content_type.into(),
            body: body.to_vec(),
        }),
    }
}

/// Complete's `stored`.
pub async fn complete(
    c: &mut StateClient<Channel>,
    req: CompleteIdempotentRequest,
) -> Result<bool, tonic::Status> {
    c.complete_idempotent(request(req))
        .await
        .map(|r| r.into_inner().stored)
}

/// Release's `released`.
pub async fn release(
    c: &mut StateClient<Channel>,
    key: &[u8],
    token: &[u8],
) -> Result<bool, tonic::Status> {
    let req = ReleaseIdempotentRequest {
        key: key.to_vec(),
        token: token.to_vec(),
    };
    c.release_idempotent(request(req))
        .await
        .map(|r| r.into_inner().released)
}

/// The Redis key of an idempotency key's record with the default prefix.
pub fn idem_key(key: &[u8]) -> String {
    format!("ew:idem:{}", hex::encode(key))
}
