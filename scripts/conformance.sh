#!/usr/bin/env bash
# The conformance stage of the test command: the CRI validation suite that
# containerd and CRI-O run in their CI (critest, kubernetes-sigs/cri-tools)
# against a release-built berth, offline, through the workplace's cri-tools
# kit (see scripts/kit.sh).
#
# The failed specs are compared with
# tests/conformance/critest-expected-failures.txt: a failure not listed fails
# the stage, and so does a listed spec that passed (remove it from the list),
# so the list only shrinks. Skips are counted with their reasons.
#
# Usage: scripts/conformance.sh [--binary PATH] [critest flags...]
#   --binary PATH  use this berth binary instead of building it (release)
# Without the kit it prints `skipped: <why>` and exits 0. Must run as root.
# Exit: 0 conformant (every failure expected), 1 otherwise, 2 setup failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
# shellcheck source=scripts/common.sh
source scripts/common.sh
# shellcheck source=scripts/kit.sh
source scripts/kit.sh
require_root

binary=
if [[ ${1:-} == --binary ]]; then
    binary=${2:?--binary needs a path}
    shift 2
fi
if ! kit_found; then
    echo "skipped: conformance (critest): $KIT_MISSING"
    exit 0
fi
echo "conformance: cri-tools kit $KIT (work dir $KIT_WORK)"
kit_setup || exit 2
binary=$(kit_berth_binary "$binary") || exit 2

trap 'rc=$?; kit_stop_berth conformance; exit $rc' EXIT
kit_start_berth "$binary" || exit 2
echo "conformance: critest against $("$binary" --version 2>/dev/null || echo berth) (pid $KIT_PID)"
t0=$SECONDS
bash "$KIT/critest.sh" "unix://$KIT_T/berth.sock" "$@" || true
echo "conformance: critest took $((SECONDS - t0))s (log: $KIT_WORK/critest.log, berth's: $KIT_WORK/berth-conformance.log)"

python3 "$REPO/scripts/conformance-compare.py" "$KIT_WORK/critest.json" \
    "$REPO/tests/conformance/critest-expected-failures.txt"
