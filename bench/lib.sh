# Shared by the bench scripts (source it; it defines, it runs nothing):
# a temporary dir with clean-up, tool checks, free loopback ports, waiting
# for a server, and the nginx `return 200` upstream the proxy benches share.

# bench_init NAME: $TMP (mode 755, so ol-worker sandbox users can reach code
# below it), $PIDS (killed at exit), and removal of $TMP at exit (KEEP=1 keeps it).
bench_init() {
  TMP=$(mktemp -d "/tmp/ol-$1.XXXXXX")
  chmod 755 "$TMP"
  PIDS=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  if [ -n "${KEEP:-}" ]; then echo "bench: kept $TMP" >&2; else rm -rf "$TMP"; fi
}

# need_tools TOOL...: exits with a one-line hint when one is missing.
need_tools() {
  for t in "$@"; do
    command -v "$t" >/dev/null || { echo "bench: $t missing: run scripts/setup.sh" >&2; exit 1; }
  done
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_port PORT [PATH [LOG]]: until http://127.0.0.1:PORT/PATH answers
# (30 s at most; then the log's tail and exit).
wait_port() {
  for _ in $(seq 1 600); do
    curl -s -o /dev/null "http://127.0.0.1:$1${2:-/}" && return 0
    sleep 0.05
  done
  echo "bench: nothing answers on port $1" >&2
  [ -n "${3:-}" ] && tail -20 "$3" >&2
  exit 1
}

# nginx_upstream PORT: one nginx worker answering every path with a tiny
# fixed body (`/status` with `ready`), started in $TMP/up; sets UP_PID.
nginx_upstream() {
  mkdir -p "$TMP/up"
  cat >"$TMP/up/nginx.conf" <<EOF
worker_processes 1;
daemon off;
error_log $TMP/up/error.log crit;
pid $TMP/up/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$1;
    location = /status { return 200 "ready\n"; }
    location / { return 200 "hello\n"; }
  }
}
EOF
  nginx -c "$TMP/up/nginx.conf" -p "$TMP/up" &
  UP_PID=$!
  PIDS+=("$UP_PID")
  wait_port "$1"
}
