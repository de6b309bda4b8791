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
