//! A real Envoy loading the built .wasm in front of the demo upstream, on free ports, rendered
//! from the same `envoy/envoy.yaml` that `make run` starts. Stopped on drop; its log is printed
//! when a test fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edge_warden::checks::signature::sign;

/// The secret most tests sign with (HMAC_SHARED_SECRET in Envoy's environment).
pub const SECRET: &str = "test-secret-0123456789abcdef-0123456789";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A development CA and server certificate in `dir` (scripts/certs.sh, as `make certs` runs it).
pub fn certs(dir: &std::path::Path) {
    let out = Command::new(repo().join("scripts/certs.sh"))
        .arg(dir)
        .output()
        .expect("certs.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn envoy_binary() -> PathBuf {
    repo().join(".venv/bin/envoy")
}

pub fn wasm() -> PathBuf {
    repo().join("target/wasm32-wasip1/release/edge_warden.wasm")
}

/// The two artifacts edge-warden ships; every Envoy test runs against the one named by
/// `EDGE_WARDEN_RUNTIME` (`wasm`, the default, or `native`). `make test` runs the suite once
/// for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Wasm,
    Native,
}

pub fn runtime() -> Runtime {
    match std::env::var("EDGE_WARDEN_RUNTIME").as_deref() {
        Ok("native") => Runtime::Native,
        Ok("wasm") | Err(_) => Runtime::Wasm,
        Ok(other) => panic!("EDGE_WARDEN_RUNTIME must be `wasm` or `native`, not `{other}`"),
    }
}

/// Where Envoy finds `libedge_warden.so` (`ENVOY_DYNAMIC_MODULES_SEARCH_PATH`).
pub fn native_module_dir() -> PathBuf {
    repo().join("target/native")
}

/// The prefix Envoy gives edge-warden's metrics in `/stats`.
pub fn stat_prefix() -> &'static str {
    match runtime() {
        Runtime::Wasm => "wasmcustom",
        Runtime::Native => "dynamicmodulescustom",
    }
}

/// An Envoy config of the repository with the edge-warden wasm filter replaced by the native
/// dynamic module, carrying the same plugin configuration. `envoy/envoy-native.yaml` is this of
/// `envoy/envoy.yaml` (a test checks it), so every other config can be run natively too.
pub fn to_native(yaml: &str) -> String {
    let lines: Vec<&str> = yaml.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim() == "- name: edge_warden")
        .expect("an edge_warden filter");
    let value = start
        + lines[start..]
            .iter()
            .position(|l| l.trim() == "value: |")
            .expect("its configuration value");
    let indent = " ".repeat(lines[start].len() - lines[start].trim_start().len());
    let head = NATIVE_FILTER
        .lines()
        .map(|l| format!("{indent}{l}"))
        .collect::<Vec<_>>();
    let value_indent = lines[value].len() - lines[value].trim_start().len();
    let end = lines[value + 1..]
        .iter()
        .position(|l| !l.trim().is_empty() && l.len() - l.trim_start().len() <= value_indent)
        .map_or(lines.len(), |p| value + 1 + p);
    let mut out: Vec<String> = lines[..start].iter().map(|l| l.to_string()).collect();
    out.extend(head);
    // The value sits one level shallower under `filter_config` than under `configuration`.
    out.extend(
        lines[value..end]
            .iter()
            .map(|l| l.strip_prefix("  ").unwrap_or(l).to_string()),
    );
    out.extend(lines[end..].iter().map(|l| l.to_string()));
    out.join("\n") + "\n"
}

/// The dynamic-module filter block of `envoy/envoy-native.yaml`, up to its `value: |`.
const NATIVE_FILTER: &str = r#"- name: edge_warden
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
    # Loads libedge_warden.so from $ENVOY_DYNAMIC_MODULES_SEARCH_PATH (`make run
    # RUNTIME=native` sets it to target/native). Native code in Envoy's process: no
    # sandbox, and every environment variable of Envoy is visible to it.
    dynamic_module_config:
      name: edge_warden
      # Keep the module mapped for the life of the process (its process-wide replay
      # cache and lockout counters must outlive a configuration reload).
      do_not_close: true
    filter_name: edge_warden
    # The same plugin configuration as the wasm filter's; secrets from the environment.
    filter_config:
      "@type": type.googleapis.com/google.protobuf.StringValue"#;

