#!/usr/bin/env bash
# Runs a host binary inside guest A — Debian's kernel under QEMU, a pure
# cgroup v2 hierarchy with every controller enabled, no systemd — and
# passes its output and exit code back:
#
#   scripts/cgroup2-guest/run.sh <binary> [args...]
#
# The binary's directory (its cargo profile dir when it sits in `deps/`, so
# CARGO_BIN_EXE_* paths resolve) is shared read-only over 9p at the same
# absolute path, as are the dirs in BERTH_GUEST_SHARE (colon-separated); the
# host's /usr is the guest's /usr (read-only), so dynamically linked host
# binaries run. The binary runs as root in /tmp (a tmpfs, TMPDIR), with
# RUST_BACKTRACE, RUST_LOG, RUST_TEST_* and the variables named in
# BERTH_GUEST_ENV passed through. Its output is printed as it comes and
# kept, with the console log, in the run's directory (BERTH_GUEST_RESULTS,
# else a temporary one, removed after a successful run).
#
# BERTH_GUEST_APPEND adds kernel command line arguments (e.g.
# `security=selinux selinux=1 enforcing=0` to boot with SELinux instead of
# AppArmor).
#
# Exit code: the binary's; 1 when the guest did not boot or finish within
# BERTH_GUEST_TIMEOUT seconds (default 300). Prints `skipped: ...` and exits 0
# only when QEMU cannot be installed or run at all.
#
# Adapted from the tested recipe in /work/shared/tools/cgroup2-guest/.
set -euo pipefail
# shellcheck source=scripts/cgroup2-guest/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ $# -lt 1 ]]; then
    echo "usage: $0 <binary> [args...]" >&2
    exit 2
fi
bin=$(realpath "$1")
shift
[[ -x $bin ]] || g_die "$bin is not an executable file"

envtext=$(bash "$G_DIR/build.sh" guest-a --print-env) || {
    rc=$?
    if [[ $rc -eq $G_NO_QEMU ]]; then
        echo "skipped: $(basename "$bin") in the cgroup v2 guest: QEMU cannot be installed or run here"
        exit 0
    fi
    g_die "building guest A failed (exit $rc)"
}
VMLINUX='' INITRD_A=''
eval "$envtext"

keep=0
if [[ -n ${BERTH_GUEST_RESULTS:-} ]]; then
    results=$BERTH_GUEST_RESULTS
    mkdir -p "$results"
    rm -f "$results"/{exit-code,output,console.log,dmesg}
    keep=1
else
    results=$(mktemp -d "${TMPDIR:-/tmp}/berth-guest-a.XXXXXX")
fi
g_prepare_run "$results" "$bin" "$@"

# shellcheck disable=SC2046
g_boot_and_report "$results" "${BERTH_GUEST_TIMEOUT:-300}" "guest A ($(basename "$bin"))" \
    qemu-system-x86_64 $(g_qemu_common "$VMLINUX") -initrd "$INITRD_A" \
    -virtfs local,path=/usr,mount_tag=hostusr,security_model=none,readonly=on,id=hostusr \
    "${G_VIRTFS[@]}" \
    -append "console=ttyS0 quiet loglevel=1 panic=-1 mitigations=off${BERTH_GUEST_APPEND:+ $BERTH_GUEST_APPEND}"
if [[ $G_RC -eq 0 && $keep -eq 0 ]]; then
    rm -rf "$results"
else
    g_log "kept $results (output, console.log, dmesg)"
fi
exit "$G_RC"
