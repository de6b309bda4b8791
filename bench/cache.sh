#!/usr/bin/env bash
# Result-cache hit versus a warm call, both through ol-proxy, in one run.
#
# One ol-worker (process sandbox) whose --registry is the proxy
# (http://<proxy>/registry); the proxy's [code_store] is a temporary
# directory with two copies of one function: `hello_cached` (ol.yaml
# `cache: {ttl_ms: 600000, methods: [POST]}`) and `hello` (no cache
# section). wrk POSTs the same body to each; every `hello_cached` call
# after the first is a hit answered in request_filter, every `hello` call
# is a warm call on the worker. Each is measured with 1 connection
# (latency) and CONNS connections (throughput), DURATION seconds each.
#
# Needs wrk and curl (scripts/setup.sh). Prints a markdown table.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
DURATION=${DURATION:-8}
CONNS=${CONNS:-32}
. bench/lib.sh
bench_init bench-cache

need_tools wrk curl

echo "bench: building release binaries" >&2
cargo build --release -q -p proxy -p workers
BIN="$ROOT/target/release"

ticks() { read -r -a f < <(sed 's/^.*) //' "/proc/$1/stat"); echo $((f[11] + f[12])); }
CLK=$(getconf CLK_TCK)

mkdir -p "$TMP/store/hello" "$TMP/store/hello_cached" "$TMP/w"
for d in hello hello_cached; do
  cat >"$TMP/store/$d/f.py" <<'EOF'
def f(event):
    name = event.get("name", "world") if isinstance(event, dict) else "world"
    return f"Hello, {name}!"
EOF
done
echo "cache: {ttl_ms: 600000, methods: [POST]}" >"$TMP/store/hello_cached/ol.yaml"

P=$(free_port); A=$(free_port); W=$(free_port)
cat >"$TMP/olp.toml" <<EOF
listen = "127.0.0.1:$P"
threads = 1
[admin]
listen = "127.0.0.1:$A"
[workers]
static = ["127.0.0.1:$W"]
[health]
interval_ms = 1000
[code_store]
backing = "$TMP/store"
[result_cache]
settle_ms = 1
EOF
RUST_LOG=warn "$BIN/ol-proxy" --config "$TMP/olp.toml" 2>"$TMP/olp.log" & PIDS+=($!); OLP_PID=$!
wait_port "$A" /metrics "$TMP/olp.log"
"$BIN/ol-worker" --listen "127.0.0.1:$W" --registry "http://127.0.0.1:$P/registry" \
  --sandbox process --work-dir "$TMP/w" >"$TMP/worker.log" 2>&1 & PIDS+=($!)
wait_port "$W" /status "$TMP/worker.log"
for _ in $(seq 1 200); do
  curl -sf -o /dev/null -d '{"name":"bench"}' "http://127.0.0.1:$P/run/hello" && break
  sleep 0.05
done
curl -sf -o /dev/null -d '{"name":"bench"}' "http://127.0.0.1:$P/run/hello_cached"
curl -s -D - -o /dev/null -d '{"name":"bench"}' "http://127.0.0.1:$P/run/hello_cached" | grep -qi '^x-ol-cache: hit' \
  || { echo "bench: hello_cached is not a cache hit" >&2; cat "$TMP/olp.log" >&2; exit 1; }

cat >"$TMP/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '{"name": "bench"}'
wrk.headers["Content-Type"] = "application/json"
EOF

ROWS=()
measure() { # name conns url
  wrk -t1 -c"$2" -d1s -s "$TMP/post.lua" "$3" >/dev/null 2>&1 || true
  local t0 t1 out reqs rps p50 p99 cpu errs
  t0=$(ticks "$OLP_PID")
  out=$(wrk -t1 -c"$2" -d"${DURATION}s" --latency -s "$TMP/post.lua" "$3")
  t1=$(ticks "$OLP_PID")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errs=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
  [ -n "$errs" ] && echo "bench: $1: $errs" >&2
  cpu=$(awk -v d=$((t1 - t0)) -v n="$reqs" -v c="$CLK" 'BEGIN { printf "%.1f", d / c / n * 1e6 }')
  ROWS+=("| $1 | $2 | $rps | $p50 | $p99 | $cpu us |")
  echo "bench: $1 ($2 conns): $rps req/s, p50 $p50, p99 $p99, proxy CPU $cpu us/req" >&2
}

for c in 1 "$CONNS"; do
  measure "result-cache hit (hello_cached)" "$c" "http://127.0.0.1:$P/run/hello_cached"
  measure "warm call (hello, ol-worker)" "$c" "http://127.0.0.1:$P/run/hello"
done

echo
echo "### Result-cache hit vs warm call through ol-proxy (1 proxy thread, ${DURATION}s each)"
echo
echo "| call | connections | req/s | p50 | p99 | proxy CPU per request |"
echo "|---|---:|---:|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
echo
curl -s "http://127.0.0.1:$A/metrics" | grep -E '^ol_proxy_(result_cache|function_cache)_(hit_ratio|entries|bytes)' | sed 's/^/    /'
