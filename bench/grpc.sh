#!/usr/bin/env bash
# gRPC benchmark with the tonic load driver (workers/examples/grpc_load.rs),
# in one run on one ol-worker: helloworld.Greeter/SayHello (the `greeter`
# function) straight to the worker and through ol-proxy (h2c both sides,
# name inspection of the service, round-robin; then also db-affinity on
# HelloRequest.name, a key read from the message), ol.Lambda/Invoke of
# `hello`, and, as the peer, `hello` over HTTP/1.1 with wrk.
#   bench/grpc.sh [seconds] [concurrency]
# Prints a Markdown table; nothing here asserts: benchmarks measure.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
CONC=${2:-8}
. bench/lib.sh
bench_init bench-grpc
need_tools curl python3
cargo build --release -p workers --bin ol-worker --example grpc_load
cargo build --release -p proxy --bin ol-proxy
mkdir -p "$TMP/registry"
cp -r examples/functions/hello examples/functions/greeter "$TMP/registry/"
port=$(free_port)
cat > "$TMP/worker.toml" <<TOML
[instances]
max_per_function = $CONC
pause_after_ms = 60000
evict_after_ms = 600000
memory_budget_mb = 65536
TOML
target/release/ol-worker --config "$TMP/worker.toml" --listen "127.0.0.1:$port" \
  --registry "$TMP/registry" --work-dir "$TMP/work" 2>"$TMP/worker.log" &
PIDS+=($!)
wait_port "$port" /status "$TMP/worker.log"

# proxy NAME ROUTING: an ol-proxy (one thread, h2c to the worker) with this
# [routing] section; sets PPORT_<NAME>.
proxy() {
  local pp pa
  pp=$(free_port); pa=$(free_port)
  cat > "$TMP/proxy-$1.toml" <<TOML
listen = "127.0.0.1:$pp"
threads = 1
[admin]
listen = "127.0.0.1:$pa"
[workers]
static = ["127.0.0.1:$port"]
h2c = true
$2
TOML
  RUST_LOG=warn target/release/ol-proxy --config "$TMP/proxy-$1.toml" 2>"$TMP/proxy-$1.log" &
  PIDS+=($!)
  wait_port "$pa" /admin/status "$TMP/proxy-$1.log"
  printf -v "PPORT_$1" '%s' "$pp"
}
# Name inspection only (service -> function), round-robin.
proxy name '[routing]
default_policy = "round-robin"'
# Name and content inspection: db-affinity on a field of the request
# message, by name (resolved with the descriptors the worker serves).
proxy content '[routing]
default_policy = "round-robin"
[[routing.policies]]
name = "db"
kind = "db-affinity"
key = { protobuf = "helloworld.HelloRequest.name" }
[[routing.routes]]
functions = ["greeter"]
policy = "db"'
sleep 1   # first health checks
load() { target/release/examples/grpc_load --target "http://127.0.0.1:$port" --secs "$SECS" "$@"; }
via() { target/release/examples/grpc_load --target "http://127.0.0.1:$1" --secs "$SECS" --label "$2" --call say-hello --connections 1 --concurrency "$CONC"; }
echo "| target | call | connections | in flight | calls/s | p50 ms | p99 ms | max ms | errors |"
echo "|---|---|---|---|---|---|---|---|---|"
load --call say-hello --connections 1 --concurrency "$CONC"
load --call say-hello --connections "$CONC" --concurrency "$CONC"
load --call invoke --connections 1 --concurrency "$CONC"
via "$PPORT_name" "ol-proxy (1 thread, name inspection) -> worker"
via "$PPORT_content" "ol-proxy (1 thread, + db-affinity on HelloRequest.name) -> worker"
if command -v wrk >/dev/null; then
  wrk -t2 -c"$CONC" -d2s "http://127.0.0.1:$port/run/hello" >/dev/null
  wrk -t2 -c"$CONC" -d"${SECS}s" --latency "http://127.0.0.1:$port/run/hello" >"$TMP/wrk.txt"
  rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$TMP/wrk.txt")
  p50=$(awk '$1=="50%" {print $2}' "$TMP/wrk.txt")
  p99=$(awk '$1=="99%" {print $2}' "$TMP/wrk.txt")
  echo "| worker | HTTP/1.1 POST /run/hello (wrk) | $CONC | $CONC | $rps | $p50 | $p99 | | |"
fi
