#!/usr/bin/env bash
# The conformance stage of the test command: the CRI validation suite that
# containerd and CRI-O run in their CI (critest, kubernetes-sigs/cri-tools)
# against a release-built berth, offline, through the workplace's cri-tools
# kit (../shared/tools/cri-tools, or the copy BERTH_CRI_TOOLS names): static
# crictl/critest, a loopback registry of stand-in images built by umoci and
# skopeo, registry host configs and a CNI bridge config.
#
# berth runs with its own root, state and socket under a temporary directory,
# the kit's certs.d and CNI config. The failed specs are compared with
# tests/conformance/critest-expected-failures.txt: a failure not listed fails
# the stage, and so does a listed spec that passed (remove it from the list),
# so the list only shrinks. Skips are counted with their reasons.
#
# Usage: scripts/conformance.sh [--binary PATH] [critest flags...]
#   --binary PATH  use this berth binary instead of building it (release)
# Without the kit it prints `skipped: <why>` and exits 0. Must run as root.
# Exit: 0 conformant (every failure expected), 1 otherwise, 2 usage/setup.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
# shellcheck source=scripts/common.sh
source scripts/common.sh
require_root

KIT=${BERTH_CRI_TOOLS:-$REPO/../shared/tools/cri-tools}
EXPECTED=$REPO/tests/conformance/critest-expected-failures.txt
WORK=${CRI_TOOLS_WORK:-/var/tmp/cri-tools}
export CRI_TOOLS_WORK=$WORK

binary=
if [[ ${1:-} == --binary ]]; then
    binary=${2:?--binary needs a path}
    shift 2
fi

if [[ ! -x $KIT/setup.sh && ! -f $KIT/setup.sh ]]; then
    echo "skipped: conformance (critest): no cri-tools kit at $KIT (set BERTH_CRI_TOOLS to a copy of ../shared/tools/cri-tools)"
    exit 0
fi
KIT=$(cd "$KIT" && pwd)

echo "conformance: cri-tools kit $KIT (work dir $WORK)"
bash "$KIT/setup.sh" >"$WORK.setup.log" 2>&1 || {
    tail -n 30 "$WORK.setup.log" >&2
    echo "conformance: the kit's setup.sh failed (log: $WORK.setup.log)" >&2
    exit 2
}

if [[ -z $binary ]]; then
    ensure_cargo
    echo "conformance: cargo build --release -p berth"
    cargo build --release -p berth
    binary=${CARGO_TARGET_DIR:-$REPO/target}/release/berth
fi
[[ -x $binary ]] || {
    echo "conformance: no berth binary at $binary" >&2
    exit 2
}

T=$(mktemp -d /var/tmp/berth-conformance.XXXXXX)
# Like /run and /var/lib: a container in a pod with its own user namespace
# runs as a host uid that must be able to pass through (not list) to its
# root filesystem.
chmod 0711 "$T"
SOCK=$T/berth.sock
EP=unix://$SOCK
CRICTL=("$WORK/bin/crictl" --runtime-endpoint "$EP" --image-endpoint "$EP" --timeout 60s)
pid=

# Leaves nothing behind, also when critest or berth failed: the pods critest
# left are removed through berth, berth is stopped by its PID, then what is
# still there of its (container monitors found by their command lines, which
# name $T; mounts under $T; cgroups named by its container ids) is ended.
cleanup() {
    local rc=$?
    set +e
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        "${CRICTL[@]}" rmp -fa >/dev/null 2>&1
        kill -TERM "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        wait "$pid" 2>/dev/null
    fi
    local p ids id h
    for p in $(pgrep -f "__berth_monitor.*$T" || true); do kill -KILL "$p" 2>/dev/null; done
    awk -v t="$T" '$5 ~ "^"t {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null
    done
    ids=$(ls "$T/root/metadata/containers" 2>/dev/null | sed -n 's/^\([0-9a-f]\{64\}\)\.json$/\1/p')
    for id in $ids; do
        for h in /sys/fs/cgroup/*/"$id" /sys/fs/cgroup/*/*/"$id"; do
            [[ -d $h ]] || continue
            xargs -r kill -KILL <"$h/cgroup.procs" 2>/dev/null
            rmdir "$h" 2>/dev/null
        done
    done
    [[ -f $T/berth.log ]] && cp "$T/berth.log" "$WORK/berth-conformance.log"
    rm -rf "$T"
    exit "$rc"
}
trap cleanup EXIT

"$binary" serve --listen "$SOCK" --root "$T/root" --state "$T/state" \
    --registry-config-dir "$KIT/certs.d" --cni-conf-dir "$WORK/cni/net.d" \
    --cni-bin-dir /usr/lib/cni --cni-bin-dir /opt/cni/bin >"$T/berth.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
    "${CRICTL[@]}" version >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
"${CRICTL[@]}" version >/dev/null 2>&1 || {
    tail -n 20 "$T/berth.log" >&2
    echo "conformance: berth did not start" >&2
    exit 2
}

echo "conformance: critest against $("$binary" --version 2>/dev/null || echo berth) (pid $pid)"
t0=$SECONDS
bash "$KIT/critest.sh" "$EP" "$@" || true
echo "conformance: critest took $((SECONDS - t0))s (log: $WORK/critest.log, berth's: $WORK/berth-conformance.log)"

python3 "$REPO/scripts/conformance-compare.py" "$WORK/critest.json" "$EXPECTED"
