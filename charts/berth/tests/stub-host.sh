#!/bin/bash
# Stands in for `nsenter -t 1 -m -u -i -n -p --` in the installer tests
# (BERTH_INSTALLER_HOST_CMD): records every host command in $STUB_STATE/calls
# and plays a host systemd (units enabled/active as files under $STUB_STATE)
# and crictl (answers while berth.service is "active", unless
# $STUB_STATE/berth-broken exists). Its state lives outside the fake host root.
set -euo pipefail
state=${STUB_STATE:?}
echo "$*" >>"$state/calls"
mkdir -p "$state/enabled" "$state/active"
cmd=$1
shift
case $cmd in
    systemctl)
        verb=$1
        unit=${2:-}
        case $verb in
            daemon-reload) ;;
            is-enabled) [[ -e $state/enabled/$unit ]] ;;
            is-active) [[ -e $state/active/$unit ]] ;;
            enable)
                [[ -f $HOST_ROOT/etc/systemd/system/$unit ]] || { echo "Unit file $unit does not exist." >&2; exit 1; }
                touch "$state/enabled/$unit" ;;
            disable) rm -f "$state/enabled/$unit" ;;
            start | restart)
                [[ -f $HOST_ROOT/etc/systemd/system/$unit || $unit == kubelet.service ]] || { echo "Unit $unit not found." >&2; exit 5; }
                touch "$state/active/$unit" ;;
            stop) rm -f "$state/active/$unit" ;;
            *) echo "stub systemctl: unknown verb $verb" >&2; exit 1 ;;
        esac
        ;;
    */crictl)
        [[ -e $state/active/berth.service && ! -e $state/berth-broken ]] || exit 1
        echo "RuntimeName: berth"
        ;;
    timeout)
        echo "ok      stub: berth check"
        ;;
    *)
        echo "stub host: unexpected command $cmd" >&2
        exit 127
        ;;
esac
