#!/usr/bin/env bash
# Build the operator image and the trainer image's CPU flavour from their Dockerfiles, with the tags
# the chart deploys (hack/image_names.py; the CPU trainer gets "-cpu" after its tag).
#
# With a Docker engine: `docker build` on the Dockerfiles' default bases (also the GPU trainer).
# Without one (this machine, CI): buildah, and since no registry can be reached, the base is a local
# Debian rootfs (mmdebstrap, hack/images/versions.env) and pip installs from a wheelhouse downloaded
# from PyPI on the host. Each built image is exported as a docker-archive into
# $KUBE_SFT_CACHE/images/, keyed by the hash of everything it is built from: a warm run only checks
# the cache. The last lines printed are `<name>=<archive>` (the test node imports those).
#
#   hack/images/build.sh            # operator + trainer-cpu
#   KUBE_SFT_BUILDER=buildah|docker # force one builder
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
# shellcheck source=../lib.sh
source "$HERE/../lib.sh"
CACHE="${KUBE_SFT_CACHE:-$HOME/.cache/kube-sft}"
OUT="$CACHE/images"
PY="${KUBE_SFT_PYTHON:-$ROOT/.venv/bin/python}"
START=$(date +%s)
MODE=warm
mkdir -p "$OUT"

log() { echo "[images] $*" >&2; }
seconds_since() { echo $(( $(date +%s) - $1 )); }

OPERATOR_TAG="$("$PY" "$HERE/../image_names.py" operator)"
TRAINER_TAG="$("$PY" "$HERE/../image_names.py" trainer)"
TRAINER_CPU_TAG="$TRAINER_TAG-cpu"

builder() {
    if [ -n "${KUBE_SFT_BUILDER:-}" ]; then echo "$KUBE_SFT_BUILDER"; return; fi
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then echo docker; else echo buildah; fi
}

# sha256 of files and directory trees (paths relative to the repository root), __pycache__ left out.
tree_hash() {
    (cd "$ROOT" && find "$@" -type f -not -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum) \
        | sha256sum | cut -c1-16
}

install_debian_packages() {
    apt_install buildah mmdebstrap
}

# The local base: Debian + python3 + pip as a rootfs tarball (the stand-in for python:*-slim-bookworm).
base_image() {
    local key tar t0
    key="$(grep -E '^BASE_(SUITE|PACKAGES|TAG)=' "$HERE/versions.env" | sha256sum | cut -c1-16)"
    tar="$OUT/base-$BASE_SUITE-$key.tar"
    if [ ! -s "$tar" ]; then
        MODE=cold; t0=$(date +%s)
        log "building the base rootfs ($BASE_SUITE: $BASE_PACKAGES) with mmdebstrap"
        # Debian's python refuses `pip install` outside a venv (PEP 668); the slim Python images do not.
        nice -n 10 mmdebstrap --quiet --format=tar --variant=minbase --include="$BASE_PACKAGES" \
            --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
            --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
            "$BASE_SUITE" "${tar%.tar}.partial.tar" >&2
        mv "${tar%.tar}.partial.tar" "$tar"
        log "base rootfs built in $(seconds_since "$t0")s"
    fi
    local id_file="$OUT/base-$BASE_SUITE-$key.imported"
    if [ ! -s "$id_file" ] || ! buildah inspect --type image "$(cat "$id_file")" >/dev/null 2>&1; then
        MODE=cold
        local ctx
        ctx="$(mktemp -d)"
        printf 'FROM scratch\nADD rootfs.tar /\nCMD ["python3"]\n' >"$ctx/Containerfile"
        ln "$tar" "$ctx/rootfs.tar" 2>/dev/null || cp "$tar" "$ctx/rootfs.tar"
        buildah build --quiet --isolation chroot -t "$BASE_TAG" -f "$ctx/Containerfile" "$ctx" >"$id_file"
        rm -rf "$ctx"
    fi
    echo "$BASE_TAG"
}

