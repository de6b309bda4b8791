#!/usr/bin/env bash
# ol-proxy beside bare pingora, nginx and HAProxy, on the same upstream, in
# one run. See proxy/README.md ("Benchmark") for what is measured and why.
#
#   bench/proxy.sh                 # both runs, ~3 minutes
#   DURATION=5 CONNS=32 bench/proxy.sh
#   RUNS=fixed bench/proxy.sh      # only the fixed-response run
#   ROUNDS=3 KEEP=1 bench/proxy.sh # more rounds; keep logs and configs
#   BASELINE=/tmp/ol-proxy-old bench/proxy.sh  # also an older ol-proxy build,
#                                  # same config, measured in the same rounds
#   RUNS=limits,burst bench/proxy.sh # admission's cost and its burst test
#
# Run 1 ("fixed"): upstream = nginx `return 200` on a loopback port; wrk
# (CONNS connections, DURATION s each) through ol-proxy (name inspection of
# /run/hello, policy routing, metrics, x-ol-* headers, health checks on),
# bare-pingora (round-robin LoadBalancer only), nginx, HAProxy, and straight
# to the upstream. Every proxy gets one thread/worker process.
# Run 2 ("hello"): `hello` on a real ol-worker, through ol-proxy vs direct.
# Run 3 ("limits"): the fixed upstream through two ol-proxy instances, one
# with [[admission.limits]] configured (concurrency and a per-tenant rate,
# never reached) and one without: the hot-path cost of admission.
# Run 4 ("burst"): BURST concurrent calls of `sleep` (200 ms) at once to a
# worker allowed 4 instances and no queue, through ol-proxy with the hold
# (admission defaults) and with hold_ms = 0 (the refusals reach the client,
# as before the hold): calls served, errors, p50/p99.
#
# Printed per target: req/s, p50, p99, and the proxy process's CPU time per
# request (utime+stime from /proc/<pid>/stat over the wrk run), then
# ol-proxy's CPU/request ratios to bare pingora, nginx and HAProxy.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
DURATION=${DURATION:-8}
CONNS=${CONNS:-32}
RUNS=${RUNS:-fixed,hello,limits,burst}
BURST=${BURST:-64}
ROUNDS=${ROUNDS:-2} # each target is measured ROUNDS times, interleaved; the
                    # round with the least CPU per request is reported (the
                    # one least disturbed by other load on the machine)
. bench/lib.sh
bench_init bench

need_tools wrk nginx haproxy curl

echo "bench: building release binaries" >&2
cargo build --release -q -p proxy -p bare-pingora -p workers
BIN="$ROOT/target/release"

ticks() { # pid... -> utime+stime of all, in clock ticks
  local sum=0
  for p in "$@"; do
    read -r -a f < <(sed 's/^.*) //' "/proc/$p/stat")
    # after "pid (comm) ": field 0 is state; utime=11, stime=12
    sum=$((sum + f[11] + f[12]))
  done
  echo "$sum"
}
CLK=$(getconf CLK_TCK)
alive() { # pid log: fail loudly if a server died at start
  sleep 0.2
  kill -0 "$1" 2>/dev/null || { echo "bench: process $1 died; its log:" >&2; tail -20 "$2" >&2; exit 1; }
}

RESULTS=() # name|rps|p50|p99|cpu_us_per_req

# measure NAME URL PIDS [WRK_ARGS...]
measure() {
  local name=$1 url=$2 pids=$3; shift 3
  wrk -t1 -c"$CONNS" -d1s "$@" "$url" >/dev/null 2>&1 || true # warm-up
  local t0 t1 out
  # shellcheck disable=SC2086
  t0=$(ticks $pids)
  out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$@" "$url")
  # shellcheck disable=SC2086
  t1=$(ticks $pids)
  local reqs rps p50 p99 errs
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errs=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
  [ -n "$errs" ] && echo "bench: $name: $errs" >&2
  local cpu
  cpu=$(awk -v d=$((t1 - t0)) -v n="$reqs" -v c="$CLK" 'BEGIN { printf "%.1f", d / c / n * 1e6 }')
  RESULTS+=("$name|$rps|$p50|$p99|$cpu")
  echo "bench: $name: $rps req/s, p50 $p50, p99 $p99, $cpu us CPU/req" >&2
}

# best NAME -> the result line of NAME's round with the least CPU/request
best() {
  local line="" bc=""
  for r in "${RESULTS[@]}"; do
    IFS='|' read -r n _ _ _ c <<<"$r"
    [ "$n" = "$1" ] || continue
    if [ -z "$bc" ] || awk -v a="$c" -v b="$bc" 'BEGIN { exit !(a < b) }'; then
      bc=$c; line=$r
    fi
  done
  echo "$line"
}

