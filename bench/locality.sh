#!/usr/bin/env bash
# Live cold-start rate with and without the import index, through ol-proxy
# (issue 8), with round-robin as the peer, in one run.
#
# WORKERS ol-workers (process sandbox) whose instance budget holds only a
# few functions each, FUNCTIONS copies of a function that sleeps SLEEP_MS,
# and bench/zipf_load.py driving CALLS calls (Zipf popularity, fixed seed,
# CONC at a time) through ol-proxy. Each configuration gets fresh workers
# and a fresh proxy; rounds are interleaved against drift on a shared
# machine:
#   round-robin     the peer: no locality at all
#   loc-noindex     code-locality, [code_store] warm_ms = 0 (index off)
#   loc-index       code-locality, warm_ms = 60000 (the default)
# Cold starts are counted from each response's x-ol-timing (start=cold).
#
#   bench/locality.sh   (env: ROUNDS=2 CALLS=1500 CONC=8 FUNCTIONS=24 WORKERS=4 SLOTS=8 SLEEP_MS=10)
# Needs python3 and curl (scripts/setup.sh). Prints a markdown table.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
ROUNDS=${ROUNDS:-2}
CALLS=${CALLS:-1500}
CONC=${CONC:-8}
FUNCTIONS=${FUNCTIONS:-24}
WORKERS=${WORKERS:-4}
SLEEP_MS=${SLEEP_MS:-10}
SLOTS=${SLOTS:-8}   # instances each worker's memory budget holds
. bench/lib.sh
bench_init bench-locality
need_tools curl python3

echo "bench: building release binaries" >&2
cargo build --release -q -p proxy -p workers
BIN="$ROOT/target/release"

mkdir -p "$TMP/store"
for i in $(seq 0 $((FUNCTIONS - 1))); do
  d="$TMP/store/$(printf 'fn%02d' "$i")"
  mkdir -p "$d"
  cp examples/functions/sleep/f.py "$d/f.py"
done
cat >"$TMP/worker.toml" <<EOF
[instances]
max_per_function = 4
pause_after_ms = 100
evict_after_ms = 3000
memory_budget_mb = $((SLOTS * 64))
[limits]
memory_mb = 64
EOF

# run NAME POLICY WARM_MS ROUND: fresh workers and proxy, one load run.
run() {
  local name=$1 policy=$2 warm=$3 round=$4 run_pids=() ports=() i p a out list
  for i in $(seq 1 "$WORKERS"); do
    ports+=("$(free_port)")
    "$BIN/ol-worker" --config "$TMP/worker.toml" --listen "127.0.0.1:${ports[-1]}" \
      --registry "$TMP/store" --sandbox process --work-dir "$TMP/w-$name-$round-$i" \
      >"$TMP/worker-$i.log" 2>&1 &
    run_pids+=($!)
  done
  for i in "${!ports[@]}"; do wait_port "${ports[$i]}" /status "$TMP/worker-$((i + 1)).log"; done
  p=$(free_port); a=$(free_port)
  list=$(printf '"127.0.0.1:%s",' "${ports[@]}")
  cat >"$TMP/olp-$name.toml" <<EOF
listen = "127.0.0.1:$p"
threads = 1
[admin]
listen = "127.0.0.1:$a"
[workers]
static = [${list%,}]
[health]
interval_ms = 500
[routing]
default_policy = "$policy"
[[routing.policies]]
name = "loc"
kind = "code-locality"
[code_store]
backing = "$TMP/store"
warm_ms = $warm
EOF
  RUST_LOG=warn "$BIN/ol-proxy" --config "$TMP/olp-$name.toml" 2>"$TMP/olp.log" &
  run_pids+=($!)
  wait_port "$a" /metrics "$TMP/olp.log"
  for _ in $(seq 1 100); do
    [ "$(curl -s "http://127.0.0.1:$a/metrics" | grep -c '^ol_proxy_worker_healthy{.*} 1')" = "$WORKERS" ] && break
    sleep 0.1
  done
  out=$(python3 bench/zipf_load.py "127.0.0.1:$p" "$FUNCTIONS" "$CALLS" "$CONC" 7 "{\"ms\": $SLEEP_MS}")
  kill "${run_pids[@]}" 2>/dev/null || true
  wait "${run_pids[@]}" 2>/dev/null || true
  echo "$name $out" >>"$TMP/results"
  echo "bench: round $round $name: $out" >&2
}

for r in $(seq 1 "$ROUNDS"); do
  run round-robin round-robin 60000 "$r"
  run loc-noindex loc 0 "$r"
  run loc-index loc 60000 "$r"
done

echo
echo "### Live: cold starts with and without the import index ($WORKERS workers, $FUNCTIONS functions, Zipf 1.1, $CALLS calls x $ROUNDS rounds, $CONC at a time)"
echo
python3 - "$TMP/results" <<'EOF'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    name, js = line.split(" ", 1)
    rows.setdefault(name, []).append(json.loads(js))
print("| configuration | calls | errors | cold starts | cold per round | calls/s |")
print("|---|---:|---:|---:|---|---:|")
for name in ["round-robin", "loc-noindex", "loc-index"]:
    rs = rows.get(name, [])
    calls = sum(r["calls"] for r in rs)
    cold = [r["starts"].get("cold", 0) + r["starts"].get("zygote", 0) for r in rs]
    errs = sum(r["errors"] for r in rs)
    secs = sum(r["seconds"] for r in rs)
    print(f"| {name} | {calls} | {errs} | {100 * sum(cold) / calls:.2f}% | {', '.join(map(str, cold))} | {calls / secs:.0f} |")
EOF
