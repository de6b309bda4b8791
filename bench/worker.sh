#!/usr/bin/env bash
# Worker benchmark: warm invocations of `hello` straight on ol-worker (wrk:
# throughput, p50, p99) and cold starts (a new sandbox per call: p50, p99).
#   bench/worker.sh [seconds] [connections]
# Prints a Markdown table; nothing here asserts: benchmarks measure.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
CONNS=${2:-8}
COLD_N=${COLD_N:-60}
scripts/setup.sh
cargo build --release --locked -p workers --bin ol-worker >/dev/null 2>&1 || cargo build --release --locked -p workers --bin ol-worker

tmp=$(mktemp -d)
chmod 755 "$tmp"   # sandbox users must reach their code below it
cleanup() { [ -n "${wpid:-}" ] && kill "$wpid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
mkdir -p "$tmp/registry"
cp -r examples/functions/hello "$tmp/registry/hello"
for i in $(seq 1 "$COLD_N"); do cp -r examples/functions/hello "$tmp/registry/cold$i"; done
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$tmp/worker.toml" <<TOML
[instances]
max_per_function = $CONNS
pause_after_ms = 60000
evict_after_ms = 600000
memory_budget_mb = 65536
[zygotes]
enabled = false   # cold starts here are fresh processes; bench/zygote.sh has the forks
TOML
target/release/ol-worker --config "$tmp/worker.toml" --listen "127.0.0.1:$port" \
  --registry "$tmp/registry" --work-dir "$tmp/work" 2>"$tmp/worker.log" &
wpid=$!
for _ in $(seq 100); do curl -sf "127.0.0.1:$port/status" >/dev/null && break; sleep 0.05; done

# Warm: start the instances first, then measure.
wrk -t2 -c"$CONNS" -d2s "http://127.0.0.1:$port/run/hello" >/dev/null
wrk -t2 -c"$CONNS" -d"${SECS}s" --latency "http://127.0.0.1:$port/run/hello" >"$tmp/wrk.txt"
rps=$(awk '/Requests\/sec/ {print $2}' "$tmp/wrk.txt")
p50=$(awk '$1=="50%" {print $2}' "$tmp/wrk.txt")
p99=$(awk '$1=="99%" {print $2}' "$tmp/wrk.txt")
errs=$(awk '/Non-2xx|Socket errors/ {print}' "$tmp/wrk.txt")

# Cold: each cold$i is a function never run before, so every call creates
# a sandbox (and unpacks its code). Client-side latency and the worker's
# own sandbox-create figure from x-ol-timing.
if python3 - "$port" "$COLD_N" >"$tmp/cold.txt" <<'PY'
import sys, time, urllib.request
port, n = sys.argv[1], int(sys.argv[2])
total, create = [], []
for i in range(1, n + 1):
    t = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/run/cold{i}", data=b"{}")) as r:
        r.read()
        timing = dict(kv.split("=") for kv in r.headers["x-ol-timing"].split(";"))
    total.append((time.perf_counter() - t) * 1000)
    create.append(float(timing["create"]))
def pct(xs, p):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]
print(f"{pct(total,50):.1f} {pct(total,99):.1f} {pct(create,50):.1f} {pct(create,99):.1f}")
PY
then :; else echo "cold-start run failed; worker log:" >&2; tail -20 "$tmp/worker.log" >&2; exit 1; fi
read -r c50 c99 k50 k99 <"$tmp/cold.txt"
isolation=$(grep -o 'process sandboxes: [^"]*' "$tmp/worker.log" | head -1 | sed 's/\x1b\[[0-9;]*m//g')

echo "| measure | value |"
echo "|---|---|"
echo "| warm hello, wrk ${CONNS} connections ${SECS}s | ${rps} calls/s |"
echo "| warm p50 / p99 (client) | ${p50} / ${p99} |"
echo "| cold start p50 / p99 (client, new sandbox + code unpack) | ${c50} ms / ${c99} ms |"
echo "| cold start p50 / p99 (worker's sandbox-create) | ${k50} ms / ${k99} ms |"
[ -n "$errs" ] && echo "| wrk errors | ${errs} |"
echo
echo "isolation: ${isolation:-unknown}"
