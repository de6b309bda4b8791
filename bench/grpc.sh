#!/usr/bin/env bash
# gRPC benchmark with the tonic load driver (workers/examples/grpc_load.rs),
# in one run on one ol-worker: helloworld.Greeter/SayHello (the `greeter`
# function) straight to the worker and through ol-proxy (h2c both sides,
# name inspection of the service, round-robin), ol.Lambda/Invoke of
# `hello`, and, as the peer, `hello` over HTTP/1.1 with wrk.
#   bench/grpc.sh [seconds] [concurrency]
# Prints a Markdown table; nothing here asserts: benchmarks measure.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
CONC=${2:-8}
cargo build --release -p workers --bin ol-worker --example grpc_load
cargo build --release -p proxy --bin ol-proxy

tmp=$(mktemp -d)
chmod 755 "$tmp"   # sandbox users must reach their code below it
cleanup() {
  [ -n "${wpid:-}" ] && kill "$wpid" 2>/dev/null
  [ -n "${ppid_:-}" ] && kill "$ppid_" 2>/dev/null
  wait 2>/dev/null; rm -rf "$tmp"
}
trap cleanup EXIT
mkdir -p "$tmp/registry"
cp -r examples/functions/hello examples/functions/greeter "$tmp/registry/"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$tmp/worker.toml" <<TOML
[instances]
max_per_function = $CONC
pause_after_ms = 60000
evict_after_ms = 600000
memory_budget_mb = 65536
TOML
target/release/ol-worker --config "$tmp/worker.toml" --listen "127.0.0.1:$port" \
  --registry "$tmp/registry" --work-dir "$tmp/work" 2>"$tmp/worker.log" &
wpid=$!
for _ in $(seq 100); do curl -sf "127.0.0.1:$port/status" >/dev/null && break; sleep 0.05; done
free() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pport=$(free); padmin=$(free)
cat > "$tmp/proxy.toml" <<TOML
listen = "127.0.0.1:$pport"
threads = 1
[admin]
listen = "127.0.0.1:$padmin"
[workers]
static = ["127.0.0.1:$port"]
h2c = true
[routing]
default_policy = "round-robin"
TOML
RUST_LOG=warn target/release/ol-proxy --config "$tmp/proxy.toml" 2>"$tmp/proxy.log" &
ppid_=$!
for _ in $(seq 100); do curl -sf "127.0.0.1:$padmin/admin/status" >/dev/null && break; sleep 0.05; done
sleep 1   # first health check

load() { target/release/examples/grpc_load --target "http://127.0.0.1:$port" --secs "$SECS" "$@"; }
echo "| target | call | connections | in flight | calls/s | p50 ms | p99 ms | max ms | errors |"
echo "|---|---|---|---|---|---|---|---|---|"
load --call say-hello --connections 1 --concurrency "$CONC"
load --call say-hello --connections "$CONC" --concurrency "$CONC"
load --call invoke --connections 1 --concurrency "$CONC"
target/release/examples/grpc_load --target "http://127.0.0.1:$pport" --secs "$SECS" \
  --label "ol-proxy (1 thread) -> worker" --call say-hello --connections 1 --concurrency "$CONC"
if command -v wrk >/dev/null; then
  wrk -t2 -c"$CONC" -d2s "http://127.0.0.1:$port/run/hello" >/dev/null
  wrk -t2 -c"$CONC" -d"${SECS}s" --latency "http://127.0.0.1:$port/run/hello" >"$tmp/wrk.txt"
  rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$tmp/wrk.txt")
  p50=$(awk '$1=="50%" {print $2}' "$tmp/wrk.txt")
  p99=$(awk '$1=="99%" {print $2}' "$tmp/wrk.txt")
  echo "| worker | HTTP/1.1 POST /run/hello (wrk) | $CONC | $CONC | $rps | $p50 | $p99 | | |"
fi
