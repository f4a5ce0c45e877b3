#!/usr/bin/env bash
# Builds berth's installer image (what charts/berth runs) as an OCI image
# archive, with no container daemon and no registry: the root filesystem is
# Debian's static busybox + the berth binary + packaging/installer/berth-install.sh
# + packaging/berth.service, packed as one reproducible layer with umoci.
# packaging/installer/Containerfile builds the same image with docker/buildah.
#
# Usage: scripts/build-installer-image.sh [--binary PATH] [--tag TAG] [--output FILE]
#   --binary  the berth binary (default: target/release/berth, built with
#             `cargo build --release -p berth` when missing)
#   --tag     image tag (default: the workspace version in Cargo.toml)
#   --output  the archive (default: target/berth-installer-<tag>.oci.tar)
#
# The archive is an OCI image layout in a tar file (skopeo's and buildah's
# "oci-archive"), its image named by the tag. To use it on a node or push it:
#   skopeo copy oci-archive:target/berth-installer-0.1.0.oci.tar docker://REGISTRY/berth-installer:0.1.0
#   ctr -n k8s.io images import --index-name REGISTRY/berth-installer:0.1.0 target/berth-installer-0.1.0.oci.tar
#   podman load -i target/berth-installer-0.1.0.oci.tar
# Needs umoci and busybox-static (installed with apt-get when missing, as root).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

binary=
tag=
output=
while [[ $# -gt 0 ]]; do
    case $1 in
        --binary) binary=$2; shift 2 ;;
        --tag) tag=$2; shift 2 ;;
        --output) output=$2; shift 2 ;;
        -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "build-installer-image.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

if [[ -z $tag ]]; then
    tag=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n 1)
    [[ -n $tag ]] || { echo "build-installer-image.sh: no version in Cargo.toml; pass --tag" >&2; exit 1; }
fi
output=${output:-target/berth-installer-$tag.oci.tar}

missing=()
command -v umoci >/dev/null || missing+=(umoci)
dpkg -s busybox-static 2>/dev/null | grep -q '^Status: install ok installed$' || missing+=(busybox-static)
if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        echo "build-installer-image.sh: install ${missing[*]} first (Debian packages)" >&2
        exit 1
    fi
    echo "build-installer-image.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || true
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if LC_ALL=C ldd /bin/busybox >/dev/null 2>&1; then
    echo "build-installer-image.sh: /bin/busybox is not static (install busybox-static)" >&2
    exit 1
fi

if [[ -z $binary ]]; then
    binary=target/release/berth
    if [[ ! -x $binary ]]; then
        echo "build-installer-image.sh: building $binary"
        cargo build --release -p berth
    fi
fi
[[ -x $binary ]] || { echo "build-installer-image.sh: no berth binary at $binary" >&2; exit 1; }
installer=packaging/installer/berth-install.sh
unit=packaging/berth.service
for f in "$installer" "$unit"; do
    [[ -f $f ]] || { echo "build-installer-image.sh: missing $f" >&2; exit 1; }
done

# Reproducible: every timestamp is the last commit's (or 0 outside git).
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)

work=$(mktemp -d "${TMPDIR:-/tmp}/berth-installer-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs

echo "build-installer-image.sh: root filesystem"
mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,usr/share/berth,etc,tmp,root,proc,sys,dev,run,var/tmp}
chmod 1777 "$rootfs/tmp" "$rootfs/var/tmp"
chmod 700 "$rootfs/root"
cp /bin/busybox "$rootfs/bin/busybox"
chmod 755 "$rootfs/bin/busybox"
# Every applet as a symlink, where busybox would install it (sh, nsenter,
# cp, sed, tac, stat, cmp, mktemp, ...).
while read -r applet; do
    [[ $applet == bin/busybox || -e $rootfs/$applet || -L $rootfs/$applet ]] && continue
    ln -s /bin/busybox "$rootfs/$applet"
done < <(/bin/busybox --list-full)
install -m 0755 "$binary" "$rootfs/usr/local/bin/berth"
install -m 0755 "$installer" "$rootfs/usr/local/bin/berth-install"
install -m 0644 "$unit" "$rootfs/usr/share/berth/berth.service"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
chmod 644 "$rootfs/etc/passwd" "$rootfs/etc/group"