pub struct Options {
    /// The Envoy config to render, relative to the repository (default `envoy/envoy.yaml`).
    pub config_file: &'static str,
    /// Where `certs/…` paths point (for `envoy/envoy-tls.yaml`).
    pub certs_dir: Option<PathBuf>,
    /// Plugin configuration JSON; `None` keeps the one in envoy/envoy.yaml.
    pub plugin_config: Option<String>,
    /// Environment of the Envoy process (and so of the VM, for the listed keys).
    pub env: Vec<(String, String)>,
    /// Variables the VM may read (`host_env_keys`).
    pub host_env_keys: Vec<String>,
    pub concurrency: u32,
    pub buffer_limit: Option<u64>,
    /// Point the cluster at a port nothing listens on (Envoy answers 503).
    pub dead_upstream: bool,
    /// Listen on `[::]` with IPv4-mapped addresses too, so tests can connect over IPv4 and IPv6.
    pub dual_stack: bool,
    /// Prefix of the catch-all route; anything outside it gets Envoy's own 404.
    pub route_prefix: Option<String>,
    /// Extra Envoy arguments, e.g. log levels.
    pub args: Vec<String>,
    /// The runtime to start, instead of the one `EDGE_WARDEN_RUNTIME` names.
    pub runtime: Option<Runtime>,
    /// Where the native module is loaded from, instead of target/native.
    pub module_dir: Option<PathBuf>,
    /// The .wasm to load, instead of the release build.
    pub wasm_file: Option<PathBuf>,
    /// Serve the listeners over LDS from a watched file instead of `static_resources`, so a
    /// test can change the plugin configuration of a running Envoy
    /// ([`Envoy::update_plugin_config`]).
    pub lds: bool,
    /// Text of the Envoy config replaced before it is started (`from` must occur exactly once):
    /// a setting a user would change, such as `xff_num_trusted_hops: 0`.
    pub edits: Vec<(&'static str, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            config_file: "envoy/envoy.yaml",
            certs_dir: None,
            plugin_config: None,
            env: vec![("HMAC_SHARED_SECRET".into(), SECRET.into())],
            host_env_keys: vec!["HMAC_SHARED_SECRET".into(), "WORKERS_ORIGIN".into()],
            concurrency: 2,
            buffer_limit: None,
            route_prefix: None,
            dead_upstream: false,
            dual_stack: false,
            args: vec!["-l".into(), "info".into()],
            edits: Vec::new(),
            runtime: None,
            module_dir: None,
            wasm_file: None,
            lds: false,
        }
    }
}

impl Options {
    pub fn with_config(config: &str) -> Self {
        Self {
            plugin_config: Some(config.to_string()),
            ..Self::default()
        }
    }
}

