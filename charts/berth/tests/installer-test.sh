#!/usr/bin/env bash
# Runs packaging/installer/berth-install.sh for real against temporary host
# roots (HOST_ROOT), under busybox sh with only busybox's applets on PATH (as
# in the installer image), with stub-host.sh standing in for
# `nsenter -t 1 ... systemctl/crictl` and recording every host command.
#
# Usage: installer-test.sh CONFIG_SRC
#   CONFIG_SRC  the installer's view of the chart's ConfigMap (config.toml,
#               certs.d/<registry>/hosts.toml), laid out by run.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../../.." && pwd)
installer=$repo/packaging/installer/berth-install.sh
config_src=${1:?usage: installer-test.sh CONFIG_SRC}

T=$(mktemp -d "${TMPDIR:-/tmp}/berth-installer-test.XXXXXX")
trap 'rm -rf "$T"' EXIT

passed=0
failed=0
ok() {
    echo "  ok: $*"
    passed=$((passed + 1))
}
fail() {
    echo "  FAILED: $*" >&2
    failed=$((failed + 1))
}
check() { # description command...
    local what=$1
    shift
    if "$@"; then ok "$what"; else fail "$what"; fi
}

# busybox's applets only, as in the image.
mkdir -p "$T/bb"
busybox --install -s "$T/bb"

# The image's files.
unit=$repo/packaging/berth.service
if [[ ! -f $unit ]]; then
    unit=$T/berth.service
    printf '[Service]\nType=notify\nExecStart=/usr/local/bin/berth serve\nKillMode=process\n[Install]\nWantedBy=multi-user.target\n' >"$unit"
    echo "  note: packaging/berth.service missing; using a stand-in"
fi
printf '\177ELF fake berth v1\n' >"$T/berth-v1"
printf '\177ELF fake berth v2\n' >"$T/berth-v2"
chmod 755 "$T/berth-v1" "$T/berth-v2"

# A kubeadm node's files (Debian/Ubuntu packages, kubelet config file with
# the endpoint, and the flag in kubeadm-flags.env and /etc/default/kubelet).
make_host() { # dir [crictl]
    local h=$1
    mkdir -p "$h"/etc/default "$h"/etc/systemd/system/multi-user.target.wants \
        "$h"/etc/systemd/system/kubelet.service.d "$h"/usr/local/bin "$h"/var/lib/kubelet "$h"/run
    cat >"$h/var/lib/kubelet/config.yaml" <<'EOF'
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous:
    enabled: false
cgroupDriver: systemd
containerRuntimeEndpoint: unix:///var/run/containerd/containerd.sock
clusterDNS:
- 10.96.0.10
clusterDomain: cluster.local
staticPodPath: /etc/kubernetes/manifests
EOF
    chmod 600 "$h/var/lib/kubelet/config.yaml"
    echo 'KUBELET_KUBEADM_ARGS="--container-runtime-endpoint=unix:///var/run/containerd/containerd.sock --pod-infra-container-image=registry.k8s.io/pause:3.9"' \
        >"$h/var/lib/kubelet/kubeadm-flags.env"
    echo 'KUBELET_EXTRA_ARGS=--node-ip=192.0.2.10 --container-runtime-endpoint unix:///run/containerd/containerd.sock' \
        >"$h/etc/default/kubelet"
    cat >"$h/etc/systemd/system/kubelet.service.d/10-kubeadm.conf" <<'EOF'
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
EOF
    echo '#!/bin/sh' >"$h/usr/local/bin/kubectl-helper"
    chmod 755 "$h/usr/local/bin/kubectl-helper"
    if [[ ${2:-} == crictl ]]; then
        printf '#!/bin/sh\n# stand-in: the stub host answers crictl\n' >"$h/usr/local/bin/crictl"
        chmod 755 "$h/usr/local/bin/crictl"
    fi
    # The node's kubelet is enabled and running.
}

