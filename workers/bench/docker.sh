#!/usr/bin/env bash
# Docker sandboxes beside process sandboxes, in one run on one machine:
#   cold start   a function never run before: a new sandbox (container);
#                `docker+pool` hands it a pre-started container instead
#                (cold calls 0.6 s apart, so that the pool of 2 refills)
#   unpause      an idle instance the reaper has paused, resumed for a call
#   warm         wrk on `hello` against running instances
# For each backend: client-side p50/p99 and the worker's own figures from
# x-ol-timing (create=, unpause=). Prints a Markdown table and the image
# size. Measures only; asserts nothing.
#   workers/bench/docker.sh [warm seconds] [connections]
#   COLD_N=40 UNPAUSE_N=40 workers/bench/docker.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-10}
CONNS=${2:-8}
COLD_N=${COLD_N:-40}
UNPAUSE_N=${UNPAUSE_N:-40}
scripts/setup.sh
docker version >/dev/null 2>&1 || { echo "docker.sh: no Docker engine here" >&2; exit 1; }
image=$(workers/image/build.sh)
cargo build --release --locked -p workers --bin ol-worker >/dev/null 2>&1 ||
  cargo build --release --locked -p workers --bin ol-worker

tmp=$(mktemp -d)
chmod 755 "$tmp" # sandbox users must reach their code below it
wpid=""
cleanup() {
  [ -n "$wpid" ] && kill "$wpid" 2>/dev/null && wait "$wpid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
mkdir -p "$tmp/registry"
for f in hello; do cp -r "examples/functions/$f" "$tmp/registry/$f"; done
cp -r examples/functions/hello "$tmp/registry/resume"
for i in $(seq 1 "$COLD_N"); do cp -r examples/functions/hello "$tmp/registry/cold$i"; done
measure() { # $1 = label, $2 = sandbox kind, $3 = docker pool size, $4 = gap between cold calls (s)
  local name=$1 kind=$2 port
  cat >"$tmp/$name.toml" <<TOML
[instances]
max_per_function = $CONNS
pause_after_ms = 100
evict_after_ms = 600000
memory_budget_mb = 1048576
[docker]
pool_size = $3
TOML
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  target/release/ol-worker --config "$tmp/$name.toml" --listen "127.0.0.1:$port" \
    --registry "$tmp/registry" --work-dir "$tmp/work-$name" --sandbox "$kind" 2>"$tmp/$name.log" &
  wpid=$!
  for _ in $(seq 200); do curl -sf "127.0.0.1:$port/status" >/dev/null && break; sleep 0.05; done
  sleep 1 # a pool fills
  python3 - "$port" "$COLD_N" "$UNPAUSE_N" "$4" >"$tmp/$name.lat" <<'PY' || { tail -20 "$tmp/$name.log" >&2; exit 1; }
import sys, time, urllib.request
port, cold_n, unpause_n, gap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
def call(fn):
    t = time.perf_counter()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/run/{fn}", data=b"{}")
    with urllib.request.urlopen(req) as r:
        r.read()
        timing = dict(kv.split("=") for kv in r.headers["x-ol-timing"].split(";"))
    return (time.perf_counter() - t) * 1000, timing
def pct(xs, p):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]
cold, create = [], []
for i in range(1, cold_n + 1):
    time.sleep(gap)
    ms, t = call(f"cold{i}")
    assert t["start"] == "cold", t
    cold.append(ms); create.append(float(t["create"]))
call("resume")
resumed, unpause = [], []
while len(resumed) < unpause_n:
    time.sleep(0.3)  # the reaper pauses it after 100 ms idle
    ms, t = call("resume")
    if t["start"] != "unpaused":
        continue
    resumed.append(ms); unpause.append(float(t["unpause"]))
print(" ".join(f"{x:.1f}" for x in (
    pct(cold, 50), pct(cold, 99), pct(create, 50), pct(create, 99),
    pct(resumed, 50), pct(resumed, 99), pct(unpause, 50), pct(unpause, 99))))
PY
  wrk -t2 -c"$CONNS" -d2s "http://127.0.0.1:$port/run/hello" >/dev/null
  wrk -t2 -c"$CONNS" -d"${SECS}s" --latency "http://127.0.0.1:$port/run/hello" >"$tmp/$name.wrk"
  kill "$wpid"
  wait "$wpid" || true
  wpid=""
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' "$tmp/$name.wrk")
  p50=$(awk '$1=="50%" {print $2}' "$tmp/$name.wrk")
  p99=$(awk '$1=="99%" {print $2}' "$tmp/$name.wrk")
  echo "$name $(cat "$tmp/$name.lat") $rps $p50 $p99"
}

measure process process 0 0 >"$tmp/results"
measure docker docker 0 0 >>"$tmp/results"
measure docker+pool docker 2 0.6 >>"$tmp/results"
left=0
for name in docker docker+pool; do
  n=$(docker ps -aq --filter "label=ol-edge.worker=$(cd "$tmp/work-$name" && pwd -P)" | wc -l)
  left=$((left + n))
done
size=$(docker image inspect -f '{{.Size}}' "$image")

echo "| backend | cold start p50 / p99 (client) | sandbox create p50 / p99 (worker) | unpause + call p50 / p99 (client) | unpause p50 / p99 (worker) | warm calls/s (wrk, $CONNS conns, ${SECS}s) | warm p50 / p99 |"
echo "|---|---|---|---|---|---|---|"
while read -r kind c50 c99 k50 k99 r50 r99 u50 u99 rps w50 w99; do
  echo "| $kind | $c50 / $c99 ms | $k50 / $k99 ms | $r50 / $r99 ms | $u50 / $u99 ms | $rps | $w50 / $w99 |"
done <"$tmp/results"
echo
echo "image: $image, $((size / 1000 / 1000)) MB ($((size / 1024 / 1024)) MiB); cold starts: $COLD_N, unpauses: $UNPAUSE_N; containers left after SIGTERM: $left"
