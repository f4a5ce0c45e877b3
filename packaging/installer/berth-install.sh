#!/bin/sh
# berth-install: puts berth onto a node so that the node's systemd runs it,
# and takes it off again. It is the entrypoint of the installer image that
# the Helm chart (charts/berth) runs as a privileged DaemonSet with the host's
# / mounted at $HOST_ROOT, and it also runs by hand on a host (HOST_ROOT=/).
# POSIX sh: it runs under the image's busybox ash.
#
#   berth-install install     copy berth, its unit and its configuration onto
#                             the host, enable and start berth.service, wait
#                             for the CRI socket, and (BERTH_SWITCH_RUNTIME=true)
#                             point kubelet at berth and restart it
#   berth-install uninstall   undo exactly what install recorded
#   berth-install run         $BERTH_INSTALLER_MODE (install or uninstall),
#                             then touch $BERTH_INSTALLER_READY_FILE and sleep
#                             until SIGTERM, which changes nothing on the host
#   berth-install status      print the manifest
#
# Every change is recorded, before it is made, in the manifest
# $HOST_ROOT/var/lib/berth/installer/manifest, one line each, and the original
# of every file it replaces or edits is kept under .../installer/backup/:
#
#   dir P                  directory P did not exist; install created it
#   file P                 file P did not exist; install created it
#   replaced P             P existed; the original is backup/P
#   edited P               kubelet file P was edited; the original is backup/P
#   service U enabled      install ran `systemctl enable U`
#   service U started      install ran `systemctl start U`
#   restart U              kubelet files were edited: restore them, then restart U
#
# `uninstall` undoes the lines last to first. `install` is a reconciliation:
# run again with the same inputs it changes nothing (not even the manifest);
# with a new binary, unit or config.toml it replaces them and restarts
# berth.service (KillMode=process keeps containers running); what an earlier
# install put there and this one no longer wants (a dropped registry mirror,
# switchRuntime turned off) is undone and leaves the manifest.
#
# Environment (defaults in brackets):
#   HOST_ROOT                 where the host's / is mounted [/host]
#   BERTH_BINARY              berth binary to install [/usr/local/bin/berth]
#   BERTH_UNIT                berth.service to install [/usr/share/berth/berth.service]
#   BERTH_CONFIG_SRC          directory with config.toml and certs.d/<host>/hosts.toml
#                             (the chart's ConfigMap) [/etc/berth-installer/config]
#   BERTH_SWITCH_RUNTIME      true: point kubelet at berth [false]
#   BERTH_SOCKET              berth's CRI socket on the host [/run/berth/berth.sock]
#   BERTH_INSTALLER_TIMEOUT   seconds to wait for the socket [60]
#   KUBELET_CONFIG            kubelet's config file [/var/lib/kubelet/config.yaml]
#   KUBELET_FLAG_FILES        files that may carry kubelet flags
#                             [/var/lib/kubelet/kubeadm-flags.env /etc/default/kubelet
#                              /etc/sysconfig/kubelet], plus every
#                             /etc/systemd/system/kubelet.service.d/*.conf
#   BERTH_INSTALLER_HOST_CMD  prefix that runs a command on the host
#                             [nsenter -t 1 -m -u -i -n -p --]; when unset, host
#                             systemd is used only if $HOST_ROOT/run/systemd/system
#                             exists (tests set it to a stub)
#   BERTH_INSTALLER_MODE      for `run`: install or uninstall [install]
#   BERTH_INSTALLER_READY_FILE  touched by `run` when done [/tmp/berth-installer.ready]
set -eu

PROG=berth-install
UNIT=berth.service
KUBELET_UNIT=kubelet.service
STATE_REL=/var/lib/berth/installer
MANIFEST_HEADER="# berth-installer manifest v1"