# Every entry's type, mode and owner; for all but directories also size,
# mtime (whole seconds), link target and content hash. Directories' own
# mtimes and sizes are left out (they change when entries come and go).
snapshot() {
    (
        cd "$1"
        find . -type d -printf 'd %m %U:%G %p\n' | LC_ALL=C sort
        find . ! -type d -printf '%y %m %U:%G %s %T@ %p -> %l\n' | sed -E 's/ ([0-9]+)\.[0-9]+ / \1 /' | LC_ALL=C sort
        find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum
    )
}
snapshot_content() { snapshot "$@"; }

# Runs the installer: inst HOST STUBSTATE ARGS... (extra env via `env` before)
inst() {
    local host=$1 stub=$2
    shift 2
    mkdir -p "$stub"
    env -i PATH="$T/bb" TMPDIR="$T" HOST_ROOT="$host" STUB_STATE="$stub" \
        BERTH_INSTALLER_HOST_CMD="$here/stub-host.sh" \
        BERTH_BINARY="${BIN:-$T/berth-v1}" BERTH_UNIT="$unit" BERTH_CONFIG_SRC="${CONFIG:-$config_src}" \
        BERTH_SWITCH_RUNTIME="${SWITCH:-false}" BERTH_INSTALLER_TIMEOUT="${TIMEOUT:-5}" \
        busybox sh "$installer" "$@"
}

calls_since() { # stubstate mark-lines
    tail -n +"$(($2 + 1))" "$1/calls"
}
ncalls() { [[ -f $1/calls ]] && wc -l <"$1/calls" || echo 0; }
has_call() { grep -qxF "$2" <<<"$1"; }
# The state-changing systemctl calls in a list of calls.
mutating() { grep -E '^systemctl (daemon-reload|enable|disable|start|stop|restart)' <<<"$1" || true; }

