#!/usr/bin/env bash
# The main job: sets up the machine, builds in release mode, and runs a
# worker serving examples/functions on 127.0.0.1:5000.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked --bins
exec target/release/ol-worker --listen 127.0.0.1:5000 --registry examples/functions "$@"
