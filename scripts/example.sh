#!/usr/bin/env bash
# Runs berth's runtime-core example: one container from a busybox rootfs that
# prints what it sees. Must run as root. Arguments are passed to the example;
# with no rootfs path it builds its own busybox rootfs.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/common.sh
source scripts/common.sh

require_root
ensure_cargo

# Only busybox-static is needed here; runc and crun are for the benchmark.
bash scripts/install-test-deps.sh --no-bench

exec cargo run --release -p berth-core --example run -- "$@"