echo "== installer: install, reinstall, upgrade, config change, uninstall (switchRuntime=false)"
H=$T/a/host S=$T/a/stub
make_host "$H" crictl
mkdir -p "$S/enabled" "$S/active"
touch "$S/enabled/kubelet.service" "$S/active/kubelet.service"
before=$(snapshot_content "$H")
inst "$H" "$S" install >"$T/a.log" 2>&1 || { cat "$T/a.log"; fail "install exited non-zero"; }
c=$(cat "$S/calls")
check "berth installed (same bytes, mode 755)" cmp -s "$T/berth-v1" "$H/usr/local/bin/berth"
check "binary mode 755" test "$(stat -c %a "$H/usr/local/bin/berth")" = 755
check "unit installed" cmp -s "$unit" "$H/etc/systemd/system/berth.service"
check "config.toml installed" cmp -s "$config_src/config.toml" "$H/etc/berth/config.toml"
nhosts=0
for f in "$config_src"/certs.d/*/hosts.toml; do
    [[ -f $f ]] || continue
    d=${f%/hosts.toml}
    nhosts=$((nhosts + 1))
    check "hosts.toml for ${d##*/} installed" cmp -s "$f" "$H/etc/berth/certs.d/${d##*/}/hosts.toml"
done
check "at least one registry hosts.toml was tested" test "$nhosts" -gt 0
check "manifest written" test -f "$H/var/lib/berth/installer/manifest"
check "daemon-reload, enable, start, in that order" \
    test "$(mutating "$c")" = "$(printf 'systemctl daemon-reload\nsystemctl enable berth.service\nsystemctl start berth.service')"
check "socket probed with crictl version" grep -q '^/usr/local/bin/crictl --runtime-endpoint unix:///run/berth/berth.sock --timeout 2s version$' "$S/calls"
check "kubelet untouched (switchRuntime=false)" bash -c "! grep -q kubelet '$S/calls' && ! grep -q berth.sock '$H/var/lib/kubelet/config.yaml'"
check "manifest lists what was created" grep -qxF 'file /usr/local/bin/berth' "$H/var/lib/berth/installer/manifest"
check "manifest records the new /etc/berth" grep -qxF 'dir /etc/berth' "$H/var/lib/berth/installer/manifest"
check "lock released" test ! -e "$H/run/berth-installer.lock"

after1=$(snapshot "$H")
m1=$(cat "$H/var/lib/berth/installer/manifest")
mark=$(ncalls "$S")
inst "$H" "$S" install >"$T/a2.log" 2>&1 || { cat "$T/a2.log"; fail "second install exited non-zero"; }
after2=$(snapshot "$H")
check "second install: byte-identical tree (incl. manifest, modes, sizes)" test "$after1" = "$after2"
check "second install: same manifest" test "$m1" = "$(cat "$H/var/lib/berth/installer/manifest")"
check "second install: no state-changing systemctl call" test -z "$(mutating "$(calls_since "$S" "$mark")")"

mark=$(ncalls "$S")
BIN=$T/berth-v2 inst "$H" "$S" install >"$T/a3.log" 2>&1 || { cat "$T/a3.log"; fail "upgrade exited non-zero"; }
c=$(calls_since "$S" "$mark")
check "upgrade: new binary in place" cmp -s "$T/berth-v2" "$H/usr/local/bin/berth"
check "upgrade: berth.service restarted (and nothing else)" test "$(mutating "$c")" = "systemctl restart berth.service"
check "upgrade: manifest unchanged" test "$m1" = "$(cat "$H/var/lib/berth/installer/manifest")"

# A config with one mirror fewer: its hosts.toml and directory go away.
cfg2=$T/config2
cp -rL "$config_src" "$cfg2"
dropped=$(find "$cfg2/certs.d" -mindepth 1 -maxdepth 1 -type d | LC_ALL=C sort | head -n 1)
rm -rf "$dropped"
dropped=${dropped##*/}
echo '# changed' >>"$cfg2/config.toml"
mark=$(ncalls "$S")
CONFIG=$cfg2 BIN=$T/berth-v2 inst "$H" "$S" install >"$T/a4.log" 2>&1 || { cat "$T/a4.log"; fail "config change exited non-zero"; }
c=$(calls_since "$S" "$mark")
check "config change: dropped mirror's hosts.toml and dir removed" test ! -e "$H/etc/berth/certs.d/$dropped"
check "config change: manifest forgets it" bash -c "! grep -qF '/certs.d/$dropped' '$H/var/lib/berth/installer/manifest'"
check "config change: berth.service restarted" test "$(mutating "$c")" = "systemctl restart berth.service"

mark=$(ncalls "$S")
inst "$H" "$S" uninstall >"$T/a5.log" 2>&1 || { cat "$T/a5.log"; fail "uninstall exited non-zero"; }
c=$(calls_since "$S" "$mark")
check "uninstall: host root is byte-for-byte as before install" test "$before" = "$(snapshot_content "$H")"
check "uninstall: stop, disable, daemon-reload" \
    test "$(mutating "$c")" = "$(printf 'systemctl stop berth.service\nsystemctl disable berth.service\nsystemctl daemon-reload')"
if [[ $before != "$(snapshot_content "$H")" ]]; then
    diff <(echo "$before") <(snapshot_content "$H") || true
fi
inst "$H" "$S" uninstall >"$T/a6.log" 2>&1
check "uninstall again: nothing to do" grep -q 'nothing to uninstall' "$T/a6.log"

echo "== installer: switchRuntime=true over an existing manual install"
H=$T/b/host S=$T/b/stub
make_host "$H" crictl
mkdir -p "$H/etc/berth" "$S/enabled" "$S/active"
printf 'old manual berth\n' >"$H/usr/local/bin/berth"
chmod 700 "$H/usr/local/bin/berth"
touch -d '2020-01-02 03:04:05' "$H/usr/local/bin/berth"
printf 'log_level = "debug"\n' >"$H/etc/berth/config.toml"
cat >"$H/etc/systemd/system/kubelet.service.d/20-runtime.conf" <<'EOF'
[Service]
Environment="KUBELET_EXTRA_ARGS=--container-runtime-endpoint=unix:///run/crio/crio.sock --image-service-endpoint=unix:///run/crio/crio.sock"
EOF
touch "$S/enabled/kubelet.service" "$S/active/kubelet.service"
before=$(snapshot_content "$H")
SWITCH=true inst "$H" "$S" install >"$T/b.log" 2>&1 || { cat "$T/b.log"; fail "switch install exited non-zero"; }
c=$(cat "$S/calls")
check "config.yaml points at berth" grep -qx 'containerRuntimeEndpoint: unix:///run/berth/berth.sock' "$H/var/lib/kubelet/config.yaml"
check "config.yaml keeps its mode 600" test "$(stat -c %a "$H/var/lib/kubelet/config.yaml")" = 600
check "kubeadm-flags.env points at berth" grep -q -- '--container-runtime-endpoint=unix:///run/berth/berth.sock --pod-infra' "$H/var/lib/kubelet/kubeadm-flags.env"
check "/etc/default/kubelet (space-separated flag) points at berth" \
    grep -qx 'KUBELET_EXTRA_ARGS=--node-ip=192.0.2.10 --container-runtime-endpoint=unix:///run/berth/berth.sock' "$H/etc/default/kubelet"
check "drop-in: both endpoint flags point at berth" \
    grep -q -- '--container-runtime-endpoint=unix:///run/berth/berth.sock --image-service-endpoint=unix:///run/berth/berth.sock"' "$H/etc/systemd/system/kubelet.service.d/20-runtime.conf"
check "10-kubeadm.conf (no endpoint flag) untouched" bash -c "! grep -qF 'berth' '$H/etc/systemd/system/kubelet.service.d/10-kubeadm.conf'"
check "backups of every edited or replaced file kept" bash -c "
    cd '$H/var/lib/berth/installer/backup' &&
    test -f var/lib/kubelet/config.yaml && test -f var/lib/kubelet/kubeadm-flags.env &&
    test -f etc/default/kubelet && test -f etc/systemd/system/kubelet.service.d/20-runtime.conf &&
    test -f usr/local/bin/berth && test -f etc/berth/config.toml"
check "berth started before kubelet was restarted (daemon-reload first: a drop-in changed)" \
    test "$(mutating "$c")" = "$(printf 'systemctl daemon-reload\nsystemctl enable berth.service\nsystemctl start berth.service\nsystemctl daemon-reload\nsystemctl restart kubelet.service')"
check "manifest: restart line before the kubelet edits" \
    bash -c "grep -n -e '^restart kubelet.service' -e '^edited ' '$H/var/lib/berth/installer/manifest' | head -n 1 | grep -q restart"
after1=$(snapshot "$H")
mark=$(ncalls "$S")
SWITCH=true inst "$H" "$S" install >"$T/b2.log" 2>&1 || { cat "$T/b2.log"; fail "second switch install exited non-zero"; }
check "second switch install: byte-identical tree" test "$after1" = "$(snapshot "$H")"
check "second switch install: kubelet not restarted again" test -z "$(mutating "$(calls_since "$S" "$mark")")"

# switchRuntime turned off by an upgrade: kubelet restored and restarted.
mark=$(ncalls "$S")
SWITCH=false inst "$H" "$S" install >"$T/b3.log" 2>&1 || { cat "$T/b3.log"; fail "switch-off install exited non-zero"; }
c=$(calls_since "$S" "$mark")
check "switch off: config.yaml restored" grep -qx 'containerRuntimeEndpoint: unix:///var/run/containerd/containerd.sock' "$H/var/lib/kubelet/config.yaml"
check "switch off: kubelet restarted (daemon-reload first)" test "$(mutating "$c")" = "$(printf 'systemctl daemon-reload\nsystemctl restart kubelet.service')"
check "switch off: no kubelet lines left in the manifest" bash -c "! grep -q -e '^edited' -e '^restart' '$H/var/lib/berth/installer/manifest'"
SWITCH=true inst "$H" "$S" install >"$T/b4.log" 2>&1 || { cat "$T/b4.log"; fail "switch-on-again install exited non-zero"; }

mark=$(ncalls "$S")
inst "$H" "$S" uninstall >"$T/b5.log" 2>&1 || { cat "$T/b5.log"; fail "switch uninstall exited non-zero"; }
c=$(calls_since "$S" "$mark")
check "uninstall: host root byte-for-byte as before (kubelet files, old berth + its mtime, old config)" \
    test "$before" = "$(snapshot_content "$H")"
if [[ $before != "$(snapshot_content "$H")" ]]; then
    diff <(echo "$before") <(snapshot_content "$H") || true
fi
check "uninstall: old binary's mtime kept" test "$(stat -c %Y "$H/usr/local/bin/berth")" = "$(date -d '2020-01-02 03:04:05' +%s)"
check "uninstall: kubelet restored and restarted before berth stops" \
    test "$(mutating "$c")" = "$(printf 'systemctl daemon-reload\nsystemctl restart kubelet.service\nsystemctl stop berth.service\nsystemctl disable berth.service\nsystemctl daemon-reload')"

echo "== installer: berth never answers"
H=$T/c/host S=$T/c/stub
make_host "$H" crictl
mkdir -p "$S"
touch "$S/berth-broken"
before=$(snapshot_content "$H")
if SWITCH=true TIMEOUT=1 inst "$H" "$S" install >"$T/c.log" 2>&1; then
    fail "install succeeded although berth never answered"
else
    ok "install fails when berth does not answer"
fi
check "the error names the socket" grep -q 'did not answer on /run/berth/berth.sock' "$T/c.log"
check "kubelet not switched to a runtime that does not answer" grep -qx 'containerRuntimeEndpoint: unix:///var/run/containerd/containerd.sock' "$H/var/lib/kubelet/config.yaml"
check "the partial install is in the manifest" grep -qxF 'service berth.service started' "$H/var/lib/berth/installer/manifest"
inst "$H" "$S" uninstall >"$T/c2.log" 2>&1 || { cat "$T/c2.log"; fail "uninstall after failure exited non-zero"; }
check "uninstall after a failed install restores the host" test "$before" = "$(snapshot_content "$H")"

echo "== installer: no crictl on the host (socket check), under Debian's /bin/sh too"
H=$T/d/host S=$T/d/stub
make_host "$H"
mkdir -p "$S"
mkdir -p "$H/run/berth"
python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])' "$H/run/berth/berth.sock"
before=$(snapshot_content "$H")
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin TMPDIR="$T" HOST_ROOT="$H" STUB_STATE="$S" BERTH_INSTALLER_HOST_CMD="$here/stub-host.sh" \
    BERTH_BINARY="$T/berth-v1" BERTH_UNIT="$unit" BERTH_CONFIG_SRC="$config_src" BERTH_INSTALLER_TIMEOUT=3 \
    sh "$installer" install >"$T/d.log" 2>&1 || { cat "$T/d.log"; fail "dash install exited non-zero"; }