# Every wheel the images' `pip install` needs, downloaded on the host (its pip cache and proxy
# settings apply) and mounted read-only into the builds, which then never reach the network: the
# locked requirement files (exported from uv.lock, with hashes) and the build backend.
wheelhouse() {
    local key dir t0 backend
    key="$( (cat "$ROOT/operator/requirements.txt" "$ROOT/trainer_image/requirements-cpu.txt" \
        "$ROOT/pyproject.toml"; echo "$BASE_SUITE") | sha256sum | cut -c1-16)"
    dir="$OUT/wheels-$key"
    if [ ! -f "$dir/.complete" ]; then
        MODE=cold; t0=$(date +%s)
        log "downloading the images' wheels from PyPI into $dir (cold: ~3 GB, torch brings CUDA libraries)"
        # Older wheelhouses are garbage once the lock moved on (they are large).
        find "$OUT" -maxdepth 1 -name 'wheels-*' -not -name "wheels-$key" -exec rm -rf {} +
        mkdir -p "$dir"
        local download=(python3 -m pip download -q --dest "$dir" --only-binary=:all: --python-version "$BASE_PYTHON")
        nice -n 10 "${download[@]}" --no-deps --require-hashes \
            -r "$ROOT/operator/requirements.txt" -r "$ROOT/trainer_image/requirements-cpu.txt" >&2
        backend="$("$PY" -c 'import sys, tomllib; print(*tomllib.load(open(sys.argv[1], "rb"))["build-system"]["requires"])' \
            "$ROOT/pyproject.toml")"
        # shellcheck disable=SC2086  # the backend's requirements are words
        nice -n 10 "${download[@]}" $backend >&2
        touch "$dir/.complete"
        log "wheels downloaded in $(seconds_since "$t0")s"
    fi
    echo "$dir"
}

# buildah build + export as a docker-archive named by its input hash; prints the archive's path.
build_with_buildah() {
    local name="$1" tag="$2" dockerfile="$3" key="$4"
    shift 4
    local archive="$OUT/$name-$key.tar"
    if [ -s "$archive" ]; then echo "$archive"; return 0; fi
    MODE=cold
    local t0 pipconf
    t0=$(date +%s)
    pipconf="$(mktemp)"
    printf '[global]\nno-index = true\nfind-links = /wheels\n' >"$pipconf"
    log "building $tag from $dockerfile with buildah"
    local previous
    previous="$(buildah images --quiet --no-trunc "$tag" 2>/dev/null | head -1 || true)"
    nice -n 10 buildah build --quiet --layers --isolation chroot -f "$ROOT/$dockerfile" -t "$tag" \
        --volume "$WHEELS:/wheels:ro" --volume "$pipconf:/etc/pip.conf:ro" "$@" "$ROOT" >&2
    rm -f "$pipconf"
    # The image this tag named before is garbage now (its layers stay while a newer image uses them).
    if [ -n "$previous" ]; then buildah rmi "$previous" >/dev/null 2>&1 || true; fi
    log "$tag built in $(seconds_since "$t0")s; exporting"
    rm -f "$archive.tmp"
    nice -n 10 buildah push --quiet "$tag" "docker-archive:$archive.tmp:$tag" >&2
    mv "$archive.tmp" "$archive"
    # Keep this archive and the one before it (another checkout may still use it); drop older ones.
    ls -t "$OUT/$name"-*.tar | tail -n +3 | xargs -r rm -f
    log "$tag exported in $(seconds_since "$t0")s: $(du -h "$archive" | cut -f1)"
    echo "$archive"
}

sources=(pyproject.toml README.md operator/sft_operator trainer_image/sft_trainer)
operator_inputs=(operator/Dockerfile operator/requirements.txt)
trainer_inputs=(trainer_image/Dockerfile trainer_image/requirements-cpu.txt trainer_image/requirements-gpu.txt)

if [ "$(builder)" = docker ]; then
    docker build -f "$ROOT/operator/Dockerfile" -t "$OPERATOR_TAG" "$ROOT"
    docker build -f "$ROOT/trainer_image/Dockerfile" -t "$TRAINER_TAG" "$ROOT"
    docker build -f "$ROOT/trainer_image/Dockerfile" --build-arg BASE_IMAGE=python:3.12.8-slim-bookworm \
        --build-arg FLAVOUR=cpu -t "$TRAINER_CPU_TAG" "$ROOT"
    exit 0
fi

install_debian_packages
BASE="$(base_image)"
WHEELS="$(wheelhouse)"
base_key="$(buildah images --quiet --no-trunc "$BASE" | head -1 | sed 's/^sha256://' | cut -c1-16)"
operator_key="$(tree_hash "${operator_inputs[@]}" "${sources[@]}")-$base_key"
trainer_key="$(tree_hash "${trainer_inputs[@]}" "${sources[@]}")-$base_key"
operator_archive="$(build_with_buildah operator "$OPERATOR_TAG" operator/Dockerfile "$operator_key" \
    --build-arg "BASE_IMAGE=$BASE")"
trainer_archive="$(build_with_buildah trainer-cpu "$TRAINER_CPU_TAG" trainer_image/Dockerfile "$trainer_key" \
    --build-arg "BASE_IMAGE=$BASE" --build-arg FLAVOUR=cpu)"
log "$MODE in $(seconds_since "$START")s"
echo "operator=$operator_archive"
echo "trainer-cpu=$trainer_archive"
