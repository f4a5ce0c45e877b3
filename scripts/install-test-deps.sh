#!/usr/bin/env bash
# Install the Debian packages berth's tests and benchmark need (Debian
# bookworm / Ubuntu, run as root). Idempotent: packages already installed are
# left alone, and `apt-get update` only runs when something must be installed.
#
#   libseccomp-dev, pkg-config  required to build: seccomp filters are compiled
#                   with libseccomp
#   busybox-static  required: the tests and the example build their container
#                   rootfs (and the test images) from the static /bin/busybox
#   docker-registry required: the image tests pull from a real registry (the
#                   CNCF distribution registry) that they start on loopback
#   apache2-utils   required: `htpasswd` for the registry's auth tests
#   containernetworking-plugins  required: the pod network tests run the
#                   real CNI plugins (bridge, host-local, loopback, portmap,
#                   firewall, tuning) from /usr/lib/cni
#   iptables        required: the portmap and firewall plugins run it
#   golang-go, golang-github-docker-spdystream-dev  required: the SPDY/3.1
#                   interop test builds a Go peer on spdystream, the library
#                   Kubernetes' SPDY transport uses (offline, GOPATH mode)
#   python3-websocket required: websocket-client, the streaming tests' client
#                   that berth did not write (run with Debian's /usr/bin/python3)
#   umoci, skopeo   required: tests/tests/image_tools.rs builds images with
#                   umoci (insert, repack with whiteouts, many layers) and
#                   pushes them with skopeo, so berth pulls layers exactly as
#                   those tools write them
#   xz-utils        required: tests/tests/crictl.rs unpacks crictl from the
#                   cri-tools kit's bin/crictl.xz
#   python3-grpcio, python3-grpc-tools  required: a CRI client on grpc-core
#                   (not grpc-go), with stubs generated from cri/proto/api.proto
#                   at test time (tests/tests/python_grpc.rs)
#   apparmor        required: apparmor_parser, which loads the AppArmor
#                   profiles of berth-core's tests/apparmor.rs in QEMU guest
#                   A (this host's kernel has AppArmor off); the unit tests
#                   compile berth's default profile with it
#   selinux-policy-default, policycoreutils  required: Debian's reference
#                   policy and load_policy, for berth-core's tests/selinux.rs
#                   in QEMU guest A booted with SELinux (this host has none;
#                   installing them changes nothing on a host without it)
#   runc, crun, containerd  for the tests and benchmarks, not for berth
#                   itself (--no-bench skips them): tests/tests/
#                   cri_oci_handlers.rs runs runc and crun as RuntimeClass
#                   handlers of kind "oci" and containerd's
#                   containerd-shim-runc-v2 as one of kind "shim-v2" (they
#                   print "skipped:" on a host without them, and fail in the
#                   QEMU guest phase, which skips nothing); the benchmarks
#                   compare against containerd's CRI plugin (started on a
#                   private socket, never as a service)
#
# Usage: scripts/install-test-deps.sh [--no-bench]
#   --no-bench   install only what berth itself needs (skip runc, crun, containerd)
set -euo pipefail

required=(busybox-static libseccomp-dev pkg-config docker-registry apache2-utils containernetworking-plugins iptables python3-websocket python3-grpcio python3-grpc-tools golang-go golang-github-docker-spdystream-dev umoci skopeo xz-utils apparmor selinux-policy-default policycoreutils)
optional=(runc crun containerd)

case "${1:-}" in
    "") ;;
    --no-bench) optional=() ;;
    *) echo "usage: $0 [--no-bench]" >&2; exit 2 ;;
esac

if [[ $(id -u) -ne 0 ]]; then
    echo "install-test-deps.sh: must run as root (try: sudo $0)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive

is_installed() {
    # `dpkg -s` also succeeds for removed packages whose config files remain,
    # so look at the status line rather than only the exit code.
    dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed$'
}

missing_required=()
for pkg in "${required[@]}"; do
    is_installed "$pkg" || missing_required+=("$pkg")
done
missing_optional=()
for pkg in "${optional[@]+"${optional[@]}"}"; do
    is_installed "$pkg" || missing_optional+=("$pkg")
done

if [[ ${#missing_required[@]} -eq 0 && ${#missing_optional[@]} -eq 0 ]]; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    if [[ ${#missing_required[@]} -gt 0 ]]; then
        echo "install-test-deps.sh: apt-get not found; install ${missing_required[*]} by hand" >&2
        exit 1
    fi
    echo "install-test-deps.sh: warning: apt-get not found; ${missing_optional[*]} not installed (only the handler tests and benchmarks use them)" >&2
    exit 0
fi

apt_install() {
    apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" >/dev/null
}

echo "install-test-deps.sh: installing ${missing_required[*]-} ${missing_optional[*]-}"
if ! apt-get update -qq >/dev/null; then
    # A stale or partly broken index may still be enough; let the install decide.
    echo "install-test-deps.sh: warning: apt-get update failed" >&2
fi

if [[ ${#missing_required[@]} -gt 0 ]]; then
    if ! apt_install "${missing_required[@]}"; then
        echo "install-test-deps.sh: failed to install ${missing_required[*]}" >&2
        exit 1
    fi
fi

# The optional packages one at a time, so one missing from the archive does
# not keep the other out.
for pkg in "${missing_optional[@]+"${missing_optional[@]}"}"; do
    if ! apt_install "$pkg"; then
        echo "install-test-deps.sh: warning: could not install $pkg (only the benchmark uses it)" >&2
    fi
done