/// The default envoy/envoy.yaml with ports, paths and the options applied.
pub fn render(opts: &Options, upstream_port: u16) -> String {
    let upstream_port = if opts.dead_upstream {
        // A port that was free a moment ago: nothing listens there now.
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_or(1, |a| a.port())
    } else {
        upstream_port
    };
    let yaml = std::fs::read_to_string(repo().join(opts.config_file)).expect(opts.config_file);
    let native = opts.runtime.unwrap_or_else(runtime) == Runtime::Native;
    let yaml = if native { to_native(&yaml) } else { yaml };
    let mut out = if opts.dual_stack {
        replace_once(
            &yaml,
            "socket_address: { address: 127.0.0.1, port_value: 10000 }",
            "socket_address: { address: \"::\", port_value: 0, ipv4_compat: true }",
        )
    } else {
        let mut out = yaml.clone();
        for listener in [
            "port_value: 10000",
            "port_value: 10443",
            "port_value: 10080",
        ] {
            if out.contains(listener) {
                out = replace_once(&out, listener, "port_value: 0");
            }
        }
        out
    };
    if let Some(dir) = &opts.certs_dir {
        out = out.replace("filename: certs/", &format!("filename: {}/", dir.display()));
    }
    out = replace_once(&out, "port_value: 9901", "port_value: 0");
    out = replace_once(
        &out,
        "port_value: 8080",
        &format!("port_value: {upstream_port}"),
    );
    // The native module reads Envoy's environment directly: no file name, no key list.
    if !native {
        out = replace_once(
            &out,
            "filename: target/wasm32-wasip1/release/edge_warden.wasm",
            &format!(
                "filename: {}",
                opts.wasm_file.clone().unwrap_or_else(wasm).display()
            ),
        );
        out = replace_once(
            &out,
            "host_env_keys: [HMAC_SHARED_SECRET, WORKERS_ORIGIN]",
            &format!("host_env_keys: [{}]", opts.host_env_keys.join(", ")),
        );
    }
    if let Some(limit) = opts.buffer_limit {
        out = replace_once(
            &out,
            "per_connection_buffer_limit_bytes: 2097152",
            &format!("per_connection_buffer_limit_bytes: {limit}"),
        );
    }
    if let Some(prefix) = &opts.route_prefix {
        out = replace_once(
            &out,
            "match: { prefix: \"/\" }",
            &format!("match: {{ prefix: \"{prefix}\" }}"),
        );
    }
    for (from, to) in &opts.edits {
        out = replace_once(&out, from, to);
    }
    if let Some(config) = &opts.plugin_config {
        out = replace_plugin_config(&out, config);
    }
    out
}

/// A rendered config split into a bootstrap that reads its listeners from `dir/lds.yaml`
/// (watched) and that file's contents.
fn split_lds(yaml: &str, dir: &std::path::Path) -> (String, String) {
    let lines: Vec<&str> = yaml.lines().collect();
    let start = lines
        .iter()
        .position(|l| *l == "  listeners:")
        .expect("static listeners");
    let end = start
        + 1
        + lines[start + 1..]
            .iter()
            .position(|l| l.starts_with("  ") && !l.starts_with("   ") && !l.starts_with("  -"))
            .expect("a section after the listeners");
    let mut listeners = String::from("resources:\n");
    for line in &lines[start + 1..end] {
        let line = line.strip_prefix("  ").unwrap_or(line);
        if let Some(rest) = line.strip_prefix("- ") {
            listeners
                .push_str("- \"@type\": type.googleapis.com/envoy.config.listener.v3.Listener\n");
            listeners.push_str(&format!("  {rest}\n"));
        } else {
            listeners.push_str(line);
            listeners.push('\n');
        }
    }
    let mut bootstrap: Vec<String> = lines[..start].iter().map(|l| l.to_string()).collect();
    bootstrap.extend(lines[end..].iter().map(|l| l.to_string()));
    bootstrap.push(format!(
        "node: {{ id: edge-warden-test, cluster: edge-warden-test }}\n\
         dynamic_resources:\n  lds_config:\n    path_config_source:\n      path: {}\n      \
         watched_directory: {{ path: {} }}",
        dir.join("lds.yaml").display(),
        dir.display()
    ));
    (bootstrap.join("\n") + "\n", listeners)
}

fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "envoy/envoy.yaml changed: expected `{from}` exactly once"
    );
    text.replacen(from, to, 1)
}

/// The JSON under `configuration: … value: |` in envoy/envoy.yaml.
pub fn default_plugin_config() -> String {
    plugin_config_of("envoy/envoy.yaml")
}

/// The JSON under `configuration: … value: |` in an Envoy config of the repository.
pub fn plugin_config_of(file: &str) -> String {
    let yaml = std::fs::read_to_string(repo().join(file)).expect(file);
    let (_, block, _) = split_plugin_config(&yaml);
    block.join("\n")
}