HOST_ROOT=${HOST_ROOT:-/host}
HOST_ROOT=${HOST_ROOT%/}
H=$HOST_ROOT
STATE=$H$STATE_REL
BERTH_BINARY=${BERTH_BINARY:-/usr/local/bin/berth}
BERTH_UNIT=${BERTH_UNIT:-/usr/share/berth/berth.service}
BERTH_CONFIG_SRC=${BERTH_CONFIG_SRC:-/etc/berth-installer/config}
BERTH_SWITCH_RUNTIME=${BERTH_SWITCH_RUNTIME:-false}
BERTH_SOCKET=${BERTH_SOCKET:-/run/berth/berth.sock}
BERTH_INSTALLER_TIMEOUT=${BERTH_INSTALLER_TIMEOUT:-60}
KUBELET_CONFIG=${KUBELET_CONFIG:-/var/lib/kubelet/config.yaml}
KUBELET_FLAG_FILES=${KUBELET_FLAG_FILES:-/var/lib/kubelet/kubeadm-flags.env /etc/default/kubelet /etc/sysconfig/kubelet}
KUBELET_DROPIN_DIR=/etc/systemd/system/kubelet.service.d
BERTH_INSTALLER_READY_FILE=${BERTH_INSTALLER_READY_FILE:-/tmp/berth-installer.ready}
ENDPOINT=unix://$BERTH_SOCKET

log() { echo "$PROG: $*"; }
warn() { echo "$PROG: warning: $*" >&2; }
die() {
    echo "$PROG: error: $*" >&2
    exit 1
}

# ---------------------------------------------------------------- host access

host_cmd() {
    if [ -n "${BERTH_INSTALLER_HOST_CMD:-}" ]; then
        # shellcheck disable=SC2086 # a command prefix, split on purpose
        $BERTH_INSTALLER_HOST_CMD "$@"
    else
        nsenter -t 1 -m -u -i -n -p -- "$@"
    fi
}

# A host systemd we can reach: a test hook, or a booted systemd (sd_booted(3)).
have_systemd() {
    [ -n "${BERTH_INSTALLER_HOST_CMD:-}" ] || [ -d "$H/run/systemd/system" ]
}

systemctl_host() {
    log "systemctl $*"
    host_cmd systemctl "$@"
}

# ------------------------------------------------------------------ the lock
# One installer at a time per host: after a runtime switch kubelet starts a
# second installer pod under the new runtime while the first is finishing.
LOCK=$H/run/berth-installer.lock
LOCKED=0
WORK=

cleanup() {
    [ -n "$WORK" ] && rm -rf "$WORK"
    [ "$LOCKED" = 1 ] && rm -rf "$LOCK"
    LOCKED=0
}

take_lock() {
    if [ ! -d "$H/run" ]; then
        warn "$H/run does not exist; running without a lock"
        return 0
    fi
    waited=0
    until mkdir "$LOCK" 2>/dev/null; do
        holder=$(cat "$LOCK/pid" 2>/dev/null || true)
        if [ -n "$holder" ] && ! kill -0 "$holder" 2>/dev/null; then
            warn "removing stale lock of pid $holder"
            rm -rf "$LOCK"
            continue
        fi
        if [ -z "$holder" ] && [ "$waited" -ge 5 ]; then
            # The holder died between mkdir and writing its pid.
            warn "removing lock without a pid"
            rm -rf "$LOCK"
            continue
        fi
        [ "$waited" -ge 600 ] && die "another installer holds $LOCK (pid $holder)"
        [ "$waited" = 0 ] && log "waiting for another installer (pid $holder)"
        sleep 1
        waited=$((waited + 1))
    done
    echo $$ >"$LOCK/pid"
    LOCKED=1
}

