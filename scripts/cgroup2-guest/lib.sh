# shellcheck shell=bash
# Shared by build.sh, run.sh and run-systemd.sh; source it, do not run it.
#
# Adapted from the tested recipe in /work/shared/tools/cgroup2-guest/
# (build-and-boot.sh, init-guestA, init-guestB): Debian's kernel package taken
# apart without installing it, its vmlinux booted through the PVH entry
# (no decompression under TCG), a busybox initramfs, host dirs over 9p.

# shellcheck disable=SC2034 # the G_* settings are for the scripts that source this
G_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
G_CACHE=${BERTH_GUEST_CACHE:-/var/cache/berth-test/cgroup2-guest}
G_MIRROR=${BERTH_GUEST_MIRROR:-http://deb.debian.org/debian}
# TCG by default: /dev/kvm on the development VM is a software "PVM"
# hypervisor under which stock kernels hang. BERTH_GUEST_ACCEL=kvm on a host
# with real (or nested) VMX/SVM.
G_ACCEL=${BERTH_GUEST_ACCEL:-tcg}
G_MEM=${BERTH_GUEST_MEM:-1536}
G_SMP=${BERTH_GUEST_SMP:-2}
# Exit code of build.sh when QEMU cannot be installed or run at all: the
# runners turn it into `skipped: ...`.
# shellcheck disable=SC2034
G_NO_QEMU=77

g_log() { echo "cgroup2-guest: $*" >&2; }
g_die() {
    g_log "error: $*"
    exit 1
}

# Seconds since the epoch with fractions, for timings.
g_now() { date +%s.%N; }
g_since() { awk -v s="$1" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }'; }

g_is_installed() {
    dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed$'
}

# Installs the Debian packages named (those missing) with apt-get; the
# package lists are refreshed only when something must be installed.
g_apt_install() {
    local missing=() p
    for p in "$@"; do
        g_is_installed "$p" || missing+=("$p")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    command -v apt-get >/dev/null 2>&1 || {
        g_log "apt-get not found; install ${missing[*]} by hand"
        return 1
    }
    g_log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || g_log "warning: apt-get update failed"
    apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" >/dev/null
}

# Single-quotes each argument for a POSIX shell (the guests run busybox
# ash or dash, which have no $'...').
g_shquote() {
    local a quoted=()
    for a in "$@"; do
        quoted+=("'${a//\'/\'\\\'\'}'")
    done
    echo "${quoted[*]}"
}

# The QEMU options both guests share.
g_qemu_common() {
    local vmlinux=$1
    if [[ $G_ACCEL == kvm ]]; then
        echo "-enable-kvm -cpu host"
    else
        echo "-accel tcg,thread=multi -cpu max"
    fi
    echo "-m $G_MEM -smp $G_SMP -nographic -no-reboot -nic none -kernel $vmlinux"
}

# Prepares the per-run directory shared with a guest (writable, tag
# `results`) and fills in the command to run: `cmd.sh` (the binary and its
# arguments, quoted), `env.sh` (variables passed through) and `mounts`
# (tag and guest path of each read-only host dir, which the guest mounts at
# the same absolute path so paths compiled into the binary, such as
# CARGO_BIN_EXE_*, resolve). Sets G_VIRTFS (QEMU options for the shares).
# Read-only dirs: the binary's own, or its cargo profile dir when it sits in
# `deps/`; plus BERTH_GUEST_SHARE (colon-separated dirs).
g_prepare_run() {
    local results=$1 bin=$2
    shift 2
    local bindir dirs=() d i=0
    bindir=$(dirname "$bin")
    [[ $(basename "$bindir") == deps ]] && bindir=$(dirname "$bindir")
    case "$bindir" in
        /usr | /usr/*) ;; # the guests have a /usr of their own
        *) dirs+=("$bindir") ;;
    esac
    if [[ -n ${BERTH_GUEST_SHARE:-} ]]; then
        local extra
        IFS=: read -r -a extra <<<"$BERTH_GUEST_SHARE"
        for d in "${extra[@]}"; do
            [[ -n $d ]] && dirs+=("$(realpath "$d")")
        done
    fi
    G_VIRTFS=(-virtfs "local,path=$results,mount_tag=results,security_model=passthrough,id=results")
    : >"$results/mounts"
    for d in "${dirs[@]}"; do
        [[ -d $d ]] || g_die "$d is not a directory"
        G_VIRTFS+=(-virtfs "local,path=$d,mount_tag=ro$i,security_model=none,readonly=on,id=ro$i")
        echo "ro$i $d" >>"$results/mounts"
        i=$((i + 1))
    done
    echo "exec $(g_shquote "$bin" "$@")" >"$results/cmd.sh"
    : >"$results/env.sh"
    local v
    for v in RUST_BACKTRACE RUST_LOG RUST_TEST_THREADS RUST_TEST_NOCAPTURE RUST_MIN_STACK \
        ${BERTH_GUEST_ENV:-}; do
        [[ -n ${!v+x} ]] && echo "export $v=$(g_shquote "${!v}")" >>"$results/env.sh"
    done
    return 0
}

# Runs QEMU (the command in "$@") under `timeout`, printing the guest's
# console as it comes: the command's output (between the guest's markers),
# the guest's own `berth-guest:` lines and kernel errors (loglevel=1 keeps
# the rest of the kernel's noise out); the whole console goes to
# $results/console.log. Then reads the exit code the guest wrote to the
# share. Sets G_RC to the command's exit code, or to 1 (after saying why)
# when the guest did not boot, did not finish or timed out.
g_boot_and_report() {
    local results=$1 limit=$2 what=$3
    shift 3
    local t0 qrc took
    t0=$(g_now)
    set +e
    timeout --kill-after=10 "$limit" "$@" </dev/null 2>&1 |
        tr -d '\r' | tee "$results/console.log" |
        sed -u -n -e '/^berth-guest-output-begin$/,/^berth-guest-output-end$/{/^berth-guest-output-/d;p;b;}' \
            -e '/^berth-guest: /p' -e '/Kernel panic\|BUG:\|Oops\|qemu-system/p'
    qrc=${PIPESTATUS[0]}
    set -e
    took=$(g_since "$t0")
    # shellcheck disable=SC2034 # read by the runner that called this
    G_RC=1
    if [[ $qrc -eq 124 || $qrc -eq 137 ]]; then
        g_log "$what: timed out after ${limit}s; last console lines:"
        tail -n 30 "$results/console.log" >&2
        return 0
    fi
    if [[ ! -s $results/exit-code ]]; then
        g_log "$what: the guest reported no exit code (qemu exit $qrc, ${took}s); last console lines:"
        tail -n 30 "$results/console.log" >&2
        return 0
    fi
    local rc
    rc=$(tr -d '[:space:]' <"$results/exit-code")
    if [[ ! $rc =~ ^[0-9]+$ ]]; then
        g_log "$what: bad exit code '$rc' from the guest"
        return 0
    fi
    G_RC=$rc
    g_log "$what: exit code $rc after ${took}s (boot, run and poweroff)"
}
