#!/usr/bin/env bash
# The test command: installs the Debian packages the tests need, then runs the
# whole suite (unit tests, privileged integration tests, end-to-end tests,
# doctests). Must run as root.
#
# `--all-targets` also compiles the examples and benchmarks so they cannot rot.
# The build goes to $CARGO_TARGET_DIR when set (so CI can cache it), else to
# target/ in the repository.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/common.sh
source scripts/common.sh

require_root
ensure_cargo
export RUST_BACKTRACE=1

phase() {
    echo
    echo "==> $*"
}

run() {
    local rc=0
    "$@" || rc=$?
    if [[ $rc -ne 0 ]]; then
        echo "==> FAILED (exit $rc): $*" >&2
        exit "$rc"
    fi
}

phase "installing test dependencies"
run bash scripts/install-test-deps.sh

phase "cargo build --workspace --bins (the end-to-end tests drive the real binary)"
run cargo build --workspace --bins

phase "cargo test --workspace --all-targets (target dir: ${CARGO_TARGET_DIR:-target})"
run cargo test --workspace --all-targets

phase "cargo test --workspace --doc"
run cargo test --workspace --doc

phase "all tests passed"