start() {
    case $H in
        /* | "") ;;
        *) die "HOST_ROOT must be an absolute path, not $HOST_ROOT" ;;
    esac
    [ -d "$H/etc" ] || die "$H/etc does not exist: is the host's / mounted at HOST_ROOT=$HOST_ROOT?"
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/berth-install.XXXXXX")
    trap cleanup EXIT
    trap 'exit 143' TERM
    trap 'exit 130' INT
    take_lock
}

# --------------------------------------------------------------- the manifest
# Worked on in $WORK/manifest and saved to $STATE/manifest after each change
# (so an installer that dies half way still leaves an exact record).

m_load() {
    if [ -f "$STATE/manifest" ]; then
        cp "$STATE/manifest" "$WORK/manifest"
        head -n 1 "$WORK/manifest" | grep -qxF "$MANIFEST_HEADER" ||
            die "$STATE/manifest: not a manifest this installer understands"
    else
        echo "$MANIFEST_HEADER" >"$WORK/manifest"
    fi
}

m_has() { grep -qxF "$1" "$WORK/manifest"; }

m_save() {
    [ -d "$STATE" ] || return 0
    if ! cmp -s "$WORK/manifest" "$STATE/manifest" 2>/dev/null; then
        cp "$WORK/manifest" "$STATE/manifest.tmp"
        mv -f "$STATE/manifest.tmp" "$STATE/manifest"
    fi
}

m_add() {
    m_has "$1" && return 0
    echo "$1" >>"$WORK/manifest"
    m_save
}

m_del() {
    grep -vxF "$1" "$WORK/manifest" >"$WORK/manifest.new" || true
    mv -f "$WORK/manifest.new" "$WORK/manifest"
    m_save
}

# What this run wants on the host: `path P` and `dir P` lines.
want() { echo "$1" >>"$WORK/desired"; }
wanted() { grep -qxF "$1" "$WORK/desired"; }

# -------------------------------------------------------------- file helpers

check_path() {
    case $1 in
        /*) ;;
        *) die "not an absolute path: $1" ;;
    esac
    case $1 in
        *[[:space:]]* | *..*) die "refusing path with whitespace or '..': $1" ;;
    esac
}

# Creates each missing component of directory $1 (a host path), recording it.
ensure_dir() {
    check_path "$1"
    rest=${1#/}
    p=
    while [ -n "$rest" ]; do
        comp=${rest%%/*}
        if [ "$comp" = "$rest" ]; then rest=; else rest=${rest#*/}; fi
        [ -n "$comp" ] || continue
        p=$p/$comp
        if [ ! -d "$H$p" ]; then
            [ -e "$H$p" ] && die "$H$p exists and is not a directory"
            m_add "dir $p"
            mkdir "$H$p"
        fi
        m_has "dir $p" && want "dir $p"
    done
    return 0
}

same_file() { # src dest mode
    [ -f "$2" ] && [ ! -L "$2" ] && cmp -s "$1" "$2" &&
        [ "$(stat -c %a "$2")" = "$3" ]
}

# Atomically writes src to host file dest with mode.
put() { # src dest mode
    cp "$1" "$2.berth-install.tmp"
    chmod "$3" "$2.berth-install.tmp"
    mv -f "$2.berth-install.tmp" "$2"
}

backup() { # host path
    mkdir -p "$STATE/backup${1%/*}"
    rm -rf "$STATE/backup$1"
    cp -a "$H$1" "$STATE/backup$1"
}

restore() { # host path
    if [ ! -e "$STATE/backup$1" ] && [ ! -L "$STATE/backup$1" ]; then
        warn "no backup of $1; leaving it as it is"
        return 0
    fi
    rm -rf "$H$1.berth-install.tmp"
    cp -a "$STATE/backup$1" "$H$1.berth-install.tmp"
    mv -f "$H$1.berth-install.tmp" "$H$1"
    rm -f "$STATE/backup$1"
    log "restored $1"
}

# Installs src as host file dest; sets CHANGED=1 when dest's content changed.
ensure_file() { # src dest mode
    check_path "$2"
    CHANGED=0
    ensure_dir "${2%/*}"
    want "path $2"
    if m_has "file $2" || m_has "replaced $2"; then
        same_file "$1" "$H$2" "$3" && return 0
    elif [ -e "$H$2" ] || [ -L "$H$2" ]; then
        [ -d "$H$2" ] && die "$H$2 is a directory"
        m_add "replaced $2"
        backup "$2"
        same_file "$1" "$H$2" "$3" && return 0
    else
        m_add "file $2"
    fi
    put "$1" "$H$2" "$3"
    log "installed $2"
    CHANGED=1
}

# ------------------------------------------------------------------- kubelet

