#!/usr/bin/env bash
# Checks an Envoy config before it is started: `warden check-config` (every edge-warden plugin
# configuration, errors at the file's lines), then `envoy --mode validate` (the whole file, with
# the .wasm loaded and configured). Run from the repository root, as Envoy's relative paths
# (the .wasm, certs/) expect.
# Usage: scripts/validate.sh [ENVOY_CONFIG]   (default envoy/envoy.yaml; `make validate CONFIG=…`)
set -euo pipefail
cd "$(dirname "$0")/.."
config="${1:-envoy/envoy.yaml}"
warden="${WARDEN:-target/release/warden}"
envoy="${ENVOY:-.venv/bin/envoy}"

source scripts/dev-secret.sh

echo "== warden check-config $config"
"$warden" check-config "$config"
echo "== envoy --mode validate -c $config"
checked="$config"
container_wasm=/etc/envoy/edge_warden.wasm
if grep -q "filename: $container_wasm" "$config" && [[ ! -e $container_wasm ]]; then
  # envoy-fleet.yaml names the .wasm where the compose file mounts it; check with the local build.
  checked=$(mktemp --suffix=.yaml)
  trap 'rm -f "$checked"' EXIT
  sed "s|filename: $container_wasm|filename: target/wasm32-wasip1/release/edge_warden.wasm|" "$config" >"$checked"
  echo "($config loads $container_wasm, the container's path: validating with target/wasm32-wasip1/release/edge_warden.wasm instead.)"
fi
if ! log=$("$envoy" --mode validate --disable-hot-restart -l "${ENVOY_LOG_LEVEL:-warning}" -c "$checked" 2>&1); then
  echo "$log"
  echo "envoy refused $config (its messages are above)." >&2
  exit 1
fi
echo "$log" | tail -n 1
echo "$config is valid."