check "socket check used when there is no crictl" grep -q "socket /run/berth/berth.sock is up" "$T/d.log"
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin TMPDIR="$T" HOST_ROOT="$H" STUB_STATE="$S" BERTH_INSTALLER_HOST_CMD="$here/stub-host.sh" \
    sh "$installer" uninstall >"$T/d2.log" 2>&1 || { cat "$T/d2.log"; fail "dash uninstall exited non-zero"; }
check "dash: uninstall restores the host" test "$before" = "$(snapshot_content "$H")"

echo "== installer: no systemd on the host"
H=$T/e/host
make_host "$H"
before=$(snapshot_content "$H")
run_nosd() {
    env -i PATH="$T/bb" TMPDIR="$T" HOST_ROOT="$H" BERTH_BINARY="$T/berth-v1" BERTH_UNIT="$unit" \
        BERTH_CONFIG_SRC="$config_src" "$@"
}
if run_nosd BERTH_SWITCH_RUNTIME=true busybox sh "$installer" install >"$T/e.log" 2>&1; then
    fail "switchRuntime without systemd succeeded"
else
    ok "switchRuntime without a host systemd is refused"
fi
check "... before changing anything" test "$before" = "$(snapshot_content "$H")"
run_nosd busybox sh "$installer" install >"$T/e2.log" 2>&1 || { cat "$T/e2.log"; fail "no-systemd install exited non-zero"; }
check "files installed, service left alone (with a warning)" bash -c "test -f '$H/usr/local/bin/berth' && grep -q 'berth.service not started' '$T/e2.log'"
run_nosd busybox sh "$installer" uninstall >"$T/e3.log" 2>&1 || { cat "$T/e3.log"; fail "no-systemd uninstall exited non-zero"; }
check "no systemd: uninstall restores the host" test "$before" = "$(snapshot_content "$H")"