fn split_plugin_config(yaml: &str) -> (Vec<&str>, Vec<&str>, Vec<&str>) {
    let lines: Vec<&str> = yaml.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim() == "value: |")
        .expect("a `value: |` block in envoy/envoy.yaml");
    let indent = lines[start].len() - lines[start].trim_start().len();
    let end = lines[start + 1..]
        .iter()
        .position(|l| !l.trim().is_empty() && l.len() - l.trim_start().len() <= indent)
        .map_or(lines.len(), |p| start + 1 + p);
    let block = lines[start + 1..end]
        .iter()
        .map(|l| l.get(indent + 2..).unwrap_or(""))
        .collect();
    (lines[..=start].to_vec(), block, lines[end..].to_vec())
}

fn replace_plugin_config(yaml: &str, config: &str) -> String {
    let (head, _, tail) = split_plugin_config(yaml);
    let indent = " ".repeat(head.last().map_or(0, |l| l.len() - l.trim_start().len()) + 2);
    let mut out: Vec<String> = head.iter().map(|l| l.to_string()).collect();
    out.extend(config.lines().map(|l| format!("{indent}{l}")));
    out.extend(tail.iter().map(|l| l.to_string()));
    out.join("\n") + "\n"
}

pub struct Upstream {
    child: Child,
    pub port: u16,
}

impl Upstream {
    pub fn start() -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_demo-upstream"))
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start demo-upstream");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("demo-upstream address");
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected demo-upstream output: {line}"));
        Self { child, port }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Envoy {
    child: Child,
    _upstream: Upstream,
    dir: tempfile::TempDir,
    /// The listeners as LDS serves them (with `Options::lds`).
    lds: Option<String>,
    pub port: u16,
    pub admin_port: u16,
    /// Every listener's bound port, by listener name.
    pub ports: Vec<(String, u16)>,
}

/// Envoy refused to start: its exit status and log.
#[derive(Debug)]
pub struct Refused {
    pub log: String,
    pub success: bool,
}

impl Envoy {
    pub fn start(opts: Options) -> Self {
        match Self::try_start(opts) {
            Ok(envoy) => envoy,
            Err(refused) => panic!("Envoy did not start:\n{}", refused.log),
        }
    }

    pub fn try_start(opts: Options) -> Result<Self, Refused> {
        assert!(
            envoy_binary().exists(),
            "no Envoy at .venv/bin/envoy: run `make test`"
        );
        let module_dir = opts.module_dir.clone().unwrap_or_else(native_module_dir);
        let runtime = opts.runtime.unwrap_or_else(runtime);
        match runtime {
            Runtime::Wasm => assert!(wasm().exists(), "no .wasm: run `make wasm`"),
            Runtime::Native => assert!(
                module_dir.join("libedge_warden.so").exists(),
                "no {}/libedge_warden.so: run `make native`",
                module_dir.display()
            ),
        }
        let upstream = Upstream::start();
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("envoy.yaml");
        let rendered = render(&opts, upstream.port);
        let lds = if opts.lds {
            let lds_dir = dir.path().join("lds");
            std::fs::create_dir(&lds_dir).expect("lds dir");
            let (bootstrap, listeners) = split_lds(&rendered, &lds_dir);
            std::fs::write(&config, bootstrap).expect("write config");
            std::fs::write(lds_dir.join("lds.yaml"), &listeners).expect("write lds");
            Some(listeners)
        } else {
            std::fs::write(&config, rendered).expect("write config");
            None
        };
        let admin_file = dir.path().join("admin");
        let log = dir.path().join("envoy.log");
        let mut cmd = Command::new(envoy_binary());
        cmd.arg("-c")
            .arg(&config)
            .args(["--concurrency", &opts.concurrency.to_string()])
            .arg("--disable-hot-restart")
            // The log file is read by tests while Envoy runs: flush it often.
            .args(["--file-flush-interval-msec", "20"])
            .arg("--admin-address-path")
            .arg(&admin_file)
            .arg("--log-path")
            .arg(&log)
            .args(&opts.args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            // The access log (standard output in the shipped configs).
            .stdout(std::fs::File::create(dir.path().join("access.log")).expect("access log"))
            .stderr(Stdio::null());
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        if runtime == Runtime::Native {
            cmd.env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", &module_dir);
        }
        let mut child = cmd.spawn().expect("start Envoy");
        let deadline = Instant::now() + Duration::from_secs(30);
        let admin_port = loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(Refused {
                    log: std::fs::read_to_string(&log).unwrap_or_default(),
                    success: status.success(),
                });
            }
            if let Some(port) = std::fs::read_to_string(&admin_file)
                .ok()
                .and_then(|a| a.trim().rsplit(':').next()?.parse::<u16>().ok())
            {
                break port;
            }
            assert!(Instant::now() < deadline, "Envoy did not start in 30 s");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut envoy = Envoy {
            child,
            _upstream: upstream,
            dir,
            lds,
            port: 0,
            admin_port,
            ports: Vec::new(),
        };
        loop {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                return Err(Refused {
                    log: envoy.log(),
                    success: status.success(),
                });
            }
            let ready = try_request(envoy.admin_port, "GET", "/ready", &[], b"");
            if ready.is_some_and(|r| r.body == b"LIVE\n" || r.body == b"LIVE") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Envoy not ready in 30 s:\n{}",
                envoy.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let listeners: serde_json::Value =
            serde_json::from_str(&envoy.admin("/listeners?format=json").1).expect("listeners");
        for l in listeners["listener_statuses"]
            .as_array()
            .expect("listeners")
        {
            let name = l["name"].as_str().unwrap_or_default().to_string();
            let port = l["local_address"]["socket_address"]["port_value"]
                .as_u64()
                .expect("listener port") as u16;
            envoy.ports.push((name, port));
        }
        envoy.port = envoy.ports[0].1;
        Ok(envoy)
    }

