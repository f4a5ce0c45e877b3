#!/usr/bin/env bash
# shellcheck disable=SC2317 # (the build steps run through step())
# Builds what the QEMU test guests boot, once, under a cache directory
# (${BERTH_GUEST_CACHE:-/var/cache/berth-test/cgroup2-guest}); later runs
# find it there and do nothing:
#
#   kernel/<package>_<version>/   Debian's linux-image-amd64 kernel, taken
#       apart without installing it: `vmlinux` (uncompressed, so QEMU boots
#       it through the PVH entry and TCG never runs the xz decompressor) and
#       the modules the guests load. Keyed on the kernel package and version.
#   guest-a/initrd-<hash>.gz      guest A: a busybox initramfs running
#       init-guest-a (pure cgroup v2, host /usr and dirs over 9p). Keyed on
#       the kernel, the init script, busybox and this script's layout.
#   guest-b/rootfs-<hash>.img     guest B: a debootstrapped bookworm (minbase +
#       systemd, dbus) on ext4, booted with systemd as PID 1 on cgroup v2,
#       with the cri-tools kit's static crictl and critest in /usr/local/bin
#       when the kit is there (keyed on them too).
#   guest-b/initrd-<hash>.gz      guest B's initramfs (init-guest-b, and the
#       unit and script that run the command, copied into the root at boot).
#
# Adapted from the tested recipe in /work/shared/tools/cgroup2-guest/
# (build-and-boot.sh); see lib.sh.
#
# Usage: build.sh [guest-a|guest-b|all] [--print-env]
#   --print-env  print the paths the runners need (VMLINUX=..., ...) on stdout
# Exit code 77: QEMU cannot be installed or run on this machine.
# Installs what it needs with apt-get when missing: qemu-system-x86, cpio,
# kmod, xz-utils, busybox-static (guest B also debootstrap, e2fsprogs).
set -euo pipefail
# shellcheck source=scripts/cgroup2-guest/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Bump when the layout of what is built changes (invalidates the cache).
LAYOUT=1
# Modules guest A loads (their dependencies are resolved by modprobe).
# `loop`: the block device the I/O figures of tests/cgroups.rs are read on.
MODS_A="virtio_pci 9pnet_virtio 9p overlay loop"
MODS_B="virtio_pci virtio_blk 9pnet_virtio 9p ext4"
# Packages of guest B's root (debootstrap --variant=minbase --include).
B_SUITE=bookworm
B_INCLUDE="systemd,systemd-sysv,dbus,kmod,libseccomp2,busybox-static,procps,iproute2"

target=all
print_env=0
for a in "$@"; do
    case $a in
        guest-a | guest-b | all) target=$a ;;
        --print-env) print_env=1 ;;
        *)
            echo "usage: $0 [guest-a|guest-b|all] [--print-env]" >&2
            exit 2
            ;;
    esac
done

[[ $(id -u) -eq 0 ]] || g_die "must run as root (apt-get, debootstrap, mkfs of a root image)"

# The cri-tools kit's binaries for guest B (BERTH_CRI_TOOLS, else the
# workplace's ../shared/tools/cri-tools beside the repository), if present.
KIT_BINS=${BERTH_CRI_TOOLS:-$G_DIR/../../../shared/tools/cri-tools}/bin
[[ -f $KIT_BINS/crictl.xz && -f $KIT_BINS/critest.xz ]] || KIT_BINS=
mkdir -p "$G_CACHE"/{kernel,guest-a,guest-b}

step() {
    local t0
    t0=$(g_now)
    "$@"
    g_log "$1 took $(g_since "$t0")s"
}

hash_of() { cat "$@" | sha256sum | cut -c1-16; }

