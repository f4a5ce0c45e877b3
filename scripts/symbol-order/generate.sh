#!/usr/bin/env bash
# Regenerates shim/symbol-order.txt: the functions of the release `berth
# serve` that run, found by running it under valgrind's callgrind through a
# kubelet-like workload, most run first; then those only its monitors (and
# their zygote) run.
#
#   sudo scripts/symbol-order/generate.sh
#
# Needs: a release build (cargo build --release -p berth; BERTH_BIN names
# another), valgrind, and the
# cri-tools kit (CRI_TOOLS, default ../shared/tools/cri-tools: crictl and a
# loopback registry of stand-in images, set up by its setup.sh), and the
# cri_lifecycle benchmark built (cargo test -p berth-e2e --bench cri_lifecycle
# --no-run; BENCH_BIN names another). Takes about a minute. Rebuild the
# release binary afterwards.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
K=${CRI_TOOLS:-$repo/../shared/tools/cri-tools}
target=${CARGO_TARGET_DIR:-$repo/target}
BIN=${BERTH_BIN:-$target/release/berth}
BENCH=${BENCH_BIN:-$(ls -t "$target"/debug/deps/cri_lifecycle-* 2>/dev/null | grep -v '\.d$' | head -1)}
[ -x "$BIN" ] || { echo "no $BIN: cargo build --release -p berth" >&2; exit 1; }
[ -n "$BENCH" ] || { echo "no cri_lifecycle bench build" >&2; exit 1; }
command -v "${VALGRIND:-valgrind}" >/dev/null || { echo "valgrind missing: apt install valgrind" >&2; exit 1; }
bash "$K/setup.sh" >/dev/null
W=${CRI_TOOLS_WORK:-/var/tmp/cri-tools}
C="$W/bin/crictl"
D=$(mktemp -d /tmp/berth-symbol-order.XXXXXX)
ARGS=(serve --listen "$D/b.sock" --root "$D/root" --state "$D/state"
      --registry-config-dir "$K/certs.d" --cni-conf-dir "$W/cni/net.d" --cni-bin-dir /usr/lib/cni)
E=(--runtime-endpoint "unix://$D/b.sock" --timeout 60s)
wait_sock() { for _ in $(seq 1 120); do [ -S "$D/b.sock" ] && return; sleep 1; done; exit 1; }

# The daemon, its monitor zygote and the monitors (forked by the zygote)
# run under valgrind, one profile each; pull helpers and containers' inits
# (their arguments say which) and the programs berth runs (CNI plugins,
# iptables, CRIU: outside its binary's directory) run natively. Monitors
# call pidfd_open and pidfd_send_signal: bookworm's valgrind 3.19 has
# neither, trixie's 3.24 lacks the second — build 3.24 (Debian's source)
# with valgrind-pidfd_send_signal.patch and name it in VALGRIND.
"${VALGRIND:-valgrind}" --tool=callgrind --demangle=no --callgrind-out-file="$D/cg.%p.out" \
    --trace-children=yes --trace-children-skip='/usr/*,/bin/*,/sbin/*' \
    --trace-children-skip-by-arg='*__berth_pull*,*__berth_init*' \
    "$BIN" "${ARGS[@]}" >"$D/valgrind.log" 2>&1 & pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
wait_sock
"$C" "${E[@]}" pull busybox >/dev/null 2>&1
"$C" "${E[@]}" pull busybox >/dev/null 2>&1
# Pods run, exec'd into, stopped and removed (one by one and all at once).
(cd "$repo/tests" && "$BENCH" --socket "$D/b.sock" --image docker.io/library/busybox:latest \
    --iters 4 --pods 6 >"$D/bench.log" 2>&1)
# What kubelet calls every few seconds on a running pod.
cat >"$D/pod.json" <<J
{"metadata":{"name":"order","namespace":"default","uid":"order-uid","attempt":0},"log_directory":"$D/logs","linux":{}}
J
cat >"$D/ctr.json" <<J
{"metadata":{"name":"c"},"image":{"image":"docker.io/library/busybox:latest"},"command":["sh","-c","while true; do echo hi; sleep 1; done"],"log_path":"c.log","linux":{}}
J
pod=$("$C" "${E[@]}" runp "$D/pod.json" 2>/dev/null)
ctr=$("$C" "${E[@]}" create "$pod" "$D/ctr.json" "$D/pod.json" 2>/dev/null)
"$C" "${E[@]}" start "$ctr" >/dev/null 2>&1
for _ in 1 2 3; do
    for cmd in pods "ps -a" stats statsp "inspect $ctr" "inspectp $pod" images imagefsinfo \
               info version "exec -s $ctr true" "logs $ctr" "inspecti busybox"; do
        # shellcheck disable=SC2086
        "$C" "${E[@]}" $cmd >/dev/null 2>&1
    done
done
"$C" "${E[@]}" stop "$ctr" >/dev/null 2>&1; "$C" "${E[@]}" rm "$ctr" >/dev/null 2>&1
"$C" "${E[@]}" stopp "$pod" >/dev/null 2>&1; "$C" "${E[@]}" rmp "$pod" >/dev/null 2>&1
kill "$pid"; wait "$pid" || true
# The zygote ends with the daemon; callgrind writes its profile then.
sleep 3

out=$repo/shim/symbol-order.txt
# The daemon's functions first, then what only the zygote and the monitors
# ran: each a contiguous run of pages.
daemon=$D/cg.$pid.out
others=$(ls "$D"/cg.*.out | grep -vx "$daemon")
python3 "$repo/scripts/symbol-order/executed.py" "/release/berth" "$daemon" >"$D/daemon.txt"
{
    sed -n '/^#/p' "$out"
    cat "$D/daemon.txt"
    # shellcheck disable=SC2086
    python3 "$repo/scripts/symbol-order/executed.py" "/release/berth" $others --skip "$D/daemon.txt"
} >"$out.new"
mv "$out.new" "$out"
echo "$(grep -vc '^#' "$out") functions in $out"
rm -rf "$D"