# The kubelet files that exist on this host.
kubelet_files() {
    [ -f "$H$KUBELET_CONFIG" ] && echo "$KUBELET_CONFIG"
    for f in $KUBELET_FLAG_FILES; do
        [ -f "$H$f" ] && echo "$f"
    done
    for f in "$H$KUBELET_DROPIN_DIR"/*.conf; do
        [ -f "$f" ] && echo "${f#"$H"}"
    done
    return 0
}

# Writes to stdout host file $1 pointing kubelet at berth.
kubelet_edit() {
    if [ "$1" = "$KUBELET_CONFIG" ]; then
        case $(sed -n '/^[[:space:]]*[^#[:space:]]/{p;q;}' "$H$1") in
            "{"*) die "$1 is JSON; only a YAML KubeletConfiguration can be edited" ;;
        esac
        sed -E \
            -e "s#^containerRuntimeEndpoint:.*\$#containerRuntimeEndpoint: $ENDPOINT#" \
            -e "s#^imageServiceEndpoint:.*\$#imageServiceEndpoint: $ENDPOINT#" "$H$1"
        if ! grep -q '^containerRuntimeEndpoint:' "$H$1"; then
            [ -z "$(tail -c 1 "$H$1")" ] || echo
            echo "containerRuntimeEndpoint: $ENDPOINT"
        fi
    else
        sed -E \
            -e "s#--container-runtime-endpoint(=|[[:space:]]+)[^[:space:]\"']+#--container-runtime-endpoint=$ENDPOINT#g" \
            -e "s#--image-service-endpoint(=|[[:space:]]+)[^[:space:]\"']+#--image-service-endpoint=$ENDPOINT#g" "$H$1"
    fi
}

KUBELET_CHANGED=0
DROPIN_CHANGED=0

kubelet_switch() {
    kubelet_files >"$WORK/kubelet-files"
    found=0
    while read -r f; do
        if [ "$f" = "$KUBELET_CONFIG" ] || grep -q -e --container-runtime-endpoint "$H$f"; then
            found=1
        fi
    done <"$WORK/kubelet-files"
    [ "$found" = 1 ] ||
        die "no kubelet configuration found: neither $KUBELET_CONFIG nor a --container-runtime-endpoint flag in $KUBELET_FLAG_FILES $KUBELET_DROPIN_DIR/*.conf"
    while read -r f; do
        check_path "$f"
        kubelet_edit "$f" >"$WORK/edit"
        if m_has "edited $f"; then
            want "path $f"
            cmp -s "$WORK/edit" "$H$f" && continue
        else
            cmp -s "$WORK/edit" "$H$f" && continue # already berth's, or no flag
            want "path $f"
            # Listed before the edits so that uninstall restores them first.
            m_add "restart $KUBELET_UNIT"
            m_add "edited $f"
            backup "$f"
        fi
        put "$WORK/edit" "$H$f" "$(stat -c %a "$H$f")"
        log "pointed kubelet at $ENDPOINT in $f"
        KUBELET_CHANGED=1
        case $f in "$KUBELET_DROPIN_DIR"/*) DROPIN_CHANGED=1 ;; esac
    done <"$WORK/kubelet-files"
    return 0
}

restart_kubelet() {
    [ "$DROPIN_CHANGED" = 1 ] && systemctl_host daemon-reload
    systemctl_host restart "$KUBELET_UNIT"
    KUBELET_CHANGED=0
    DROPIN_CHANGED=0
}

# --------------------------------------------------------------------- berth

find_crictl() {
    for c in /usr/local/bin/crictl /usr/bin/crictl /usr/sbin/crictl /opt/bin/crictl; do
        if [ -x "$H$c" ]; then
            echo "$c"
            return 0
        fi
    done
    return 0
}

# Waits until the CRI socket answers: crictl's Version call when the host has
# crictl (kubeadm installs it), else that the socket exists (berth.service is
# Type=notify, so `systemctl start` returned only once berth said READY=1).
wait_for_berth() {
    crictl=$(find_crictl)
    i=0
    while :; do
        if [ -n "$crictl" ]; then
            host_cmd "$crictl" --runtime-endpoint "$ENDPOINT" --timeout 2s version >/dev/null 2>&1 &&
                break
        else
            [ -S "$H$BERTH_SOCKET" ] && break
        fi
        [ "$i" -ge "$BERTH_INSTALLER_TIMEOUT" ] &&
            die "berth did not answer on $BERTH_SOCKET within ${BERTH_INSTALLER_TIMEOUT}s (see: journalctl -u $UNIT)"
        sleep 1
        i=$((i + 1))
    done
    if [ -n "$crictl" ]; then
        log "berth answers Version on $ENDPOINT"
    else
        log "berth's socket $BERTH_SOCKET is up (no crictl on the host for a Version call)"
    fi
}

# ------------------------------------------------------------------- install

do_install() {
    case $BERTH_SWITCH_RUNTIME in
        true | false) ;;
        *) die "BERTH_SWITCH_RUNTIME must be true or false, not $BERTH_SWITCH_RUNTIME" ;;
    esac
    [ -f "$BERTH_BINARY" ] || die "no berth binary at $BERTH_BINARY"
    [ -f "$BERTH_UNIT" ] || die "no unit file at $BERTH_UNIT"
    if [ "$BERTH_SWITCH_RUNTIME" = true ] && ! have_systemd; then
        die "kubelet.switchRuntime needs the host's systemd (no $H/run/systemd/system); nothing changed"
    fi
    start
    m_load
    : >"$WORK/desired"
    ensure_dir "$STATE_REL"
    m_save

    berth_changed=0
    ensure_file "$BERTH_BINARY" /usr/local/bin/berth 755
    [ "$CHANGED" = 1 ] && berth_changed=1
    ensure_file "$BERTH_UNIT" /etc/systemd/system/$UNIT 644
    unit_changed=$CHANGED
    if [ -f "$BERTH_CONFIG_SRC/config.toml" ]; then
        ensure_file "$BERTH_CONFIG_SRC/config.toml" /etc/berth/config.toml 644
        [ "$CHANGED" = 1 ] && berth_changed=1
    fi
    # Registry hosts: read on every pull, so a change needs no restart.
    for f in "$BERTH_CONFIG_SRC"/certs.d/*/hosts.toml; do
        [ -f "$f" ] || continue
        d=${f%/hosts.toml}
        ensure_file "$f" "/etc/berth/certs.d/${d##*/}/hosts.toml" 644
    done

    # What an earlier install put there and this one does not want.
    reconcile_files

    if have_systemd; then
        [ "$unit_changed" = 1 ] && systemctl_host daemon-reload
        if ! host_cmd systemctl is-enabled "$UNIT" >/dev/null 2>&1; then
            m_add "service $UNIT enabled"
            systemctl_host enable "$UNIT"
        fi
        m_has "service $UNIT enabled" && want "service $UNIT enabled"
        if ! host_cmd systemctl is-active "$UNIT" >/dev/null 2>&1; then
            m_add "service $UNIT started"
            systemctl_host start "$UNIT"
        elif [ "$berth_changed" = 1 ] || [ "$unit_changed" = 1 ]; then
            systemctl_host restart "$UNIT"
        fi
        m_has "service $UNIT started" && want "service $UNIT started"
        wait_for_berth
        # Informational: what the node lacks for berth (never fatal here).
        host_cmd timeout 60 /usr/local/bin/berth check 2>&1 | sed "s/^/$PROG: berth check: /" || true
    else
        warn "no systemd on the host ($H/run/systemd/system): files installed, berth.service not started"
    fi

    if [ "$BERTH_SWITCH_RUNTIME" = true ]; then
        kubelet_switch
    fi
    reconcile_kubelet
    [ "$KUBELET_CHANGED" = 1 ] && restart_kubelet
    m_save
    log "installed (manifest: $STATE_REL/manifest)"
}

