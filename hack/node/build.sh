#!/usr/bin/env bash
# Build (or find cached) the test cluster's real node: kubelet (from the control plane's wrapper
# module, hack/controlplane/k8s), containerd v2 + ctr (hack/node/containerd), the pause image, and
# the Debian packages runc, CNI plugins and iptables. Like hack/controlplane/build.sh: binaries in
# $KUBE_SFT_CACHE/bin/<version>/, a warm run only checks the cache; prints the cold/warm time.
# Run it after the control plane's build (the kubelet shares its Go build cache).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=../controlplane/versions.env
source "$HERE/../controlplane/versions.env"
# shellcheck source=versions.env
source "$HERE/versions.env"
# shellcheck source=../lib.sh
source "$HERE/../lib.sh"
CACHE="${KUBE_SFT_CACHE:-$HOME/.cache/kube-sft}"
K8S_BIN="$CACHE/bin/$K8S_VERSION"
CONTAINERD_BIN="$CACHE/bin/containerd-$CONTAINERD_VERSION"
IMAGES="$CACHE/images"
START=$(date +%s)
MODE=warm
mkdir -p "$K8S_BIN" "$CONTAINERD_BIN" "$IMAGES"

log() { echo "[node-bins] $*" >&2; }
seconds_since() { echo $(( $(date +%s) - $1 )); }

command -v go >/dev/null || export PATH="/usr/local/go/bin:$PATH"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-trimpath ${GOFLAGS_EXTRA:-}"

# A scratch copy of the control plane's wrapper module: the kubelet's go.sum lines are added there,
# never to the checkout's files.
k8s_module_copy() {
    local dir
    dir="$(mktemp -d)"
    cp "$HERE/../controlplane/k8s/go.mod" "$HERE/../controlplane/k8s/go.sum" "$dir/"
    echo "$dir"
}

need_go() { command -v go >/dev/null || { log "error: go (>= 1.26) is needed to build the node"; exit 1; }; }

build_kubelet() {
    [ -x "$K8S_BIN/kubelet" ] && return 0
    MODE=cold; need_go
    local t0 ldflags
    t0=$(date +%s)
    log "building kubelet $K8S_VERSION from the Go module proxy (1 minute after the control plane, 5 cold)"
    # The same version stamp as the control plane's binaries (hack/controlplane/build.sh).
    ldflags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitTreeState=clean -X $pkg.gitCommit=module-proxy-$K8S_VERSION"
    done
    local module
    module="$(k8s_module_copy)"
    (cd "$module" && nice -n 10 go build -mod=mod -ldflags "$ldflags" -o "$K8S_BIN/" k8s.io/kubernetes/cmd/kubelet)
    rm -rf "$module"
    log "kubelet built in $(seconds_since "$t0")s"
}

build_containerd() {
    [ -x "$CONTAINERD_BIN/containerd" ] && [ -x "$CONTAINERD_BIN/ctr" ] && [ -x "$CONTAINERD_BIN/containerd-shim-runc-v2" ] && return 0
    MODE=cold; need_go
    local t0 pkg=github.com/containerd/containerd/v2
    t0=$(date +%s)
    log "building containerd $CONTAINERD_VERSION, its runc shim and ctr from the Go module proxy"
    (cd "$HERE/containerd" && nice -n 10 go build -tags "no_btrfs no_devmapper no_zfs" \
        -ldflags "-s -w -X $pkg/version.Version=$CONTAINERD_VERSION" \
        -o "$CONTAINERD_BIN/" "$pkg/cmd/containerd" "$pkg/cmd/ctr" "$pkg/cmd/containerd-shim-runc-v2")
    log "containerd built in $(seconds_since "$t0")s"
}

# The sandbox image: a static `pause` (Kubernetes' own source) in an image of one file.
build_pause() {
    local archive="$IMAGES/pause-$K8S_VERSION.tar"
    [ -s "$archive" ] && return 0
    MODE=cold
    local src tmp
    need_go
    local module
    module="$(k8s_module_copy)"
    src="$(cd "$module" && go mod download k8s.io/kubernetes && go list -mod=mod -m -f '{{.Dir}}' k8s.io/kubernetes)"
    src="$src/build/pause/linux/pause.c"
    rm -rf "$module"
    tmp="$(mktemp -d)"
    gcc -Os -static -Wall -Werror -DVERSION="$K8S_VERSION" -o "$tmp/pause" "$src"
    printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$tmp/Containerfile"
    buildah build --quiet --isolation chroot -t "$PAUSE_IMAGE" -f "$tmp/Containerfile" "$tmp" >/dev/null
    buildah push --quiet "$PAUSE_IMAGE" "docker-archive:$archive.tmp:$PAUSE_IMAGE" >&2
    mv "$archive.tmp" "$archive"
    rm -rf "$tmp"
}

install_debian_packages() {
    # shellcheck disable=SC2086  # a list of names
    apt_install $NODE_DEBIAN_PACKAGES buildah gcc libc6-dev
}

install_debian_packages
build_containerd
build_kubelet
build_pause
"$K8S_BIN/kubelet" --version >&2
log "$MODE in $(seconds_since "$START")s -> $K8S_BIN/kubelet, $CONTAINERD_BIN"