    /// Envoy's process id (the `.venv/bin/envoy` launcher execs Envoy, keeping its pid).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port_of(&self, listener: &str) -> u16 {
        self.ports
            .iter()
            .find(|(n, _)| n == listener)
            .map(|(_, p)| *p)
            .unwrap_or_else(|| panic!("no listener {listener}: {:?}", self.ports))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    /// The log once it holds `needle` (Envoy writes its log file every 20 ms, so a line can
    /// trail the event by that much), or as it is after 5 s.
    pub fn log_once_it_has(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.log();
            if log.contains(needle) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the access log wrote so far (Envoy flushes it every `--file-flush-interval-msec`).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// Delivers a new plugin configuration to the running Envoy through LDS (needs
    /// `Options::lds`), as a control plane would, and waits until Envoy took it. The listener
    /// keeps its address, so `port` stays valid.
    pub fn update_plugin_config(&mut self, config: &str) {
        assert!(
            self.try_update_plugin_config(config),
            "LDS update rejected:\n{}",
            self.log()
        );
    }

    /// Delivers a new plugin configuration over LDS; whether Envoy took it (`false`: Envoy
    /// rejected the update and the running configuration stays).
    pub fn try_update_plugin_config(&mut self, config: &str) -> bool {
        let listeners = self.lds.as_deref().expect("started with Options::lds");
        let updated = replace_plugin_config(listeners, config);
        let before = (
            self.lds_stat("update_success"),
            self.lds_stat("update_rejected"),
        );
        let lds_dir = self.dir.path().join("lds");
        let staged = self.dir.path().join("lds.yaml.new");
        std::fs::write(&staged, &updated).expect("stage lds");
        // A rename into the watched directory is what Envoy's file watch sees.
        std::fs::rename(&staged, lds_dir.join("lds.yaml")).expect("move lds");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.lds_stat("update_success") > before.0 {
                self.lds = Some(updated);
                return true;
            }
            if self.lds_stat("update_rejected") > before.1 {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "LDS update not seen:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn lds_stat(&self, name: &str) -> i64 {
        let (_, text) = self.admin(&format!("/stats?filter=^listener_manager\\.lds\\.{name}$"));
        text.lines()
            .find_map(|l| l.split_once(": "))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// GET on the admin interface: (status, body).
    pub fn admin(&self, path: &str) -> (u16, String) {
        let r = request(self.admin_port, "GET", path, &[], b"");
        (r.status, String::from_utf8_lossy(&r.body).into_owned())
    }

    /// A counter of one of Envoy's clusters (`demo_upstream`, `edge_warden_state`):
    /// `cluster.<cluster>.<name>`, 0 before the first count. Envoy's own count, not ours.
    pub fn cluster_stat(&self, cluster: &str, name: &str) -> i64 {
        let full = format!("cluster.{cluster}.{name}");
        let (_, text) = self.admin(&format!("/stats?filter=^{}$", full.replace('.', "\\.")));
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{full}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// A counter or gauge of edge-warden's once the filter has handed Envoy what it counted so
    /// far: each VM flushes its metric deltas once a second, so this waits out one period.
    pub fn settled_stat(&self, name: &str) -> Option<i64> {
        std::thread::sleep(Duration::from_millis(1500));
        self.stat(name)
    }

    /// A counter or gauge from `/stats` (`wasmcustom.NAME` or `dynamicmodulescustom.NAME`).
    pub fn stat(&self, name: &str) -> Option<i64> {
        let (_, text) = self.admin(&format!("/stats?filter={name}$"));
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{}.{name}: ", stat_prefix())))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Every series of one of edge-warden's metric families (`edge_warden_rejected_total`) in
    /// `/stats/prometheus`, where Envoy prints it as `envoy_<family>`: its labels as Envoy
    /// prints them (`code="invalid_signature",policy="signed",runtime="wasm"`) and its value.
    pub fn series(&self, family: &str) -> Vec<(String, i64)> {
        let (_, text) = self.admin("/stats/prometheus");
        parse_series(&text, &format!("envoy_{family}"))
    }

    /// One series' value, by its labels in any order, `runtime` aside (`None`: Envoy shows no
    /// such series).
    pub fn series_value(&self, family: &str, labels: &[(&str, &str)]) -> Option<i64> {
        let mut wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        wanted.sort();
        self.series(family)
            .into_iter()
            .find(|(l, _)| label_set(l) == wanted)
            .map(|(_, v)| v)
    }

    /// The sum of a family's series (`None`: Envoy shows none), once what the filter counted has
    /// been handed over (waits out one flush period, as [`Envoy::settled_stat`]).
    pub fn settled_total(&self, family: &str) -> Option<i64> {
        std::thread::sleep(Duration::from_millis(1500));
        self.total(family)
    }

    /// The sum of a family's series now (`None`: Envoy shows none).
    pub fn total(&self, family: &str) -> Option<i64> {
        let series = self.series(family);
        (!series.is_empty()).then(|| series.iter().map(|(_, v)| v).sum())
    }

    /// Connections each worker thread accepted, from `/stats` (`worker_N.downstream_cx_total`
    /// of every listener): proof that a test's requests really spread over the workers.
    pub fn connections_per_worker(&self) -> Vec<u64> {
        let (_, text) = self.admin("/stats?filter=worker_[0-9]+\\.downstream_cx_total$");
        let mut per_worker = Vec::new();
        for line in text.lines() {
            let Some((name, value)) = line.split_once(": ") else {
                continue;
            };
            let Some(worker) = name
                .split('.')
                .find_map(|part| part.strip_prefix("worker_"))
                .and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            if per_worker.len() <= worker {
                per_worker.resize(worker + 1, 0);
            }
            per_worker[worker] += value.trim().parse::<u64>().unwrap_or(0);
        }
        per_worker
    }

    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        request(self.port, method, path, headers, body)
    }

    /// A request over IPv6 loopback (needs `dual_stack`).
    pub fn request_v6(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
        send(
            &agent(),
            &format!("[::1]:{}", self.port),
            method,
            path,
            headers,
            b"",
        )
        .unwrap_or_else(|| panic!("{method} {path} over IPv6 failed"))
    }

    /// A request signed with `secret`, timestamp now and a fresh nonce.
    pub fn signed(&self, method: &str, path: &str, body: &[u8]) -> Resp {
        let s = Signed::new(SECRET, body);
        self.request(method, path, &s.headers(), body)
    }

    /// Raw bytes over one connection; returns what the server sent until it closed.
    pub fn raw(&self, parts: &[&[u8]], pause: Duration) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        for part in parts {
            if stream.write_all(part).is_err() {
                break;
            }
            std::thread::sleep(pause);
        }
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("---- Envoy log (last 60 lines) ----");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

pub fn fresh_nonce() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("random");
    hex::encode(bytes)
}

/// The three signature headers for a body.
#[derive(Clone, Debug)]
pub struct Signed {
    pub signature: String,
    pub timestamp: String,
    pub nonce: String,
}

impl Signed {
    pub fn new(secret: &str, body: &[u8]) -> Self {
        Self::at(secret, body, now(), &fresh_nonce())
    }

    pub fn at(secret: &str, body: &[u8], timestamp: u64, nonce: &str) -> Self {
        let timestamp = timestamp.to_string();
        Self {
            signature: sign(secret.as_bytes(), body, &timestamp, nonce),
            timestamp,
            nonce: nonce.to_string(),
        }
    }

    pub fn headers(&self) -> Vec<(&str, &str)> {
        vec![
            ("x-request-signature", self.signature.as_str()),
            ("x-request-timestamp", self.timestamp.as_str()),
            ("x-request-nonce", self.nonce.as_str()),
        ]
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response {} is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The rejection code, asserting the problem+json shape on the way.
    pub fn code(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "status {} body {}",
            self.status,
            String::from_utf8_lossy(&self.body)
        );
        let v = self.json();
        assert_eq!(v["status"].as_u64(), Some(u64::from(self.status)));
        for member in ["type", "title", "detail", "code"] {
            assert!(
                v[member].is_string(),
                "problem member {member} missing: {v}"
            );
        }
        v["code"].as_str().unwrap_or_default().to_string()
    }
}

pub fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    try_request(port, method, path, headers, body)
        .unwrap_or_else(|| panic!("{method} {path} on port {port} failed"))
}

/// `request`, or `None` when the connection fails.
pub fn try_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<Resp> {
    send(
        &agent(),
        &format!("127.0.0.1:{port}"),
        method,
        path,
        headers,
        body,
    )
}

/// A client that keeps its connection open from one request to the next, for floods (`request`
/// opens a connection per request).
pub struct Client {
    agent: ureq::Agent,
    authority: String,
}

impl Client {
    pub fn new(port: u16) -> Self {
        Self {
            agent: agent(),
            authority: format!("127.0.0.1:{port}"),
        }
    }

    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        send(&self.agent, &self.authority, method, path, headers, body)
            .unwrap_or_else(|| panic!("{method} {path} on {} failed", self.authority))
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// One request through `agent` (a fresh one opens a connection; a kept one may reuse its own).
fn send(
    agent: &ureq::Agent,
    authority: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<Resp> {
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://{authority}{path}"));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let req = req.body(body.to_vec()).expect("request");
    let mut resp = agent.run(req).ok()?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_vec()
        .ok()?;
    Some(Resp {
        status,
        headers,
        body,
    })
}

/// The series of `family` in a Prometheus text exposition: (labels, value).
pub fn parse_series(text: &str, family: &str) -> Vec<(String, i64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(family)?;
            let (labels, value) = if let Some(rest) = rest.strip_prefix('{') {
                let (labels, value) = rest.split_once("} ")?;
                (labels.to_string(), value)
            } else {
                (String::new(), rest.strip_prefix(' ')?)
            };
            Some((labels, value.trim().parse::<f64>().ok()? as i64))
        })
        .collect()
}

/// A series' labels, sorted, without `runtime` (which names the runtime that counted it).
pub fn label_set(labels: &str) -> Vec<String> {
    let mut set: Vec<String> = labels
        .split(',')
        .filter(|l| !l.is_empty() && !l.starts_with("runtime="))
        .map(str::to_string)
        .collect();
    set.sort();
    set
}
