#!/usr/bin/env bash
# The test command: installs the Debian packages the tests need, then runs the
# whole suite (unit tests, privileged integration tests, end-to-end tests,
# doctests), the CRI conformance suite (critest, scripts/conformance.sh),
# then berth-core's cgroup tests again in QEMU guests with a pure cgroup v2
# hierarchy, one with systemd as PID 1 (scripts/cgroup2-guest/), and its
# AppArmor tests on the guest's Debian kernel.
# Must run as root.
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
# Incremental artifacts only help edit-compile loops and cost gigabytes here.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

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

phase "installing CRIU with berth's patches (checkpoint/restore tests; skipped when the installed one was built from them)"
run bash scripts/install-criu.sh
# Where install-criu.sh puts it, first: the tests and the daemon look it up.
export PATH="/usr/local/sbin:$PATH"

phase "cargo build --workspace --bins (the end-to-end tests drive the real binary)"
run cargo build --workspace --bins

phase "cargo test --workspace --all-targets (target dir: ${CARGO_TARGET_DIR:-target})"
run cargo test --workspace --all-targets

phase "cargo test --workspace --doc"
run cargo test --workspace --doc

# critest, the CRI validation suite containerd and CRI-O run, with the
# reviewed list of expected failures (skipped with a message where the
# cri-tools kit is absent). Against the berth binary built above: a release
# build costs 15-18 minutes on a 2-core machine, more than the rest of this
# command together, and critest's verdicts do not depend on the optimization
# level (the same 107 passed, 1 failed, 14 skipped on both).
# `scripts/conformance.sh` alone builds and runs the release binary.
phase "conformance: critest against berth (scripts/conformance.sh)"
run bash scripts/conformance.sh --binary "${CARGO_TARGET_DIR:-target}/debug/berth"

# The path of berth-core's test binary `tests/$1.rs`: asked of the same
# `--workspace --all-targets` build as the test phase, so nothing is
# rebuilt (`-p berth-core` alone unifies features differently and rebuilt
# dozens of crates).
test_binary() {
    local dir=${2:-runtime-core/tests/}
    cargo test --workspace --all-targets --no-run --message-format=json |
        grep '"reason":"compiler-artifact"' | grep "\"name\":\"$1\"" |
        grep "\"src_path\":\"[^\"]*$dir" |
        sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1
}

# Runs berth-core's test binary `tests/$1.rs` in a QEMU guest: `$2` is
# guest-a (pure cgroup v2, no systemd: run.sh) or guest-b (systemd as PID 1
# on cgroup v2: run-systemd.sh). See scripts/cgroup2-guest/ and the README.
# BERTH_TEST_NO_SKIP makes a test that would skip there fail instead.
guest_tests() {
    local name=$1 guest=$2 runner bin rc=0 t0=$SECONDS
    shift 2 # the rest: more arguments for the test binary
    case $guest in
        guest-a) runner=run.sh ;;
        guest-b) runner=run-systemd.sh ;;
    esac
    bin=$(test_binary "$name" "${GUEST_TEST_DIR:-}") || true
    if [[ -z $bin || ! -x $bin ]]; then
        echo "==> FAILED: no test binary for tests/$name.rs (${GUEST_TEST_DIR:-runtime-core/tests/})" >&2
        exit 1
    fi
    echo "test binary: $bin (built in $((SECONDS - t0))s)"
    bash scripts/cgroup2-guest/build.sh "$guest" || rc=$?
    if [[ $rc -eq 77 ]]; then
        echo "skipped: $name in the $guest QEMU guest: QEMU cannot be installed or run here"
        return 0
    elif [[ $rc -ne 0 ]]; then
        echo "==> FAILED (exit $rc): scripts/cgroup2-guest/build.sh $guest" >&2
        exit "$rc"
    fi
    echo "guest ready after $((SECONDS - t0))s"
    BERTH_TEST_NO_SKIP=1 BERTH_GUEST_ENV=BERTH_TEST_NO_SKIP \
        run bash "scripts/cgroup2-guest/$runner" "$bin" --test-threads=1 "$@"
    echo "$name in the $guest guest: passed, $((SECONDS - t0))s for the phase"
}

phase "cgroup v2 tests in a QEMU guest (berth-core tests/cgroups.rs; scripts/cgroup2-guest/run.sh)"
guest_tests cgroups guest-a

# Overlays of many layers (named by fd past a page of options) on the
# guest's Debian 6.1 kernel, not only this host's. The idmapped case needs
# idmapped mounts on the guest's tmpfs (Linux 6.3+): it runs here only.
phase "overlay tests on the guest's 6.1 kernel (berth-core tests/overlay.rs)"
guest_tests overlay guest-a --skip an_idmapped_overlay_rootfs_of_many_layers_in_a_user_namespace

# AppArmor is off on this host's kernel and on by default in Debian's:
# profiles (berth's default and a deny-write one) confine a container's
# init and execs there, with Debian's apparmor_parser from the host's /usr.
phase "AppArmor tests on the guest's Debian kernel (berth-core tests/apparmor.rs)"
guest_tests apparmor guest-a
# The same through the CRI: berth serve in the guest (a loopback registry
# from the host's /usr, the host's CA bundle for the test's registry
# client), RuntimeDefault, Localhost (loaded or not) and Unconfined
# requests, and a privileged container on cgroup v2.
phase "AppArmor through the CRI in the guest (tests/tests/cri_security.rs apparmor)"
GUEST_TEST_DIR=tests/tests/ BERTH_GUEST_SHARE=/etc/ssl guest_tests cri_security guest-a apparmor
# RuntimeClass handlers of kind "oci" (runc, crun) and "shim-v2"
# (containerd-shim-runc-v2) through the CRI on cgroup v2 (crun refuses this
# host's hybrid hierarchy; runc and the shim run here too).
phase "runc, crun and containerd-shim handlers through the CRI in the guest (tests/tests/cri_oci_handlers.rs)"
GUEST_TEST_DIR=tests/tests/ BERTH_GUEST_SHARE=/etc/ssl guest_tests cri_oci_handlers guest-a

# SELinux: guest A booted with security=selinux (permissive) and the host's
# Debian reference policy (selinux-policy-default) loaded by its init.
phase "SELinux tests on the guest's Debian kernel (berth-core tests/selinux.rs)"
BERTH_GUEST_APPEND="security=selinux enforcing=0" BERTH_GUEST_SHARE=/etc/selinux \
    guest_tests selinux guest-a

# The systemd cgroup driver's tests need systemd as PID 1 and its D-Bus API:
# guest B.
phase "systemd cgroup driver tests in a QEMU guest with systemd (tests/cgroups_systemd.rs; run-systemd.sh)"
guest_tests cgroups_systemd guest-b

phase "Helm chart: templates rendered and checked, installer run against temporary host roots"
run bash charts/berth/tests/run.sh

phase "all tests passed"
