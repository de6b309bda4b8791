#!/usr/bin/env bash
# The test command: sets up the machine, checks formatting and lints, builds
# every binary (integration tests start them) and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Every target at once, with the features `cargo test --workspace` unifies,
# so the test step reuses these artifacts instead of building a second set.
cargo build --workspace --all-targets --locked
cargo test --workspace --locked "$@"
# The Docker sandbox: its own tests ran above (they print SKIPPED without an
# engine); with an engine, every endpoint test runs again on Docker. The test
# binary built above is run as it is: `cargo test -p workers` would resolve
# features for one package and rebuild half the dependency tree (~5 min).
if docker version >/dev/null 2>&1; then
  workers/image/build.sh >/dev/null
  endpoints=$(cargo test --workspace --locked --no-run --message-format=json |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "endpoints" and m.get("executable"):
        print(m["executable"])')
  test -x "$endpoints" || { echo "test.sh: no endpoints test binary found" >&2; exit 1; }
  (cd workers && OL_TEST_SANDBOX=docker "$endpoints")
else
  echo "SKIPPED: endpoint tests on --sandbox docker: no Docker engine here" >&2
fi
