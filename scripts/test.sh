#!/usr/bin/env bash
# The test command: sets up the machine, checks formatting and lints, builds
# every binary (integration tests start them) and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
# The Docker sandbox: its own tests ran above (they print SKIPPED without an
# engine); with an engine, every endpoint test runs again on Docker.
if docker version >/dev/null 2>&1; then
  workers/image/build.sh >/dev/null
  OL_TEST_SANDBOX=docker cargo test -p workers --locked --test endpoints
else
  echo "SKIPPED: endpoint tests on --sandbox docker: no Docker engine here" >&2
fi
