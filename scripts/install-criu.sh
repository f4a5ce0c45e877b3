#!/usr/bin/env bash
# Installs a CRIU that works on this kernel as /usr/local/sbin/criu, for
# berth's checkpoint/restore (the tests and `berth check` use it).
#
# Debian bookworm's criu 3.17 fails on new kernels ("vdso: Unexpected rt vDSO
# area bounds" on 6.18) and trixie's binary package needs a newer glibc, so
# this builds the criu binary from Debian trixie's *source* package (4.1.1 at
# the time of writing), fetched from the Debian mirror with apt's own
# signature and checksum checks. The system's apt sources are not changed:
# the trixie source index lives in a private apt state directory.
#
# berth's patches (scripts/criu-*.patch, each says why at its top) are
# applied:
# - criu-sockopt-6.16.patch: CRIU 4.1.1 cannot dump any TCP socket on Linux
#   6.16 and later (it asks for SO_PASSSEC, which the kernel now refuses on
#   inet sockets: criu issue #2705);
# - criu-join-userns.patch: restore into an existing user namespace
#   (`--join-ns user:`), which checkpoints of user-namespace pods need.
#
# Idempotent: does nothing when $CRIU_DEST was installed here from the same
# patches (a stamp beside the build cache), is at least 4.0, passes `criu
# check`, and can dump a process with a TCP socket on this kernel.
#
# Environment: CRIU_DEST (default /usr/local/sbin/criu), CRIU_WORKDIR (build
# cache, default /var/cache/berth-test/criu), DEBIAN_MIRROR, CRIU_SUITE
# (default trixie), FORCE=1 to rebuild.
set -euo pipefail

dest=${CRIU_DEST:-/usr/local/sbin/criu}
work=${CRIU_WORKDIR:-/var/cache/berth-test/criu}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=${CRIU_SUITE:-trixie}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

log() { echo "install-criu.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root"

# A criu that is new enough, passes `criu check` on this kernel, and can
# dump (leaving it running) a process that listens on a TCP socket.
good_criu() {
    local bin=$1 version major probe pid rc=0
    [[ -x $bin ]] || return 1
    version=$("$bin" --version 2>/dev/null | awk '/^Version:/ {print $2}')
    major=${version%%.*}
    [[ $major =~ ^[0-9]+$ && $major -ge 4 ]] || return 1
    "$bin" check >/dev/null 2>&1 || return 1
    command -v python3 >/dev/null || return 1
    probe=$(mktemp -d)
    setsid python3 -c 'import socket, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(); time.sleep(60)' \
        </dev/null >/dev/null 2>&1 &
    pid=$!
    sleep 0.3
    "$bin" dump --tree "$pid" --images-dir "$probe" --leave-running --tcp-established \
        --log-file dump.log >/dev/null 2>&1 || rc=1
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -rf "$probe"
    return $rc
}

patches=("$(dirname "${BASH_SOURCE[0]}")"/criu-*.patch)
stamp=$(cat "${patches[@]}" | sha256sum | cut -d' ' -f1)
installed=$work/installed.stamp
first=$(command -v criu || true)
if [[ -n $first && $(readlink -f "$first") != $(readlink -f "$dest") ]]; then
    log "warning: $first comes before $dest on PATH; berth runs the first criu on PATH"
fi
if [[ ${FORCE:-0} != 1 && -f $installed && $(cat "$installed") == "$stamp $dest" ]] &&
    good_criu "$dest"; then
    log "$dest works ($("$dest" --version | awk '/^Version:/ {print $2}'), berth's patches); nothing to do"
    exit 0
fi

# Build dependencies from bookworm, plus what criu runs for network
# namespaces (ip, iptables) at dump and restore time.
deps=(build-essential pkgconf patch python3 debian-archive-keyring libbsd-dev libcap-dev
    libgnutls28-dev libnet1-dev libnftables-dev libnl-3-dev libprotobuf-c-dev
    libprotobuf-dev protobuf-c-compiler protobuf-compiler uuid-dev iproute2 iptables)
missing=()
for p in "${deps[@]}"; do
    dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed$' || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        { apt-get update -qq || true; apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
fi

# The trixie source index, in a private apt state directory.
apt_dir=$work/apt
mkdir -p "$apt_dir/lists/partial" "$work/src"
echo "deb-src [signed-by=$keyring] $mirror $suite main" >"$apt_dir/sources.list"
apt_opts=(-o Dir::State::Lists="$apt_dir/lists" -o Dir::Etc::SourceList="$apt_dir/sources.list"
    -o Dir::Etc::SourceParts=/dev/null -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
    -o APT::Sandbox::User=root)
apt-get "${apt_opts[@]}" update -qq >/dev/null || die "cannot read the $suite source index from $mirror"

# Newest criu in the (signature-checked) Sources index: its pool directory
# and the upstream tarball's SHA-256.
stanza=$(apt-cache "${apt_opts[@]}" showsrc criu | awk -v RS= '/(^|\n)Package: criu\n/')
[[ -n $stanza ]] || die "no criu source package in $suite"
version=$(awk '/^Version:/ {print $2}' <<<"$stanza" | sort -V | tail -n 1)
stanza=$(awk -v RS= -v v="$version" 'index($0, "\nVersion: " v "\n")' <<<"$stanza")
dir=$(awk '/^Directory:/ {print $2; exit}' <<<"$stanza")
read -r sha orig < <(awk '/^Checksums-Sha256:/ {f=1; next} /^[^ ]/ {f=0}
    f && $3 ~ /\.orig\.tar\./ {print $1, $3; exit}' <<<"$stanza")
[[ -n $dir && -n ${sha:-} && -n ${orig:-} ]] || die "cannot parse the criu $version source stanza"
upstream=${version#*:}
upstream=${upstream%-*}

tarball=$work/src/$orig
if ! echo "$sha  $tarball" | sha256sum -c --status 2>/dev/null; then
    log "downloading criu $version source"
    rm -f "$tarball"
    /usr/lib/apt/apt-helper "${apt_opts[@]}" download-file "$mirror/$dir/$orig" "$tarball" "SHA256:$sha" >/dev/null
fi

src=$work/src/criu-$upstream
if [[ ! -f $src/.unpacked || $(cat "$src/.unpacked") != "$stamp" || ${FORCE:-0} == 1 ]]; then
    rm -rf "$src"
    tar -C "$work/src" -xf "$tarball"
    for p in "${patches[@]}"; do
        log "applying $(basename "$p")"
        patch -d "$src" -p1 --quiet <"$p" || die "$p does not apply to criu $upstream"
    done
    echo "$stamp" >"$src/.unpacked"
fi
log "building criu $upstream (log: $work/build.log)"
make -C "$src" -j"$(nproc)" criu >"$work/build.log" 2>&1 ||
    { tail -n 30 "$work/build.log" >&2; die "build failed"; }
install -D -m 0755 "$src/criu/criu" "$dest"
good_criu "$dest" || die "$dest fails \`criu check\` or cannot dump a TCP socket here"
echo "$stamp $dest" >"$installed"
log "installed $dest (criu $upstream, patched; criu check passes)"
