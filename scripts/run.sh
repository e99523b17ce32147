#!/usr/bin/env bash
# Starts the demo upstream and Envoy with edge-warden (envoy/envoy.yaml); Ctrl-C stops both.
# Usage: scripts/run.sh [ENVOY_CONFIG]   (default envoy/envoy.yaml)
set -euo pipefail
cd "$(dirname "$0")/.."
config="${1:-envoy/envoy.yaml}"

source scripts/dev-secret.sh

if [[ -n "${WORKERS_ORIGIN:-}" ]]; then
  echo "CORS: allowing https://*.workers.dev and WORKERS_ORIGIN=${WORKERS_ORIGIN}."
fi

pids=()
cleanup() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

./target/release/demo-upstream --listen 127.0.0.1:8080 &
pids+=($!)

if [[ "$config" == *tls* ]]; then
  echo "edge-warden: Envoy on https://localhost:10443 (CA: certs/ca.pem), http://127.0.0.1:10080 redirects; admin http://127.0.0.1:9901. Ctrl-C stops everything."
else
  echo "edge-warden: Envoy on http://127.0.0.1:10000 (admin http://127.0.0.1:9901); Ctrl-C stops everything."
fi
# The native runtime (envoy-native.yaml) loads target/native/libedge_warden.so.
export ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$PWD/target/native"
.venv/bin/envoy -c "$config" --concurrency 2 --disable-hot-restart -l "${ENVOY_LOG_LEVEL:-info}" &
pids+=($!)
wait -n "${pids[@]}"
