#!/usr/bin/env bash
# A local fleet sharing replay claims and lockouts: Redis (127.0.0.1:6379, in memory only),
# edge-warden-state (127.0.0.1:50051), the demo upstream (127.0.0.1:8080) and two Envoys with
# edge-warden (envoy/envoy-fleet-local.yaml on 10000, admin 9901; a copy on 10001, admin 9902).
# A request accepted by one Envoy is refused by the other when replayed. Ctrl-C stops everything.
# Usage: scripts/run-fleet.sh   (`make run-fleet` builds and installs what it needs first)
set -euo pipefail
cd "$(dirname "$0")/.."
config=envoy/envoy-fleet-local.yaml
state=target/release/edge-warden-state
wasm=target/wasm32-wasip1/release/edge_warden.wasm

missing=()
command -v redis-server >/dev/null || missing+=("redis-server (make redis-deps)")
[[ -x $state ]] || missing+=("$state (make state)")
[[ -x target/release/demo-upstream && -x target/release/warden ]] || missing+=("target/release/demo-upstream, warden (make cli)")
[[ -f $wasm ]] || missing+=("$wasm (make wasm)")
[[ -x .venv/bin/envoy ]] || missing+=(".venv/bin/envoy (make envoy)")
if (( ${#missing[@]} )); then
  printf 'run-fleet: missing %s\n' "${missing[@]}" >&2
  echo "run-fleet: \`make run-fleet\` builds and installs all of it." >&2
  exit 1
fi

# Refuse to start on a port something else holds (a system Redis on 6379, a `make run`).
for port in 6379 50051 8080 10000 10001 9901 9902; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "run-fleet: 127.0.0.1:$port is already in use; stop what listens there first." >&2
    exit 1
  fi
done

source scripts/dev-secret.sh

tmp=$(mktemp -d)
pids=()
cleanup() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup INT TERM EXIT

# Waits until something accepts connections on 127.0.0.1:PORT, or the process PID is gone.
await_port() {
  local port=$1 pid=$2 name=$3
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "run-fleet: $name exited before listening on $port (its messages are above)." >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "run-fleet: $name is not listening on $port after 10 s." >&2
  exit 1
}

# Redis for this run only: no snapshots, no append-only file, its working directory in $tmp.
redis-server --bind 127.0.0.1 --port 6379 --save '' --appendonly no --dir "$tmp" \
  --loglevel warning &
pids+=($!)
await_port 6379 $! redis-server

"$state" --listen 127.0.0.1:50051 --redis redis://127.0.0.1:6379 &
pids+=($!)
await_port 50051 $! edge-warden-state

./target/release/demo-upstream --listen 127.0.0.1:8080 &
pids+=($!)

# The second Envoy: the same config on the next ports (listener 10001, admin 9902).
sed -e 's/port_value: 10000 /port_value: 10001 /' -e 's/port_value: 9901 /port_value: 9902 /' \
  "$config" >"$tmp/envoy-fleet-local-b.yaml"

# Every line of each Envoy (its log and the access log) starts with its listener port.
start_envoy() {
  local file=$1 port=$2
  .venv/bin/envoy -c "$file" --concurrency 2 --disable-hot-restart -l "${ENVOY_LOG_LEVEL:-info}" \
    > >(sed -u "s/^/[:$port] /") 2>&1 &
  pids+=($!)
  await_port "$port" $! "Envoy :$port"
}
start_envoy "$config" 10000
start_envoy "$tmp/envoy-fleet-local-b.yaml" 10001

if [[ $HMAC_SHARED_SECRET == "$DEV_SECRET" ]]; then
  secret_line="export HMAC_SHARED_SECRET=$DEV_SECRET"
else
  secret_line="export HMAC_SHARED_SECRET=...   # the same secret as this terminal's"
fi
cat <<MSG

edge-warden fleet: Envoy A http://127.0.0.1:10000 (admin :9901), Envoy B http://127.0.0.1:10001
(admin :9902), sharing replay claims and lockouts through edge-warden-state on 127.0.0.1:50051
(Redis 127.0.0.1:6379). Ctrl-C stops everything.

Watch a replay to the other instance being refused, in another terminal:

  $secret_line
  target/release/warden sign -d '{"item": 42}' > /tmp/signed-headers.txt
  curl -si -H @/tmp/signed-headers.txt -H 'Content-Type: application/json' -d '{"item": 42}' http://127.0.0.1:10000/orders
  curl -si -H @/tmp/signed-headers.txt -H 'Content-Type: application/json' -d '{"item": 42}' http://127.0.0.1:10001/orders

The first is accepted by A (200, the demo upstream's echo); the second sends the very same signed
request to B, which has never seen it, and gets 401 nonce_replayed: A claimed the nonce in the
shared state. Sign again for a fresh nonce.

MSG
wait -n "${pids[@]}"