echo "== installer: kubelet config without containerRuntimeEndpoint, no flags; stale lock"
H=$T/f/host S=$T/f/stub
make_host "$H" crictl
sed -i '/containerRuntimeEndpoint/d' "$H/var/lib/kubelet/config.yaml"
printf 'clusterDomain: cluster.local' >>"$H/var/lib/kubelet/config.yaml" # no final newline
rm "$H/var/lib/kubelet/kubeadm-flags.env" "$H/etc/default/kubelet"
mkdir "$H/run/berth-installer.lock"
echo 999999999 >"$H/run/berth-installer.lock/pid"
before=$(snapshot_content "$H" | grep -v berth-installer.lock)
SWITCH=true inst "$H" "$S" install >"$T/f.log" 2>&1 || { cat "$T/f.log"; fail "install with stale lock exited non-zero"; }
check "stale lock taken over" grep -q 'removing stale lock' "$T/f.log"
check "containerRuntimeEndpoint appended on its own line" \
    test "$(tail -n 2 "$H/var/lib/kubelet/config.yaml")" = "$(printf 'clusterDomain: cluster.local\ncontainerRuntimeEndpoint: unix:///run/berth/berth.sock')"
inst "$H" "$S" uninstall >"$T/f2.log" 2>&1 || { cat "$T/f2.log"; fail "uninstall exited non-zero"; }
check "uninstall restores the file without its final newline" test "$before" = "$(snapshot_content "$H")"

echo "== installer: run mode (install, ready, SIGTERM changes nothing)"
H=$T/g/host S=$T/g/stub
make_host "$H" crictl
mkdir -p "$S"
# exec: the signal must reach the installer itself, as kubelet's does.
(exec env -i PATH="$T/bb" TMPDIR="$T" HOST_ROOT="$H" STUB_STATE="$S" BERTH_INSTALLER_HOST_CMD="$here/stub-host.sh" \
    BERTH_BINARY="$T/berth-v1" BERTH_UNIT="$unit" BERTH_CONFIG_SRC="$config_src" \
    BERTH_INSTALLER_READY_FILE="$T/g/ready" busybox sh "$installer" run >"$T/g.log" 2>&1) &
pid=$!
for _ in $(seq 100); do
    [[ -e $T/g/ready ]] && break
    sleep 0.1
done
check "run: ready file written after install" test -e "$T/g/ready"
snap=$(snapshot "$H")
mark=$(ncalls "$S")
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
check "run: SIGTERM exits 0" test "$rc" = 0
check "run: SIGTERM changed nothing on the host" test "$snap" = "$(snapshot "$H")"
check "run: SIGTERM made no host call" test "$(ncalls "$S")" = "$mark"

echo "installer: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
