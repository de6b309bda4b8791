#!/usr/bin/env bash
# Zygote benchmark: cold starts of a function that imports a heavy
# pure-Python package (examples/functions/symbolic: sympy), as a fresh
# process versus forked from a zygote that has imported it, in one run.
#   bench/zygote.sh [cold starts per mode]
# Each call goes to a function never run before (sym1, sym2, ...), so each
# is a cold start. The same for `hello` (no packages: the root zygote,
# which has imported only the runtime). Prints a Markdown table (client latency, and the
# worker's own sandbox-create time from x-ol-timing); asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-40}
scripts/setup.sh
cargo build --release --locked -p workers --bin ol-worker >/dev/null 2>&1 || cargo build --release --locked -p workers --bin ol-worker

tmp=$(mktemp -d)
chmod 755 "$tmp"   # sandbox users must reach their code below it
cleanup() { [ -n "${wpid:-}" ] && kill "$wpid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
mkdir -p "$tmp/registry"
for i in $(seq 1 "$N"); do
  cp -r examples/functions/symbolic "$tmp/registry/sym$i"
  cp -r examples/functions/hello "$tmp/registry/hello$i"
done
cp -r examples/functions/symbolic "$tmp/registry/warmup"

run() { # mode: fresh | zygote
  local mode=$1 enabled=false
  [ "$mode" = zygote ] && enabled=true
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat > "$tmp/$mode.toml" <<TOML
[instances]
pause_after_ms = 600000
evict_after_ms = 600000
memory_budget_mb = 1000000
[zygotes]
enabled = $enabled
preload = [["sympy==1.13.3", "mpmath==1.3.0"]]
TOML
  # One work dir for both runs: the package store is installed once.
  target/release/ol-worker --config "$tmp/$mode.toml" --listen "127.0.0.1:$port" \
    --registry "$tmp/registry" --work-dir "$tmp/work" 2>"$tmp/$mode.log" &
  wpid=$!
  for _ in $(seq 100); do curl -sf "127.0.0.1:$port/status" >/dev/null && break; sleep 0.05; done
  # Installs the packages (first run) and, with zygotes, waits for the
  # sympy zygote (root + sympy = 2 zygotes).
  curl -sf -d '{}' "127.0.0.1:$port/run/warmup" >/dev/null
  if [ "$mode" = zygote ]; then
    for _ in $(seq 600); do
      live=$(curl -sf "127.0.0.1:$port/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["zygotes.live"])')
      [ "$live" -ge 2 ] && break; sleep 0.1
    done
  fi
  for fn in sym hello; do
  python3 - "$port" "$N" "$mode" "$fn" >>"$tmp/results.txt" <<'PY'
import sys, time, urllib.request
port, n, mode, fn = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
body = b'{"expr": "x**2 - 1"}' if fn == "sym" else b'{}'
total, create, starts = [], [], set()
for i in range(1, n + 1):
    t = time.perf_counter()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/run/{fn}{i}", data=body)
    with urllib.request.urlopen(req) as r:
        r.read()
        timing = dict(kv.split("=") for kv in r.headers["x-ol-timing"].split(";"))
    total.append((time.perf_counter() - t) * 1000)
    create.append(float(timing["create"]))
    starts.add(timing["start"])
def pct(xs, p):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]
print(fn, mode, "/".join(sorted(starts)), f"{pct(create,50):.1f} {pct(create,99):.1f} {pct(total,50):.1f} {pct(total,99):.1f}")
PY
  done
  kill "$wpid"; wait "$wpid" 2>/dev/null || true; wpid=""
}
: >"$tmp/results.txt"
run fresh
run zygote
row() { # fn mode label
  local _f _m st c50 c99 t50 t99
  read -r _f _m st c50 c99 t50 t99 < <(grep "^$1 $2 " "$tmp/results.txt")
  echo "| $3 | $st | ${c50} ms / ${c99} ms | ${t50} ms / ${t99} ms |"
}
p50() { grep "^$1 $2 " "$tmp/results.txt" | awk '{print $4}'; }
t50() { grep "^$1 $2 " "$tmp/results.txt" | awk '{print $6}'; }
echo "| cold start, $N each | start | sandbox-create p50 / p99 (worker) | whole call p50 / p99 (client) |"
echo "|---|---|---|---|"
row sym fresh "symbolic (imports sympy): fresh process"
row sym zygote "symbolic (imports sympy): zygote fork"
row hello fresh "hello (no packages): fresh process"
row hello zygote "hello (no packages): root zygote fork"
echo
python3 - "$(p50 sym fresh)" "$(p50 sym zygote)" "$(t50 sym fresh)" "$(t50 sym zygote)" "$(p50 hello fresh)" "$(p50 hello zygote)" <<'PY'
import sys
sc_f, sc_z, st_f, st_z, hc_f, hc_z = map(float, sys.argv[1:])
print(f"symbolic: sandbox-create p50 {sc_f / sc_z:.1f}x faster from a zygote; whole call p50 {st_f / st_z:.1f}x")
print(f"hello: sandbox-create p50 {hc_f / hc_z:.1f}x faster from the root zygote")
PY
