#!/usr/bin/env bash
# Tests the berth Helm chart and its installer without a cluster or helm:
#
#   1. renders the chart for several values sets with render.go (Go
#      text/template + sprig + sigs.k8s.io/yaml, the libraries helm uses,
#      built from Debian's packaged sources), lints the output with yamllint,
#      validates the values against values.schema.json (and checks that bad
#      values files are rejected), and checks each manifest's structure and
#      the config.toml/hosts.toml it carries (check_chart.py);
#   2. runs packaging/installer/berth-install.sh against temporary host roots
#      (installer-test.sh), fed with the ConfigMap as the pod would see it;
#   3. shellchecks the installer and the scripts.
#
# Installs the Debian packages it needs when they are missing (as root).
# BERTH_BIN=<berth binary> cross-checks config.toml against that binary
# (default: the newer of target/release/berth and target/debug/berth, if any).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
chart=$(cd "$here/.." && pwd)
repo=$(cd "$chart/../.." && pwd)
start=$SECONDS
PY=/usr/bin/python3

packages=(golang-go golang-github-masterminds-sprig-dev golang-k8s-sigs-yaml-dev
    yamllint python3-yaml python3-jsonschema busybox-static shellcheck)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed$' || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        echo "skipped: needs Debian packages ${missing[*]} (run as root with apt-get to install them)"
        exit 0
    fi
    echo "chart tests: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || echo "chart tests: warning: apt-get update failed" >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

T=$(mktemp -d "${TMPDIR:-/tmp}/berth-chart-test.XXXXXX")
trap 'rm -rf "$T"' EXIT
passed=0
failed=0
step() { # description command...
    local what=$1
    shift
    if "$@"; then
        echo "ok: $what"
        passed=$((passed + 1))
    else
        echo "FAILED: $what" >&2
        failed=$((failed + 1))
    fi
}

# The renderer, cached by its source's hash (GOPATH mode, no network).
cache=${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/berth-chart-tests
render=$cache/render-$(sha256sum "$here/render.go" | cut -c1-16)
if [[ ! -x $render ]]; then
    mkdir -p "$cache"
    (cd "$here" && GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS="" GOPROXY=off GOCACHE="$cache/gocache" \
        go build -o "$render.tmp" render.go) && mv "$render.tmp" "$render"
fi

berth=${BERTH_BIN:-}
if [[ -z $berth ]]; then
    for b in "$repo/target/release/berth" "$repo/target/debug/berth"; do
        [[ -x $b ]] || continue
        if [[ -z $berth || $b -nt $berth ]]; then berth=$b; fi
    done
fi
berth_args=()
if [[ -n $berth ]]; then
    berth_args=(--berth "$berth")
    echo "chart tests: cross-checking config.toml with $berth"
else
    echo "chart tests: note: no berth binary (target/*/berth or BERTH_BIN); config.toml not cross-checked"
fi

render_to() { # output-file renderer-args...
    local out=$1
    shift
    "$render" "$@" >"$out"
}

# name  release  namespace  values files...
sets=(
    "defaults berth kube-system"
    "full node-runtime berth-system values/full.yaml"
    "switch berth kube-system values/switch.yaml"
)
for s in "${sets[@]}"; do
    read -r name release ns files <<<"$s"
    echo "== render: $name (release $release in $ns${files:+, -f $files})"
    fargs=()
    for f in $files; do fargs+=(-f "$here/$f"); done
    step "$name: renders" render_to "$T/$name.yaml" -chart "$chart" "${fargs[@]}" -name "$release" -namespace "$ns" \
        -values-out "$T/$name.values.json" -notes-out "$T/$name.notes.txt"
    step "$name: values pass values.schema.json" "$PY" "$here/check_chart.py" schema "$chart/values.schema.json" "$T/$name.values.json"
    step "$name: yamllint" yamllint -s -c "$here/yamllint.yaml" "$T/$name.yaml"
    step "$name: manifests well-formed and carry the values" \
        "$PY" "$here/check_chart.py" check "$T/$name.yaml" "$T/$name.values.json" --name "$release" --namespace "$ns" "${berth_args[@]}"
    step "$name: NOTES.txt renders" grep -q "daemonset/" "$T/$name.notes.txt"
done
step "a config change changes the pods' checksum/config (pods roll)" \
    test "$("$PY" "$here/check_chart.py" checksum "$T/defaults.yaml")" != "$("$PY" "$here/check_chart.py" checksum "$T/full.yaml")"
step "switchRuntime set: NOTES warn about draining" grep -q "drain nodes" "$T/switch.notes.txt"

echo "== values that must be rejected"
for f in "$here"/values/bad-*.yaml; do
    b=$(basename "$f" .yaml)
    "$render" -chart "$chart" -f "$f" -values-out "$T/$b.json" >/dev/null 2>"$T/$b.err" || true
    step "$b rejected by the schema" "$PY" "$here/check_chart.py" schema "$chart/values.schema.json" "$T/$b.json" --expect-invalid
done

render_fails() { # values-file expected-message
    ! "$render" -chart "$chart" -f "$1" >/dev/null 2>"$T/fail.err" && grep -qF "$2" "$T/fail.err"
}
step "OnDelete with the uninstall hook: rendering fails with a reason" \
    render_fails "$here/values/fail-ondelete.yaml" "needs updateStrategy.type=RollingUpdate"

echo "== lint"
step "yamllint values.yaml and test values" yamllint -s -c "$here/yamllint.yaml" "$chart/values.yaml" "$chart/Chart.yaml" "$here"/values/*.yaml
shell_scripts=("$here"/*.sh)
[[ -f $repo/scripts/build-installer-image.sh ]] && shell_scripts+=("$repo/scripts/build-installer-image.sh")
step "shellcheck berth-install.sh (POSIX sh)" shellcheck -s sh "$repo/packaging/installer/berth-install.sh"
step "shellcheck test and build scripts" shellcheck -x "${shell_scripts[@]}"

echo "== installer against temporary host roots (ConfigMap of the 'full' set)"
step "ConfigMap laid out as the pod sees it" "$PY" "$here/check_chart.py" extract "$T/full.yaml" "$T/config-src"
step "installer tests" bash "$here/installer-test.sh" "$T/config-src"

echo "chart tests took $((SECONDS - start))s"
echo "chart: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
