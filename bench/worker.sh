#!/usr/bin/env bash
# Worker benchmark: warm invocations of `hello` straight on ol-worker (wrk:
# throughput, p50, p99) and cold starts (a new sandbox per call: p50, p99),
# as fresh processes and as zygote forks, each with and without the mount
# namespace (a root worker's default) in the same run.
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
wpid=
trap cleanup EXIT
mkdir -p "$tmp/registry"
cp -r examples/functions/hello "$tmp/registry/hello"
for i in $(seq 1 "$COLD_N"); do cp -r examples/functions/hello "$tmp/registry/cold$i"; done
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_worker NAME TOML: a worker with its own work dir; sets $port, $wpid.
start_worker() {
  cat > "$tmp/$1.toml" <<TOML
[instances]
max_per_function = $CONNS
pause_after_ms = 60000
evict_after_ms = 600000
memory_budget_mb = 65536
$2
TOML
  port=$(free_port)
  target/release/ol-worker --config "$tmp/$1.toml" --listen "127.0.0.1:$port" \
    --registry "$tmp/registry" --work-dir "$tmp/work-$1" 2>"$tmp/$1.log" &
  wpid=$!
  for _ in $(seq 200); do curl -sf "127.0.0.1:$port/status" >/dev/null && break; sleep 0.05; done
}
stop_worker() { kill "$wpid" 2>/dev/null; wait "$wpid" 2>/dev/null || true; wpid=; }

# cold_series NAME: each cold$i is a function never run before, so every
# call creates a sandbox (and unpacks its code). Prints client-side p50/p99
# and the worker's own sandbox-create p50/p99 (x-ol-timing), and the start
# kinds seen.
cold_series() {
  local wait_zygote=0
  case $1 in fork-*) wait_zygote=1 ;; esac
  if python3 - "$port" "$COLD_N" "$wait_zygote" >"$tmp/cold-$1.txt" <<'PY'
import json, sys, time, urllib.request
port, n, wait_zygote = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
# Zygotes on: wait for the root zygote, so that starts are forks.
deadline = time.time() + 30
while wait_zygote and time.time() < deadline:
    stats = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/stats"))
    if stats.get("zygotes.live", 0) >= 1:
        break
    time.sleep(0.1)
total, create, starts = [], [], set()
for i in range(1, n + 1):
    t = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/run/cold{i}", data=b"{}")) as r:
        r.read()
        timing = dict(kv.split("=") for kv in r.headers["x-ol-timing"].split(";"))
    total.append((time.perf_counter() - t) * 1000)
    create.append(float(timing["create"]))
    starts.add(timing["start"])
def pct(xs, p):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]
print(f"{pct(total,50):.1f} {pct(total,99):.1f} {pct(create,50):.1f} {pct(create,99):.1f} {','.join(sorted(starts))}")
PY
  then :; else echo "cold-start run $1 failed; worker log:" >&2; tail -20 "$tmp/$1.log" >&2; exit 1; fi
}

# Warm, in the default isolation.
start_worker warm "[zygotes]
enabled = false"
isolation=$(grep -o 'process sandboxes: [^"]*' "$tmp/warm.log" | head -1 | sed 's/\x1b\[[0-9;]*m//g; s/ listen=.*//')
wrk -t2 -c"$CONNS" -d2s "http://127.0.0.1:$port/run/hello" >/dev/null
wrk -t2 -c"$CONNS" -d"${SECS}s" --latency "http://127.0.0.1:$port/run/hello" >"$tmp/wrk.txt"
stop_worker
rps=$(awk '/Requests\/sec/ {print $2}' "$tmp/wrk.txt")
p50=$(awk '$1=="50%" {print $2}' "$tmp/wrk.txt")
p99=$(awk '$1=="99%" {print $2}' "$tmp/wrk.txt")
errs=$(awk '/Non-2xx|Socket errors/ {print}' "$tmp/wrk.txt")

# Cold: fresh processes and zygote forks, each with and without the mount
# namespace (instances.mount_namespace; only a root worker has one), in
# alternating order within one run.
for run in fresh-ns fresh-nons fork-ns fork-nons; do
  case $run in
    fresh-*) z="[zygotes]
enabled = false" ;;
    fork-*) z="[zygotes]
enabled = true" ;;
  esac
  case $run in
    *-nons) ns="mount_namespace = false" ;;
    *) ns="" ;;
  esac
  # mount_namespace belongs to [instances], which start_worker opens first.
  start_worker "$run" "$ns
$z"
  cold_series "$run"
  stop_worker
  rm -rf "$tmp/work-$run"
done

echo "| measure | value |"
echo "|---|---|"
echo "| warm hello, wrk ${CONNS} connections ${SECS}s | ${rps} calls/s |"
echo "| warm p50 / p99 (client) | ${p50} / ${p99} |"
for run in fresh-ns fresh-nons fork-ns fork-nons; do
  read -r c50 c99 k50 k99 kinds <"$tmp/cold-$run.txt"
  case $run in
    fresh-ns) what="fresh process, own mount namespace" ;;
    fresh-nons) what="fresh process, no mount namespace" ;;
    fork-ns) what="zygote fork, own mount namespace" ;;
    fork-nons) what="zygote fork, no mount namespace" ;;
  esac
  echo "| cold start, ${what} (start=${kinds}): client p50 / p99 | ${c50} ms / ${c99} ms |"
  echo "| cold start, ${what}: worker's sandbox-create p50 / p99 | ${k50} ms / ${k99} ms |"
done
[ -n "$errs" ] && echo "| wrk errors | ${errs} |"
echo
echo "isolation (warm run): ${isolation:-unknown}"