# QEMU itself: the one thing whose absence skips the guests rather than
# failing them.
ensure_qemu() {
    if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
        if ! g_apt_install qemu-system-x86; then
            g_log "qemu-system-x86 cannot be installed"
            exit "$G_NO_QEMU"
        fi
    fi
    if ! qemu-system-x86_64 --version >/dev/null 2>&1; then
        g_log "qemu-system-x86_64 does not run"
        exit "$G_NO_QEMU"
    fi
}

# The kernel package (linux-image-<abi>-amd64) and its version; keys the
# cache. BERTH_GUEST_KERNEL_PKG picks another one.
resolve_kernel() {
    KPKG=${BERTH_GUEST_KERNEL_PKG:-}
    if [[ -z $KPKG ]]; then
        KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null |
            awk '/Depends: linux-image-[0-9]/ { print $2; exit }') || true
    fi
    if [[ -z $KPKG ]]; then
        g_log "no linux-image-amd64 in the package lists; apt-get update"
        apt-get update -qq >/dev/null || true
        KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null |
            awk '/Depends: linux-image-[0-9]/ { print $2; exit }') || true
    fi
    KPKGVER=
    [[ -n $KPKG ]] && KPKGVER=$(apt-cache policy "$KPKG" 2>/dev/null | awk '/Candidate:/ { print $2; exit }')
    if [[ -z $KPKG || -z $KPKGVER || $KPKGVER == "(none)" ]]; then
        # Offline with a warm cache: the newest kernel built before.
        local last
        # shellcheck disable=SC2012 # names are package_version
        last=$(ls -1t "$G_CACHE/kernel" 2>/dev/null | head -n 1)
        [[ -n $last && -e $G_CACHE/kernel/$last/.done ]] ||
            g_die "cannot find Debian's linux-image-amd64 (no package lists and nothing cached)"
        g_log "warning: no kernel package in the lists; using the cached $last"
        KDIR=$G_CACHE/kernel/$last
    else
        KDIR=$G_CACHE/kernel/${KPKG}_${KPKGVER//:/%}
    fi
}

