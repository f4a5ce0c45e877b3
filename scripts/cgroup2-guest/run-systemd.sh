#!/usr/bin/env bash
# Runs a binary inside guest B — Debian bookworm with systemd as PID 1 on a
# pure cgroup v2 hierarchy, dbus running — as the oneshot unit
# berth-guest-run.service, and passes its output and exit code back:
#
#   scripts/cgroup2-guest/run-systemd.sh <binary> [args...]
#
# The command runs as root in /tmp, in the unit's cgroup
# (/system.slice/berth-guest-run.service), and can talk to systemd over the
# system bus at /run/dbus/system_bus_socket. A host binary's directory (its
# cargo profile dir when it sits in `deps/`) is shared read-only at the same
# absolute path, as are BERTH_GUEST_SHARE's dirs; the guest's own /usr is
# bookworm's, so host binaries built on bookworm run (libseccomp2 and
# busybox-static are installed). An absolute path that does not exist on the
# host is taken as one of the guest's own programs. The root image is
# booted as a QEMU snapshot: nothing a run writes to it is kept.
#
# Exit code, output, BERTH_GUEST_TIMEOUT (default 360), BERTH_GUEST_RESULTS,
# BERTH_GUEST_ENV and `skipped:` as for run.sh. The run's directory also
# gets the guest's journal (journal.txt).
set -euo pipefail
# shellcheck source=scripts/cgroup2-guest/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ $# -lt 1 ]]; then
    echo "usage: $0 <binary> [args...]" >&2
    exit 2
fi
if [[ -e $1 ]]; then
    bin=$(realpath "$1")
    [[ -x $bin ]] || g_die "$bin is not an executable file"
elif [[ $1 == /* ]]; then
    bin=$1 # the guest's own
else
    g_die "$1: no such file (give a path; an absolute one may be the guest's own)"
fi
shift

envtext=$(bash "$G_DIR/build.sh" guest-b --print-env) || {
    rc=$?
    if [[ $rc -eq $G_NO_QEMU ]]; then
        echo "skipped: $(basename "$bin") in the systemd guest: QEMU cannot be installed or run here"
        exit 0
    fi
    g_die "building guest B failed (exit $rc)"
}
VMLINUX='' ROOTFS_B='' INITRD_B=''
eval "$envtext"

keep=0
if [[ -n ${BERTH_GUEST_RESULTS:-} ]]; then
    results=$BERTH_GUEST_RESULTS
    mkdir -p "$results"
    rm -f "$results"/{exit-code,output,console.log,journal.txt}
    keep=1
else
    results=$(mktemp -d "${TMPDIR:-/tmp}/berth-guest-b.XXXXXX")
fi
g_prepare_run "$results" "$bin" "$@"

# shellcheck disable=SC2046
g_boot_and_report "$results" "${BERTH_GUEST_TIMEOUT:-360}" "guest B ($(basename "$bin"))" \
    qemu-system-x86_64 $(g_qemu_common "$VMLINUX") -initrd "$INITRD_B" \
    -drive "file=$ROOTFS_B,format=raw,if=virtio,snapshot=on" \
    "${G_VIRTFS[@]}" \
    -append "console=ttyS0 quiet loglevel=1 panic=-1 mitigations=off systemd.unit=berth-guest-run.service systemd.unified_cgroup_hierarchy=1 systemd.show_status=0 systemd.log_level=warning"
if [[ $G_RC -eq 0 && $keep -eq 0 ]]; then
    rm -rf "$results"
else
    g_log "kept $results (output, console.log, journal.txt)"
fi
exit "$G_RC"
