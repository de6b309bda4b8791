#!/usr/bin/env bash
# Reload under load: ol-proxy (SIGHUP), nginx (SIGHUP) and HAProxy
# (master-worker, -W + SIGUSR2) in one run, on the same upstream (nginx
# `return 200` on a loopback port). For each proxy: wrk with CONNS
# keep-alive connections for DURATION s while RELOADS reloads are sent,
# alternating two configs (a different response header for nginx and
# HAProxy, a different routing policy for ol-proxy). Printed: requests,
# failed requests (socket errors + non-2xx), req/s, p50 and p99.
#
#   bench/reload.sh                         # 32 connections, 10 s, 20 reloads each
#   CONNS=32 DURATION=10 RELOADS=20 bench/reload.sh
#   BIN=target/debug bench/reload.sh        # skip the release build
#
# Why failures can differ: nginx and HAProxy reload by starting new worker
# processes and retiring the old ones, which close their idle keep-alive
# connections; a request sent on such a connection as it closes fails
# (wrk counts a read/write error). ol-proxy swaps its config inside the
# same process (one atomic pointer store), so connections are untouched.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
RELOADS=${RELOADS:-20}
. bench/lib.sh
bench_init reload-bench

need_tools wrk nginx haproxy curl
if [ -z "${BIN:-}" ]; then
  echo "bench: building release binaries" >&2
  cargo build --release -q -p proxy
  BIN="$ROOT/target/release"
fi


RESULTS=() # name|requests|failed|rps|p50|p99|reloads

# run NAME URL RELOAD_CMD: wrk for DURATION s; RELOAD_CMD i runs RELOADS
# times, evenly spread, in the background.
run() {
  local name=$1 url=$2 reload=$3
  wrk -t1 -c"$CONNS" -d1s "$url" >/dev/null 2>&1 || true # warm-up
  (
    gap=$(awk -v d="$DURATION" -v n="$RELOADS" 'BEGIN { printf "%.3f", d / (n + 1) }')
    for i in $(seq 1 "$RELOADS"); do
      sleep "$gap"
      $reload "$i"
    done
  ) &
  local rl=$!
  local out
  out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "$url")
  wait "$rl"
  local reqs rps p50 p99 sock non2xx
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  sock=$(awk '/Socket errors/ { gsub(",", ""); print $4 + $6 + $8 + $10 }' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out")
  local failed=$(( ${sock:-0} + ${non2xx:-0} ))
  echo "bench: $name: $reqs requests, $failed failed (socket errors ${sock:-0}, non-2xx ${non2xx:-0}), $rps req/s, p50 $p50, p99 $p99" >&2
  RESULTS+=("$name|$reqs|$failed|$rps|$p50|$p99")
}

UP=$(free_port); OLP=$(free_port); OLA=$(free_port); NGX=$(free_port); HAP=$(free_port)

# The upstream.
mkdir -p "$TMP/ngx"
nginx_upstream "$UP"

# ol-proxy: two configs that differ in the routing policy.
for v in a b; do
  pol=$([ $v = a ] && echo round-robin || echo least-load)
  cat >"$TMP/olp-$v.toml" <<EOF
listen = "127.0.0.1:$OLP"
threads = 1
version = "$v"
[admin]
listen = "127.0.0.1:$OLA"
[workers]
static = ["127.0.0.1:$UP"]
[routing]
default_policy = "$pol"
EOF
done
cp "$TMP/olp-a.toml" "$TMP/olp.toml"
RUST_LOG=warn "$BIN/ol-proxy" --config "$TMP/olp.toml" 2>"$TMP/olp.log" & PIDS+=($!); OLP_PID=$!
for _ in $(seq 1 200); do
  curl -sf -o /dev/null "http://127.0.0.1:$OLP/run/hello" && break
  sleep 0.05
done
olp_reload() {
  if (( $1 % 2 )); then cp "$TMP/olp-b.toml" "$TMP/olp.tmp"; else cp "$TMP/olp-a.toml" "$TMP/olp.tmp"; fi
  mv "$TMP/olp.tmp" "$TMP/olp.toml"
  kill -HUP "$OLP_PID"
}
ok0=$(curl -s "http://127.0.0.1:$OLA/metrics" | awk '/^ol_proxy_reloads_total\{result="ok"\}/ {print $2}')
run "ol-proxy (SIGHUP)" "http://127.0.0.1:$OLP/run/hello" olp_reload
sleep 0.5
ok1=$(curl -s "http://127.0.0.1:$OLA/metrics" | awk '/^ol_proxy_reloads_total\{result="ok"\}/ {print $2}')
fail1=$(curl -s "http://127.0.0.1:$OLA/metrics" | awk '/^ol_proxy_reloads_total\{result="failed"\}/ {print $2}')
echo "bench: ol-proxy reloads applied: $((ok1 - ok0)) ok, $fail1 failed" >&2

# nginx: two configs that differ in a response header.
for v in a b; do
  cat >"$TMP/ngx/nginx-$v.conf" <<EOF
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
      add_header x-config $v;
    }
  }
}
EOF
done
cp "$TMP/ngx/nginx-a.conf" "$TMP/ngx/nginx.conf"
nginx -c "$TMP/ngx/nginx.conf" -p "$TMP/ngx" & PIDS+=($!); NGX_MASTER=$!
wait_port "$NGX"
ngx_reload() {
  if (( $1 % 2 )); then cp "$TMP/ngx/nginx-b.conf" "$TMP/ngx/nginx.conf"; else cp "$TMP/ngx/nginx-a.conf" "$TMP/ngx/nginx.conf"; fi
  kill -HUP "$NGX_MASTER"
}
run "nginx (SIGHUP)" "http://127.0.0.1:$NGX/run/hello" ngx_reload

# HAProxy: master-worker mode, reload with SIGUSR2 to the master.
for v in a b; do
  cat >"$TMP/haproxy-$v.cfg" <<EOF
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
  http-response set-header x-config $v
  default_backend be
backend be
  server up 127.0.0.1:$UP
EOF
done
cp "$TMP/haproxy-a.cfg" "$TMP/haproxy.cfg"
haproxy -W -db -f "$TMP/haproxy.cfg" 2>"$TMP/haproxy.log" & PIDS+=($!); HAP_MASTER=$!
wait_port "$HAP"
hap_reload() {
  if (( $1 % 2 )); then cp "$TMP/haproxy-b.cfg" "$TMP/haproxy.cfg"; else cp "$TMP/haproxy-a.cfg" "$TMP/haproxy.cfg"; fi
  kill -USR2 "$HAP_MASTER"
}
run "HAProxy (-W, SIGUSR2)" "http://127.0.0.1:$HAP/run/hello" hap_reload

echo
echo "### Reload under load: $CONNS keep-alive connections, ${DURATION} s, $RELOADS reloads (alternating two configs) per proxy, upstream nginx \`return 200\`"
echo
echo "| proxy | requests | failed | req/s | p50 | p99 |"
echo "|---|---:|---:|---:|---:|---:|"
for r in "${RESULTS[@]}"; do
  IFS='|' read -r n reqs failed rps p50 p99 <<<"$r"
  echo "| $n | $reqs | $failed | $rps | $p50 | $p99 |"
done
echo
echo "ol-proxy applied $((ok1 - ok0)) of $RELOADS reloads (signals that arrive during a reload coalesce)."
