# Shared by scripts/conformance.sh and scripts/bench-cri.sh; source it, do not
# run it. The workplace's cri-tools kit (../shared/tools/cri-tools, or the
# copy BERTH_CRI_TOOLS names: static crictl/critest, a loopback registry of
# stand-in images, registry host configs, a CNI bridge config) and a berth
# started on it with its own root, state and socket under a temporary
# directory, stopped by its PID with everything it left removed.

KIT=${BERTH_CRI_TOOLS:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/../shared/tools/cri-tools}
KIT_WORK=${CRI_TOOLS_WORK:-/var/tmp/cri-tools}
export CRI_TOOLS_WORK=$KIT_WORK
KIT_T=
KIT_PID=

# True when the kit is there (KIT is then absolute); else says why.
kit_found() {
    if [[ ! -f $KIT/setup.sh ]]; then
        KIT_MISSING="no cri-tools kit at $KIT (set BERTH_CRI_TOOLS to a copy of ../shared/tools/cri-tools)"
        return 1
    fi
    KIT=$(cd "$KIT" && pwd)
}

# The kit's setup.sh (packages, crictl/critest, registry, images, CNI config).
kit_setup() {
    bash "$KIT/setup.sh" >"$KIT_WORK.setup.log" 2>&1 || {
        tail -n 30 "$KIT_WORK.setup.log" >&2
        echo "the cri-tools kit's setup.sh failed (log: $KIT_WORK.setup.log)" >&2
        return 1
    }
}

# The release berth, built unless $1 names a binary; prints its path.
kit_berth_binary() {
    local bin=${1:-}
    if [[ -z $bin ]]; then
        ensure_cargo
        cargo build --release -p berth >&2
        bin=${CARGO_TARGET_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target}/release/berth
    fi
    [[ -x $bin ]] || {
        echo "no berth binary at $bin" >&2
        return 1
    }
    echo "$bin"
}

# crictl against the kit's berth.
kit_crictl() {
    "$KIT_WORK/bin/crictl" --runtime-endpoint "unix://$KIT_T/berth.sock" \
        --image-endpoint "unix://$KIT_T/berth.sock" --timeout 60s "$@"
}

# Starts berth ($1) on a fresh temporary directory with the kit's registry
# hosts and CNI config; sets KIT_T (the directory; socket $KIT_T/berth.sock)
# and KIT_PID. The caller traps kit_stop_berth.
kit_start_berth() {
    KIT_T=$(mktemp -d /var/tmp/berth-kit.XXXXXX)
    # Like /run and /var/lib: a container in a pod with its own user
    # namespace runs as a host uid that must pass through (not list) to its
    # root filesystem.
    chmod 0711 "$KIT_T"
    "$1" serve --listen "$KIT_T/berth.sock" --root "$KIT_T/root" --state "$KIT_T/state" \
        --registry-config-dir "$KIT/certs.d" --cni-conf-dir "$KIT_WORK/cni/net.d" \
        --cni-bin-dir /usr/lib/cni --cni-bin-dir /opt/cni/bin >"$KIT_T/berth.log" 2>&1 &
    KIT_PID=$!
    for _ in $(seq 100); do
        kit_crictl version >/dev/null 2>&1 && return 0
        kill -0 "$KIT_PID" 2>/dev/null || break
        sleep 0.1
    done
    tail -n 20 "$KIT_T/berth.log" >&2
    echo "berth did not start" >&2
    return 1
}

# Leaves nothing behind, also after a failure: the pods left are removed
# through berth, berth is stopped by its PID, then what is still there of
# its (container monitors found by their command lines, which name $KIT_T;
# mounts under $KIT_T; cgroups named by its container ids) is ended. Its log
# is kept as $KIT_WORK/berth-<$1>.log.
kit_stop_berth() {
    local name=${1:-kit} p ids id h
    [[ -n $KIT_T ]] || return 0
    if [[ -n $KIT_PID ]] && kill -0 "$KIT_PID" 2>/dev/null; then
        kit_crictl rmp -fa >/dev/null 2>&1
        kill -TERM "$KIT_PID"
        for _ in $(seq 100); do kill -0 "$KIT_PID" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$KIT_PID" 2>/dev/null && kill -KILL "$KIT_PID"
        wait "$KIT_PID" 2>/dev/null
    fi
    for p in $(pgrep -f "__berth_monitor.*$KIT_T" || true); do kill -KILL "$p" 2>/dev/null; done
    awk -v t="$KIT_T" '$5 ~ "^"t {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null
    done
    ids=$(ls "$KIT_T/root/metadata/containers" 2>/dev/null | sed -n 's/^\([0-9a-f]\{64\}\)\.json$/\1/p')
    for id in $ids; do
        for h in /sys/fs/cgroup/*/"$id" /sys/fs/cgroup/*/*/"$id"; do
            [[ -d $h ]] || continue
            xargs -r kill -KILL <"$h/cgroup.procs" 2>/dev/null
            rmdir "$h" 2>/dev/null
        done
    done
    [[ -f $KIT_T/berth.log ]] && cp "$KIT_T/berth.log" "$KIT_WORK/berth-$name.log"
    rm -rf "$KIT_T"
    KIT_T= KIT_PID=
}
