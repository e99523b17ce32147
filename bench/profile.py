#!/usr/bin/env python3
"""Prices the host calls edge-warden makes: the do-nothing filter repeats one kind of call N
times per request, and the CPU per request is compared with the filter doing nothing.
Usage: .venv/bin/python bench/profile.py   (after `make bench` built everything)."""
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as b  # noqa: E402

REPEAT = 10
CALLS = ["request_headers", "source_address", "set_request_headers", "response_headers",
         "set_response_headers", "shared_data", "time"]


def main():
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