build_kernel() {
    local tmp kver off
    g_apt_install kmod xz-utils
    tmp=$(mktemp -d "$G_CACHE/kernel/.tmp.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" EXIT
    (cd "$tmp" && apt-get download -q "$KPKG=$KPKGVER" >/dev/null 2>&1) ||
        (cd "$tmp" && apt-get update -qq >/dev/null && apt-get download -q "$KPKG=$KPKGVER" >/dev/null) ||
        g_die "cannot download $KPKG=$KPKGVER"
    dpkg-deb -x "$tmp"/*.deb "$tmp/root"
    kver=${KPKG#linux-image-}
    [[ -d $tmp/root/lib/modules/$kver ]] || g_die "$KPKG has no lib/modules/$kver"
    # vmlinuz is a bzImage around an xz stream: the ELF vmlinux inside has
    # the PVH note QEMU's -kernel boots directly.
    off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$tmp/root/boot/vmlinuz-$kver" | head -n 1 | cut -d: -f1) || true
    [[ -n $off ]] || g_die "no xz stream in vmlinuz-$kver"
    # (xz stops at the stream's end; tail's SIGPIPE is expected.)
    { tail -c +$((off + 1)) "$tmp/root/boot/vmlinuz-$kver" || true; } | xz -dc --single-stream >"$tmp/vmlinux"
    [[ $(head -c 4 "$tmp/vmlinux" | od -An -c | tr -d ' ') == 177ELF ]] || g_die "vmlinux is not an ELF file"
    # Only the modules the guests may want (the rest is hundreds of MB).
    local m=$tmp/root/lib/modules/$kver k=$tmp/modules/lib/modules/$kver
    mkdir -p "$k/kernel/drivers/net"
    cp -a "$m"/kernel/{arch,block,crypto,fs,lib,mm,net,virt} "$k/kernel/"
    cp -a "$m"/kernel/drivers/{virtio,block,char,md} "$k/kernel/drivers/"
    cp "$m"/kernel/drivers/net/*.ko "$k/kernel/drivers/net/"
    cp "$m"/modules.builtin* "$m"/modules.order "$k/"
    depmod -b "$tmp/modules" "$kver"
    mkdir -p "$tmp/out"
    mv "$tmp/vmlinux" "$tmp/modules" "$tmp/out/"
    echo "$kver" >"$tmp/out/kver"
    echo "$KPKG $KPKGVER" >"$tmp/out/package"
    touch "$tmp/out/.done"
    rm -rf "$KDIR"
    mv "$tmp/out" "$KDIR"
    rm -rf "$tmp"
    trap - EXIT
    # Older kernels are not wanted any more.
    local d
    for d in "$G_CACHE"/kernel/*/; do
        [[ ${d%/} == "$KDIR" ]] || rm -rf "${d%/}"
    done
}

# mkinitramfs OUT INIT MODULES [FILE...]: busybox and its applets in
# /guest/bin, the modules (dependencies first) in /guest/modules with their
# load order, INIT as /init, and each FILE in /guest/files.
mkinitramfs() {
    local out=$1 init=$2 mods=$3 kver t f
    shift 3
    kver=$(cat "$KDIR/kver")
    t=$(mktemp -d "$G_CACHE/.initrd.XXXXXX")
    mkdir -p "$t"/{guest/bin,guest/modules,guest/files,proc,sys,dev,tmp,newroot}
    cp /bin/busybox "$t/guest/bin/"
    for f in $(/bin/busybox --list); do
        [[ $f == busybox ]] || ln -s busybox "$t/guest/bin/$f"
    done
    for f in $mods; do
        modprobe -d "$KDIR/modules" -S "$kver" --show-depends "$f"
    done | awk '$1 == "insmod" && !seen[$2]++ { print $2 }' | while read -r ko; do
        cp "$ko" "$t/guest/modules/"
        basename "$ko" >>"$t/guest/modules/order"
    done
    touch "$t/guest/modules/order"
    for f in "$@"; do
        cp "$f" "$t/guest/files/"
    done
    install -m 0755 "$init" "$t/init"
    (cd "$t" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -6) >"$out.tmp"
    mv "$out.tmp" "$out"
    rm -rf "$t"
}

# Removes the files matching PATTERN in DIR except KEEP.
prune() {
    local dir=$1 pattern=$2 keep=$3 f
    for f in "$dir"/$pattern; do
        [[ -e $f && $f != "$keep" ]] && rm -rf "$f"
    done
    return 0
}

guest_a() {
    g_apt_install cpio kmod busybox-static
    local key
    key=$(hash_of <(echo "layout=$LAYOUT mods=$MODS_A kernel=$(basename "$KDIR")") \
        <(dpkg-query -W busybox-static 2>/dev/null) "$G_DIR/init-guest-a")
    INITRD_A=$G_CACHE/guest-a/initrd-$key.gz
    if [[ ! -s $INITRD_A ]]; then
        step mkinitramfs "$INITRD_A" "$G_DIR/init-guest-a" "$MODS_A"
        prune "$G_CACHE/guest-a" 'initrd-*.gz' "$INITRD_A"
    fi
}

build_rootfs_b() {
    local out=$1 tmp kver
    g_apt_install debootstrap e2fsprogs
    kver=$(cat "$KDIR/kver")
    tmp=$(mktemp -d "$G_CACHE/guest-b/.rootfs.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" EXIT
    local t0
    t0=$(g_now)
    if ! debootstrap --variant=minbase --include="$B_INCLUDE" "$B_SUITE" "$tmp/root" "$G_MIRROR" \
        >"$tmp/debootstrap.log" 2>&1; then
        tail -n 30 "$tmp/debootstrap.log" >&2
        g_die "debootstrap failed"
    fi
    g_log "debootstrap took $(g_since "$t0")s"
    local r=$tmp/root
    mkdir -p "$r/lib/modules"
    cp -a "$KDIR/modules/lib/modules/$kver" "$r/lib/modules/"
    depmod -b "$r" "$kver"
    echo berth-guest-b >"$r/etc/hostname"
    sed -i 's|^root:[^:]*:|root::|' "$r/etc/shadow"
    echo '/dev/vda / ext4 rw,noatime 0 1' >"$r/etc/fstab"
    # The cri-tools kit's static crictl and critest, so the CRI validation
    # suite (its AppArmor specs need an AppArmor kernel, which this guest's
    # Debian kernel is) can run in the guest; absent kit, absent binaries.
    if [[ -n $KIT_BINS ]]; then
        for b in crictl critest; do
            xz -dc "$KIT_BINS/$b.xz" >"$r/usr/local/bin/$b"
            chmod 0755 "$r/usr/local/bin/$b"
        done
        g_log "copied crictl and critest from $KIT_BINS"
    fi
    mkdir -p "$r/mnt/results"
    chroot "$r" apt-get clean
    rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin
    truncate -s 1536M "$tmp/rootfs.img"
    mkfs.ext4 -q -F -L berth-root -d "$r" "$tmp/rootfs.img"
    if [[ -n $KIT_BINS ]]; then
        debugfs -R 'ls /usr/local/bin' "$tmp/rootfs.img" 2>/dev/null | grep -q critest ||
            g_die "critest is not in guest B's root image"
    fi
    mv "$tmp/rootfs.img" "$out"
    rm -rf "$tmp"
    trap - EXIT
}

guest_b() {
    g_apt_install cpio kmod busybox-static
    local key
    key=$(hash_of <(echo "layout=$LAYOUT suite=$B_SUITE include=$B_INCLUDE kernel=$(basename "$KDIR")") \
        <(if [[ -n $KIT_BINS ]]; then cat "$KIT_BINS/crictl.xz" "$KIT_BINS/critest.xz"; fi))
    ROOTFS_B=$G_CACHE/guest-b/rootfs-$key.img
    if [[ ! -s $ROOTFS_B ]]; then
        step build_rootfs_b "$ROOTFS_B"
        prune "$G_CACHE/guest-b" 'rootfs-*.img' "$ROOTFS_B"
    fi
    key=$(hash_of <(echo "layout=$LAYOUT mods=$MODS_B kernel=$(basename "$KDIR")") \
        <(dpkg-query -W busybox-static 2>/dev/null) \
        "$G_DIR/init-guest-b" "$G_DIR/berth-guest-run.service" "$G_DIR/berth-guest-run")
    INITRD_B=$G_CACHE/guest-b/initrd-$key.gz
    if [[ ! -s $INITRD_B ]]; then
        step mkinitramfs "$INITRD_B" "$G_DIR/init-guest-b" "$MODS_B" \
            "$G_DIR/berth-guest-run.service" "$G_DIR/berth-guest-run"
        prune "$G_CACHE/guest-b" 'initrd-*.gz' "$INITRD_B"
    fi
}

# One build at a time per cache (test.sh and a developer may race).
exec 9>"$G_CACHE/.lock"
flock 9

t_all=$(g_now)
ensure_qemu
resolve_kernel
if [[ ! -e $KDIR/.done ]]; then
    step build_kernel
fi
case $target in
    guest-a) guest_a ;;
    guest-b) guest_b ;;
    all)
        guest_a
        guest_b
        ;;
esac
g_log "build ($target) done in $(g_since "$t_all")s; cache: $G_CACHE"

if [[ $print_env -eq 1 ]]; then
    echo "VMLINUX=$KDIR/vmlinux"
    [[ -n ${INITRD_A:-} ]] && echo "INITRD_A=$INITRD_A"
    [[ -n ${ROOTFS_B:-} ]] && echo "ROOTFS_B=$ROOTFS_B"
    [[ -n ${INITRD_B:-} ]] && echo "INITRD_B=$INITRD_B"
fi
exit 0
