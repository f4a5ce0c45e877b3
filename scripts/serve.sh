#!/usr/bin/env bash
# Builds berth (release) and runs the CRI daemon with its embedded defaults:
# socket /run/berth/berth.sock, persistent state /var/lib/berth, volatile
# state /run/berth, /etc/berth/config.toml when it exists. Must run as root.
# Arguments are passed to `berth serve` (try --help). Stop it with Ctrl-C.
#
#   sudo crictl --runtime-endpoint unix:///run/berth/berth.sock version
#   sudo crictl --image-endpoint unix:///run/berth/berth.sock pull busybox
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/common.sh
source scripts/common.sh

require_root
ensure_cargo

# Building needs libseccomp-dev and pkg-config (installed with the test deps).
bash scripts/install-test-deps.sh --no-bench

cargo build --release -p berth
exec target/release/berth serve "$@"