table() {
  echo "| target | req/s | p50 | p99 | proxy CPU per request |"
  echo "|---|---:|---:|---:|---:|"
  local seen=" "
  for r in "${RESULTS[@]}"; do
    IFS='|' read -r n _ <<<"$r"
    [[ $seen == *" $n "* ]] && continue
    seen="$seen$n "
    IFS='|' read -r n rps p50 p99 cpu <<<"$(best "$n")"
    echo "| $n | $rps | $p50 | $p99 | $cpu us |"
  done
}

cpu_of() { local l; l=$(best "$1"); echo "${l##*|}"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

if [[ $RUNS == *fixed* ]]; then
  UP=$(free_port); OLP=$(free_port); OLA=$(free_port); BARE=$(free_port); NGX=$(free_port); HAP=$(free_port)

  # The upstream: nginx answering every path with a tiny fixed body.
  mkdir -p "$TMP/ngx"
  nginx_upstream "$UP"
  UP_PIDS=$(pgrep -P "$UP_PID" | tr '\n' ' ')" $UP_PID"

  cat >"$TMP/olp.toml" <<EOF
listen = "127.0.0.1:$OLP"
threads = 1
[admin]
listen = "127.0.0.1:$OLA"
[workers]
static = ["127.0.0.1:$UP"]
[health]
interval_ms = 1000
[routing]
default_policy = "least-load"
EOF
  RUST_LOG=warn "$BIN/ol-proxy" --config "$TMP/olp.toml" 2>"$TMP/olp.log" & PIDS+=($!); OLP_PID=$!
  if [ -n "${BASELINE:-}" ]; then
    OLB=$(free_port); OLBA=$(free_port)
    sed -e "s/127.0.0.1:$OLP\"/127.0.0.1:$OLB\"/" -e "s/127.0.0.1:$OLA\"/127.0.0.1:$OLBA\"/" "$TMP/olp.toml" >"$TMP/olb.toml"
    RUST_LOG=warn "$BASELINE" --config "$TMP/olb.toml" 2>"$TMP/olb.log" & PIDS+=($!); OLB_PID=$!
    alive "$OLB_PID" "$TMP/olb.log"
  fi
  "$BIN/bare-pingora" --listen "127.0.0.1:$BARE" --upstream "127.0.0.1:$UP" --threads 1 2>"$TMP/bare.log" & PIDS+=($!); BARE_PID=$!
  alive "$OLP_PID" "$TMP/olp.log"; alive "$BARE_PID" "$TMP/bare.log"

  cat >"$TMP/ngx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
error_log $TMP/ngx/error.log crit;
pid $TMP/ngx/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream up { server 127.0.0.1:$UP; keepalive 64; }
  server {
    listen 127.0.0.1:$NGX;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
  nginx -c "$TMP/ngx/nginx.conf" -p "$TMP/ngx" & PIDS+=($!)
  NGX_MASTER=$!

  cat >"$TMP/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend fe
  bind 127.0.0.1:$HAP
  default_backend be
backend be
  server up 127.0.0.1:$UP
EOF
  haproxy -f "$TMP/haproxy.cfg" -db 2>"$TMP/haproxy.log" & PIDS+=($!); HAP_PID=$!

  wait_port "$BARE" /; wait_port "$NGX" /; wait_port "$HAP" /
  for _ in $(seq 1 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$OLP/run/hello" && break
    sleep 0.05
  done
  curl -s -D - -o /dev/null "http://127.0.0.1:$OLP/run/hello" | grep -qi '^x-ol-policy' \
    || { echo "bench: ol-proxy does not answer with x-ol-policy" >&2; cat "$TMP/olp.log" >&2; exit 1; }
  NGX_PIDS="$NGX_MASTER $(pgrep -P "$NGX_MASTER" | tr '\n' ' ')"
  if [ -n "${BASELINE:-}" ]; then
    for _ in $(seq 1 100); do
      curl -sf -o /dev/null "http://127.0.0.1:$OLB/run/hello" && break
      sleep 0.05
    done
  fi

  for _ in $(seq 1 "$ROUNDS"); do
    measure "ol-proxy" "http://127.0.0.1:$OLP/run/hello" "$OLP_PID"
    if [ -n "${BASELINE:-}" ]; then
      measure "ol-proxy baseline ($(basename "$BASELINE"))" "http://127.0.0.1:$OLB/run/hello" "$OLB_PID"
    fi
    measure "bare pingora" "http://127.0.0.1:$BARE/run/hello" "$BARE_PID"
    measure "nginx" "http://127.0.0.1:$NGX/run/hello" "$NGX_PIDS"
    measure "HAProxy" "http://127.0.0.1:$HAP/run/hello" "$HAP_PID"
    # shellcheck disable=SC2086
    measure "direct (upstream; CPU is the upstream's)" "http://127.0.0.1:$UP/run/hello" "$UP_PIDS"
  done

  echo
  echo "### Run 1: fixed 200 response (nginx \`return 200\`), $CONNS connections, ${DURATION}s each, best of $ROUNDS interleaved rounds"
  echo
  table
  echo
  o=$(cpu_of "ol-proxy")
  echo "ol-proxy CPU per request: $(ratio "$o" "$(cpu_of "bare pingora")")x bare pingora (target <= 1.15), $(ratio "$o" "$(cpu_of nginx)")x nginx (target <= 1.5), $(ratio "$o" "$(cpu_of HAProxy)")x HAProxy"
  if [ -n "${BASELINE:-}" ]; then
    b=$(cpu_of "ol-proxy baseline ($(basename "$BASELINE"))")
    echo "baseline $(basename "$BASELINE"): $(ratio "$b" "$(cpu_of "bare pingora")")x bare pingora; ol-proxy / baseline: $(ratio "$o" "$b")x"
  fi
  RESULTS=()
fi

if [[ $RUNS == *hello* ]]; then
  W=$(free_port); OLP2=$(free_port); OLA2=$(free_port)
  mkdir -p "$TMP/w"
  "$BIN/ol-worker" --listen "127.0.0.1:$W" --registry "$ROOT/examples/functions" --sandbox process --work-dir "$TMP/w" >"$TMP/worker.log" 2>&1 & PIDS+=($!); W_PID=$!
  wait_port "$W" /status "$TMP/worker.log"
  cat >"$TMP/olp2.toml" <<EOF
listen = "127.0.0.1:$OLP2"
threads = 1
[admin]
listen = "127.0.0.1:$OLA2"
[workers]
static = ["127.0.0.1:$W"]
[health]
interval_ms = 1000
EOF
  RUST_LOG=warn "$BIN/ol-proxy" --config "$TMP/olp2.toml" 2>"$TMP/olp2.log" & PIDS+=($!); OLP2_PID=$!
  alive "$OLP2_PID" "$TMP/olp2.log"
  if [ -n "${BASELINE:-}" ]; then
    OLB2=$(free_port); OLBA2=$(free_port)
    sed -e "s/127.0.0.1:$OLP2\"/127.0.0.1:$OLB2\"/" -e "s/127.0.0.1:$OLA2\"/127.0.0.1:$OLBA2\"/" "$TMP/olp2.toml" >"$TMP/olb2.toml"
    RUST_LOG=warn "$BASELINE" --config "$TMP/olb2.toml" 2>"$TMP/olb2.log" & PIDS+=($!); OLB2_PID=$!
    alive "$OLB2_PID" "$TMP/olb2.log"
    for _ in $(seq 1 100); do
      curl -sf -o /dev/null -d '{"name":"bench"}' "http://127.0.0.1:$OLB2/run/hello" && break
      sleep 0.05
    done
  fi
  for _ in $(seq 1 100); do
    curl -sf -o /dev/null -d '{"name":"bench"}' "http://127.0.0.1:$OLP2/run/hello" && break
    sleep 0.05
  done
  cat >"$TMP/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '{"name": "bench"}'
wrk.headers["Content-Type"] = "application/json"
EOF
  for _ in $(seq 1 "$ROUNDS"); do
    measure "hello via ol-proxy" "http://127.0.0.1:$OLP2/run/hello" "$OLP2_PID" -s "$TMP/post.lua"
    if [ -n "${BASELINE:-}" ]; then
      measure "hello via ol-proxy baseline ($(basename "$BASELINE"))" "http://127.0.0.1:$OLB2/run/hello" "$OLB2_PID" -s "$TMP/post.lua"
    fi
    measure "hello direct to ol-worker (CPU is the worker's)" "http://127.0.0.1:$W/run/hello" "$W_PID" -s "$TMP/post.lua"
  done
  echo
  echo "### Run 2: \`hello\` on one real ol-worker (process sandbox), $CONNS connections, ${DURATION}s each, best of $ROUNDS rounds"
  echo
  table
  if [ -n "${BASELINE:-}" ]; then
    echo
    echo "hello: ol-proxy / baseline $(basename "$BASELINE") CPU per request: $(ratio "$(cpu_of "hello via ol-proxy")" "$(cpu_of "hello via ol-proxy baseline ($(basename "$BASELINE"))")")x"
  fi
fi

if [[ $RUNS == *limits* ]]; then
  UP=$(free_port); OLN=$(free_port); OLNA=$(free_port); OLL=$(free_port); OLLA=$(free_port)
  nginx_upstream "$UP"
  for which in none limits; do
    if [ "$which" = none ]; then port=$OLN; admin=$OLNA; else port=$OLL; admin=$OLLA; fi
    cat >"$TMP/ol-$which.toml" <<EOF
listen = "127.0.0.1:$port"
threads = 1
[admin]
listen = "127.0.0.1:$admin"
[workers]
static = ["127.0.0.1:$UP"]
[health]
interval_ms = 1000
EOF
    if [ "$which" = limits ]; then
      cat >>"$TMP/ol-$which.toml" <<EOF
[[admission.limits]]
functions = ["img-*"]
max_concurrent = 8
[[admission.limits]]
functions = ["*"]
key = { header = "x-tenant" }
max_concurrent = 100000
rate_per_s = 1000000
burst = 1000000
EOF
    fi
  done
  RUST_LOG=warn "$BIN/ol-proxy" --config "$TMP/ol-none.toml" 2>"$TMP/ol-none.log" & PIDS+=($!); OLN_PID=$!
  RUST_LOG=warn "$BIN/ol-proxy" --config "$TMP/ol-limits.toml" 2>"$TMP/ol-limits.log" & PIDS+=($!); OLL_PID=$!
  alive "$OLN_PID" "$TMP/ol-none.log"; alive "$OLL_PID" "$TMP/ol-limits.log"
  for p in "$OLN" "$OLL"; do
    for _ in $(seq 1 100); do
      curl -sf -o /dev/null "http://127.0.0.1:$p/run/hello" && break
      sleep 0.05
    done
  done
  cat >"$TMP/tenant.lua" <<'EOF'
wrk.headers["x-tenant"] = "t1"
EOF
  for _ in $(seq 1 "$ROUNDS"); do
    measure "ol-proxy, no limits" "http://127.0.0.1:$OLN/run/hello" "$OLN_PID" -s "$TMP/tenant.lua"
    measure "ol-proxy, limits configured (not reached)" "http://127.0.0.1:$OLL/run/hello" "$OLL_PID" -s "$TMP/tenant.lua"
  done
  echo
  echo "### Run 3: admission's cost, fixed 200 response, $CONNS connections, ${DURATION}s each, best of $ROUNDS interleaved rounds"
  echo
  table
  echo
  echo "limits configured / none, CPU per request: $(ratio "$(cpu_of "ol-proxy, limits configured (not reached)")" "$(cpu_of "ol-proxy, no limits")")x"
  RESULTS=()
fi

if [[ $RUNS == *burst* ]]; then
  W=$(free_port); OLH=$(free_port); OLHA=$(free_port); OL0=$(free_port); OL0A=$(free_port)
  mkdir -p "$TMP/wb"
  cat >"$TMP/wb.toml" <<EOF
[instances]
max_per_function = 4
queue_per_function = 0
EOF
  "$BIN/ol-worker" --config "$TMP/wb.toml" --listen "127.0.0.1:$W" --registry "$ROOT/examples/functions" --sandbox process --work-dir "$TMP/wb" >"$TMP/wb.log" 2>&1 & PIDS+=($!)
  wait_port "$W" /status "$TMP/wb.log"
  for which in hold nohold; do
    if [ "$which" = hold ]; then port=$OLH; admin=$OLHA; else port=$OL0; admin=$OL0A; fi
    cat >"$TMP/ol-$which.toml" <<EOF
listen = "127.0.0.1:$port"
threads = 1
[admin]
listen = "127.0.0.1:$admin"
[workers]
static = ["127.0.0.1:$W"]
[health]
interval_ms = 1000
EOF
    if [ "$which" = nohold ]; then printf '[admission]\nhold_ms = 0\n' >>"$TMP/ol-$which.toml"; fi
    RUST_LOG=warn "$BIN/ol-proxy" --config "$TMP/ol-$which.toml" 2>"$TMP/ol-$which.log" & PIDS+=($!)
    alive "$!" "$TMP/ol-$which.log"
    for _ in $(seq 1 100); do
      curl -sf -o /dev/null -d '{"ms": 1}' "http://127.0.0.1:$port/run/sleep" && break
      sleep 0.05
    done
  done
  # Four warm instances first: the burst meets busy instances, not cold starts.
  python3 bench/burst.py "$W" /run/sleep '{"ms": 300}' 4 >/dev/null
  echo
  echo "### Run 4: burst of $BURST concurrent \`sleep\` (200 ms) calls, worker at 4 instances and no queue, $ROUNDS rounds"
  echo
  echo "| target | round | result |"
  echo "|---|---:|---|"
  for r in $(seq 1 "$ROUNDS"); do
    echo "| with the hold (admission defaults) | $r | $(python3 bench/burst.py "$OLH" /run/sleep '{"ms": 200}' "$BURST") |"
    echo "| hold_ms = 0 (refusals reach the client) | $r | $(python3 bench/burst.py "$OL0" /run/sleep '{"ms": 200}' "$BURST") |"
  done
fi