# Undoes `file`, `replaced` and `dir` lines this run does not want, last first.
reconcile_files() {
    tac "$WORK/manifest" >"$WORK/reverse"
    while read -r kind p; do
        case $kind in
            file | replaced)
                wanted "path $p" && continue
                undo_line "$kind" "$p"
                m_del "$kind $p"
                ;;
            dir)
                wanted "dir $p" && continue
                if rmdir "$H$p" 2>/dev/null || [ ! -e "$H$p" ]; then
                    m_del "dir $p"
                fi
                ;;
        esac
    done <"$WORK/reverse"
    return 0
}

# Restores kubelet files this run does not want edited (switchRuntime off).
reconcile_kubelet() {
    tac "$WORK/manifest" >"$WORK/reverse"
    while read -r kind p; do
        [ "$kind" = edited ] || continue
        wanted "path $p" && continue
        restore "$p"
        m_del "edited $p"
        KUBELET_CHANGED=1
        case $p in "$KUBELET_DROPIN_DIR"/*) DROPIN_CHANGED=1 ;; esac
    done <"$WORK/reverse"
    if ! grep -q '^edited ' "$WORK/manifest"; then
        m_del "restart $KUBELET_UNIT"
    fi
    if [ "$KUBELET_CHANGED" = 1 ] && ! have_systemd; then
        warn "restored kubelet's files but cannot restart it: restart kubelet yourself"
        KUBELET_CHANGED=0
    fi
    return 0
}

# ----------------------------------------------------------------- uninstall

UNIT_FILES_CHANGED=0

undo_line() { # kind rest
    case $1 in
        file)
            rm -f "$H$2"
            log "removed $2"
            case $2 in /etc/systemd/system/*) UNIT_FILES_CHANGED=1 ;; esac
            ;;
        replaced | edited)
            restore "$2"
            case $2 in /etc/systemd/system/*) UNIT_FILES_CHANGED=1 ;; esac
            ;;
    esac
}

do_uninstall() {
    start
    if [ ! -f "$STATE/manifest" ]; then
        log "nothing to uninstall (no $STATE_REL/manifest)"
        return 0
    fi
    m_load
    if grep -q -e '^service ' -e '^restart ' "$WORK/manifest" && ! have_systemd; then
        die "the manifest lists systemd changes but the host's systemd is not reachable; nothing changed"
    fi
    tac "$WORK/manifest" >"$WORK/reverse"
    : >"$WORK/deferred"
    while read -r kind a b; do
        case $kind in
            "#"* | "") continue ;;
            service)
                case $b in
                    started) systemctl_host stop "$a" || warn "could not stop $a" ;;
                    enabled) systemctl_host disable "$a" || warn "could not disable $a" ;;
                esac
                ;;
            restart)
                if [ "$UNIT_FILES_CHANGED" = 1 ]; then
                    systemctl_host daemon-reload
                    UNIT_FILES_CHANGED=0
                fi
                systemctl_host restart "$a" || warn "could not restart $a"
                ;;
            file | replaced | edited) undo_line "$kind" "$a" ;;
            dir)
                case $STATE_REL/ in
                    "$a"/*)
                        # The manifest's own directories go last.
                        echo "$a" >>"$WORK/deferred"
                        continue
                        ;;
                esac
                rmdir "$H$a" 2>/dev/null || warn "$a is not empty; left in place"
                ;;
            *) warn "unknown manifest line: $kind $a $b" ;;
        esac
        # Keep the record exact if we die half way.
        m_del "$kind $a${b:+ $b}"
    done <"$WORK/reverse"
    if [ "$UNIT_FILES_CHANGED" = 1 ] && have_systemd; then
        systemctl_host daemon-reload
    fi
    rm -f "$STATE/manifest"
    if [ -d "$STATE/backup" ]; then
        find "$STATE/backup" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    fi
    [ -d "$STATE/backup" ] && warn "$STATE_REL/backup is not empty; left in place"
    while read -r d; do
        rmdir "$H$d" 2>/dev/null || warn "$d is not empty; left in place"
    done <"$WORK/deferred"
    log "uninstalled"
}

# ----------------------------------------------------------------------- run

do_run() {
    mode=${BERTH_INSTALLER_MODE:-install}
    sleeper=
    # emptyDir outlives a container restart: not ready until this run is done.
    rm -f "$BERTH_INSTALLER_READY_FILE"
    # A SIGTERM while installing takes effect once the step is done.
    trap 'log "terminated; berth stays as it is on the host"; [ -n "$sleeper" ] && kill "$sleeper" 2>/dev/null; exit 0' TERM INT
    case $mode in
        install) (do_install) ;;
        uninstall) (do_uninstall) ;;
        *) die "BERTH_INSTALLER_MODE must be install or uninstall, not $mode" ;;
    esac
    touch "$BERTH_INSTALLER_READY_FILE"
    log "$mode done; sleeping (SIGTERM leaves the host as it is)"
    while :; do
        sleep 3600 &
        sleeper=$!
        wait "$sleeper" || true
    done
}

case ${1:-} in
    install) do_install ;;
    uninstall) do_uninstall ;;
    run) do_run ;;
    status)
        if [ -f "$STATE/manifest" ]; then cat "$STATE/manifest"; else log "not installed"; fi
        ;;
    *)
        echo "usage: $PROG install|uninstall|run|status (see the comment at the top of $0)" >&2
        exit 2
        ;;
esac
