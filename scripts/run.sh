#!/usr/bin/env bash
# The main job: sets up the machine, builds in release mode, and runs
# ol-proxy with config/quickstart.toml: two local ol-workers (process
# sandboxes, examples/functions) behind the proxy on 127.0.0.1:8080, admin on
# 127.0.0.1:8081. Extra arguments go to ol-proxy (e.g. --listen, --admin).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked --bins
exec target/release/ol-proxy --config config/quickstart.toml "$@"
