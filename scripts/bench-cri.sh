#!/usr/bin/env bash
# Side-by-side CRI latencies, berth against the reference containerd, the way
# containerd and CRI-O measure themselves: critest's benchmark mode (50 pods,
# 50 containers, 20 image pulls, one after another) through the workplace's
# cri-tools kit, on both runtimes in one run, printed as a markdown table of
# per-operation medians (min–max, n) and the containerd/berth ratio.
#
# Builds berth (release) unless --binary names one, starts it on temporary
# directories (scripts/kit.sh) and Debian's containerd 1.6 + runc beside it
# (the kit's containerd.sh: same registry, same CNI config), runs the kit's
# bench.sh on both, stops both. The table is also written to
# $CRI_TOOLS_WORK/bench-cri.md (default /var/tmp/cri-tools).
#
# Usage: sudo scripts/bench-cri.sh [--binary PATH] [--berth-only]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/common.sh
source scripts/common.sh
# shellcheck source=scripts/kit.sh
source scripts/kit.sh
require_root

binary= containerd=1
while (($#)); do
    case $1 in
        --binary) binary=${2:?--binary needs a path}; shift 2 ;;
        --berth-only) containerd=0; shift ;;
        *) echo "usage: $0 [--binary PATH] [--berth-only]" >&2; exit 2 ;;
    esac
done
if ! kit_found; then
    echo "bench-cri: $KIT_MISSING" >&2
    exit 2
fi
kit_setup
binary=$(kit_berth_binary "$binary")

cleanup() {
    local rc=$?
    kit_stop_berth bench
    ((containerd)) && bash "$KIT/containerd.sh" stop
    exit "$rc"
}
trap cleanup EXIT
kit_start_berth "$binary"
runtimes=("berth=unix://$KIT_T/berth.sock")
if ((containerd)); then
    bash "$KIT/containerd.sh" start >/dev/null
    runtimes+=("containerd=unix:///run/cri-tools-containerd/containerd.sock")
fi
echo "bench-cri: critest -benchmark on ${runtimes[*]} (about 35 s each)" >&2
bash "$KIT/bench.sh" "${runtimes[@]}" | tee "$KIT_WORK/bench-cri.md"
