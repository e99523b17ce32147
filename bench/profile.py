#!/usr/bin/env python3
"""Prices the host calls edge-warden makes: the do-nothing filter repeats one kind of call N
times per request, and the CPU per request is compared with the filter doing nothing.
Usage: .venv/bin/python bench/profile.py   (after `make bench` built everything).

With --perf SCENARIO [SECONDS]: samples Envoy with perf under the bench's signed load and prints
the top symbols by self time, and each binary's share. SCENARIO: bare, noop_wasm, edge_warden
(wasm), noop_native, edge_warden_native. target/native/libedge_warden.so is stripped (only its
exported hooks have names); for symbols inside it, point PROFILE_SO at an unstripped build:
  CARGO_PROFILE_NATIVE_STRIP=false cargo build --profile native --lib --features native \
      --target-dir /tmp/ew-prof
  PROFILE_SO=/tmp/ew-prof/native/libedge_warden.so .venv/bin/python bench/profile.py --perf edge_warden_native
"""
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as b  # noqa: E402

REPEAT = 10
CALLS = ["request_headers", "source_address", "set_request_headers", "response_headers",
         "set_response_headers", "shared_data", "time"]


def perf(scenario, seconds=10, top=30):
    native_so = Path(os.environ.get("PROFILE_SO", b.NATIVE)).resolve()
    scenarios = {
        "bare": lambda up: b.start_envoy([], up),
        "noop_wasm": lambda up: b.start_envoy([b.wasm_filter(b.NOOP, {})], up),
        "edge_warden": lambda up: b.start_envoy([b.wasm_filter(b.WASM, b.plugin_config())], up),
        "noop_native": lambda up: b.start_envoy([b.native_module(b.NOOP_NATIVE)], up,
                                                module_dir=b.NOOP_NATIVE.parent),
        "edge_warden_native": lambda up: b.start_envoy([b.native_module(native_so, b.plugin_config())], up,
                                                       module_dir=native_so.parent),
    }
    if scenario not in scenarios:
        sys.exit(f"unknown scenario {scenario!r}: one of {', '.join(scenarios)}")
    for needed in (b.ENVOY, b.UPSTREAM, b.WASM, b.NOOP, b.NOOP_NATIVE, native_so):
        if not needed.is_file():
            sys.exit(f"missing {needed}: build it first (`make bench` builds everything)")
    up = b.free_port()
    upstream = b.Server([str(b.UPSTREAM), "--listen", f"127.0.0.1:{up}"], up, b.LOAD_CPU)
    body = b'{"order": "' + b"x" * 1011 + b'"}'
    path = Path(b.BUSY) / "body.json"
    path.write_bytes(body)
    server = scenarios[scenario](up)
    b.check_passes(scenario, server, body)
    b.measure(server, path, body, 1, headers=b.CLIENT_HEADERS)
    data = Path(b.BUSY) / "perf.data"
    recorder = subprocess.Popen(["perf", "record", "-F", "999", "-p", str(server.proc.pid), "-o", str(data)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = b.measure(server, path, body, seconds, headers=b.CLIENT_HEADERS)
    recorder.send_signal(signal.SIGINT)
    recorder.wait(30)
    server.stop()
    upstream.stop()
    print(f"{scenario}: {r['rps']:.0f} req/s, {r['cpu_us_per_req']:.1f} µs Envoy CPU per request, "
          f"{r['non_2xx']} non-2xx")
    report = ["perf", "report", "-i", str(data), "--stdio", "--no-children", "--percent-limit", "0.3"]
    views = [("binary", ["--sort", "dso"], 12), ("symbol", ["--sort", "dso,sym"], top)]
    if scenario.endswith("_native"):
        module = native_so.name if scenario == "edge_warden_native" else b.NOOP_NATIVE.name
        views.append((f"symbol inside {module} (% of all Envoy samples)",
                      ["--sort", "sym", "--dsos", module, "--percent-limit", "0.05"], top))
    for title, args, limit in views:
        out = subprocess.run(report + args, capture_output=True, text=True).stdout
        rows = [l for l in out.splitlines() if l.strip() and not l.startswith("#")]
        print(f"\nself time by {title}:")
        print("\n".join(rows[:limit]))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--perf":
        if len(sys.argv) < 3:
            sys.exit(__doc__)
        return perf(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 10)
    up = b.free_port()
    upstream = b.Server([str(b.UPSTREAM), "--listen", f"127.0.0.1:{up}"], up, b.LOAD_CPU)
    body = b'{"order": "' + b"x" * 1011 + b'"}'
    path = Path(b.BUSY) / "body.json"
    path.write_bytes(body)
    variants = {"none": []} | {c: [c] * REPEAT for c in CALLS}
    cpu = {k: [] for k in variants}
    for _ in range(3):
        for name, calls in variants.items():
            server = b.start_envoy([b.wasm_filter(b.NOOP, " ".join(calls))], up)
            b.measure(server, path, body, 1, headers=b.CLIENT_HEADERS)
            cpu[name].append(b.measure(server, path, body, 3, headers=b.CLIENT_HEADERS)["cpu_us_per_req"])
            server.stop()
    upstream.stop()
    base = statistics.median(cpu["none"])
    print(f"do-nothing filter: {base:.1f} µs Envoy CPU per request")
    for name in CALLS:
        each = (statistics.median(cpu[name]) - base) / REPEAT
        print(f"{name:22s} {each:6.1f} µs per call")


if __name__ == "__main__":
    main()