echo "build-installer-image.sh: layer"
tar -C "$rootfs" --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner \
    --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -cf "$work/layer.tar" .

echo "build-installer-image.sh: OCI image (umoci)"
oci=$work/oci
umoci init --layout "$oci"
umoci new --image "$oci:$tag"
umoci raw add-layer --image "$oci:$tag" --history.created "$created" \
    --history.created_by "scripts/build-installer-image.sh" \
    --history.comment "busybox-static, berth, berth-install, berth.service" "$work/layer.tar"
umoci config --image "$oci:$tag" --created "$created" --architecture amd64 --os linux \
    --author "berth" \
    --config.entrypoint /usr/local/bin/berth-install --config.cmd run \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.workingdir / \
    --config.label org.opencontainers.image.title=berth-installer \
    --config.label "org.opencontainers.image.description=Installs the berth CRI runtime onto a node (charts/berth)" \
    --config.label "org.opencontainers.image.version=$tag" \
    --config.label "org.opencontainers.image.revision=$revision" \
    --config.label "org.opencontainers.image.created=$created" \
    --history.created "$created" --history.created_by "umoci config" \
    --manifest.annotation "org.opencontainers.image.ref.name=$tag"
umoci gc --layout "$oci"
# A layout whose timestamps are the epoch's too.
chmod -R a+rX "$oci"
find "$oci" -exec touch -h -d "@$epoch" {} +

mkdir -p "$(dirname "$output")"
tar -C "$oci" --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner -cf "$output.tmp" .
mv -f "$output.tmp" "$output"

# Check what was written: unpack the archive with umoci and, as root, run
# the image's installer in a chroot of it against a scratch host root (no
# systemd there: files only), then uninstall and compare.
echo "build-installer-image.sh: checking $output"
check=$work/check
mkdir -p "$check/layout"
tar -C "$check/layout" -xf "$output"
[[ $(umoci ls --layout "$check/layout") == "$tag" ]] || { echo "build-installer-image.sh: tag $tag not in the archive" >&2; exit 1; }
if [[ $(id -u) -eq 0 ]]; then
    umoci unpack --image "$check/layout:$tag" "$check/bundle" >/dev/null
    r=$check/bundle/rootfs
    cmp -s "$binary" "$r/usr/local/bin/berth" || { echo "build-installer-image.sh: berth differs in the image" >&2; exit 1; }
    mkdir -p "$r/host/etc" "$r/host/run" "$r/host/usr/local/bin" "$r/cfg"
    printf 'log_level = "info"\n' >"$r/cfg/config.toml"
    before=$(cd "$r/host" && find . | LC_ALL=C sort)
    chroot "$r" /usr/local/bin/berth-install >/dev/null 2>&1 && { echo "build-installer-image.sh: no usage error" >&2; exit 1; }
    chroot "$r" /usr/bin/env -i HOST_ROOT=/host BERTH_CONFIG_SRC=/cfg /usr/local/bin/berth-install install >"$check/install.log" 2>&1 ||
        { cat "$check/install.log" >&2; exit 1; }
    if ! cmp -s "$r/usr/local/bin/berth" "$r/host/usr/local/bin/berth" ||
        ! cmp -s "$r/usr/share/berth/berth.service" "$r/host/etc/systemd/system/berth.service"; then
        echo "build-installer-image.sh: the image's installer did not install berth" >&2
        exit 1
    fi
    chroot "$r" /usr/bin/env -i HOST_ROOT=/host /usr/local/bin/berth-install uninstall >>"$check/install.log" 2>&1 ||
        { cat "$check/install.log" >&2; exit 1; }
    [[ $before == "$(cd "$r/host" && find . | LC_ALL=C sort)" ]] ||
        { echo "build-installer-image.sh: uninstall in the image left changes" >&2; exit 1; }
    echo "build-installer-image.sh: the image's berth-install installs and uninstalls (chroot, scratch host root)"
fi

echo "build-installer-image.sh: wrote $output ($(du -h "$output" | cut -f1), tag $tag)"
