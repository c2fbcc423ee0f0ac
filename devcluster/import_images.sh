#!/usr/bin/env bash
# Import docker-archives into a fresh containerd root (unpacked for overlayfs, pinned), in a private
# mount + PID namespace of its own: `unshare --mount --pid --fork --mount-proc --kill-child` runs it.
#   import_images.sh CONTAINERD CTR CONFIG SOCKET ARCHIVE...
# real_node.py keeps the result as a read-only "golden" root per image set and hard-links it into each
# node's work directory (the 5.5 GB CPU trainer image takes minutes to import on these cores).
set -euo pipefail
containerd="$1" ctr="$2" config="$3" socket="$4"
shift 4
mount -t tmpfs tmpfs /run
"$containerd" --config "$config" >"$(dirname "$socket")/containerd.log" 2>&1 &
for _ in $(seq 300); do [ -S "$socket" ] && break; sleep 0.1; done
for archive in "$@"; do
    "$ctr" --address "$socket" -n k8s.io images import "$archive" >/dev/null
done
for ref in $("$ctr" --address "$socket" -n k8s.io images ls -q); do
    "$ctr" --address "$socket" -n k8s.io images label "$ref" io.cri-containerd.pinned=pinned >/dev/null
done
"$ctr" --address "$socket" -n k8s.io images ls -q
kill -TERM %1
wait
