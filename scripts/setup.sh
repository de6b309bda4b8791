#!/usr/bin/env bash
# Installs what ol-edge's build, tests and benchmarks need from the system.
# Idempotent: a second run installs nothing and takes about a second.
# Called by `make run`, `make test` and .ci/run; safe to call by hand.
set -euo pipefail

# Debian packages: cmake (pingora's zlib-ng), python3 for the function
# runtime and python3-pip for functions' requirements.txt (the worker runs
# `python3 -m pip`), wrk/nginx/haproxy for the side-by-side benchmarks,
# procps for ps, debootstrap for the Docker sandbox's image (workers/image/build.sh) and
# iptables for its egress network's firewall rules, chromium (headless) for
# the screenshot of the experiments report in proxy/tests/experiments.rs.
PKGS=(cmake python3 python3-minimal python3-pip wrk nginx-light haproxy procps curl ca-certificates debootstrap iptables chromium)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # nginx/haproxy must not start system services: the benches start their own.
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  $SUDO rm -f /usr/sbin/policy-rc.d
fi

command -v cargo >/dev/null || { echo "setup: cargo not found: install a Rust toolchain (rustup) first" >&2; exit 1; }
