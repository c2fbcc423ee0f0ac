#!/usr/bin/env bash
# The real test node's first process (PID 1 of its own PID, mount and network namespaces), started by
# devcluster/real_node.py as `unshare --mount --pid --net --fork --mount-proc --kill-child`.
# Everything it mounts, every process and network device it makes, dies with these namespaces: one
# SIGTERM to it stops the node (kubelet first, then containerd; the kernel kills the rest).
# Arguments come as environment variables (NODE_*), set by real_node.py.
set -euo pipefail

log() { echo "[node] $(date +%T) $*"; }
# containerd finds its runc shim (built with it) on PATH.
export PATH="$(dirname "$NODE_CONTAINERD"):$PATH"

# Private from the host already (unshare's default propagation); shared inside, as the kubelet wants.
mount --make-rshared /
# What the kubelet, containerd, runc and the CNI plugins write outside their configured directories
# (netns files, IPAM leases, /var/log/containers links, runc state): in memory, gone with the node.
for dir in /run /var/lib /var/log; do
    mount -t tmpfs -o mode=0755 tmpfs "$dir"
done
# Host-wide sysctls the kubelet sets at start (they are not per namespace): it writes files instead.
for name in vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops \
    kernel/keys/root_maxkeys kernel/keys/root_maxbytes; do
    cp "/proc/sys/$name" "$NODE_DIR/sysctl/${name//\//.}"
    mount --bind "$NODE_DIR/sysctl/${name//\//.}" "/proc/sys/$name"
done

# The link to the host: real_node.py moves eth0 in once this namespace exists.
for _ in $(seq 200); do ip link show eth0 >/dev/null 2>&1 && break; sleep 0.05; done
ip link set lo up
ip addr add "$NODE_IP/24" dev eth0
ip link set eth0 up
ip route add default via "$NODE_HOST_IP"
echo 1 >/proc/sys/net/ipv4/ip_forward
# The `kubernetes` Service (no kube-proxy here): its cluster IP goes to the API server's forwarder.
for chain in PREROUTING OUTPUT; do
    iptables -t nat -A "$chain" -d "$NODE_API_SERVICE_IP/32" -p tcp --dport 443 \
        -j DNAT --to-destination "$NODE_HOST_IP:$NODE_API_PORT"
done
# Pods reach the kubelet's port only through the API server (`kubectl logs`), never directly.
iptables -A INPUT -s "$NODE_POD_CIDR" -p tcp --dport 10250 -j REJECT

log "starting containerd"
"$NODE_CONTAINERD" --config "$NODE_DIR/containerd.toml" >>"$NODE_DIR/logs/containerd.log" 2>&1 &
containerd_pid=$!
for _ in $(seq 200); do [ -S "$NODE_DIR/containerd.sock" ] && break; sleep 0.05; done
touch "$NODE_DIR/containerd.ready"
log "starting kubelet"
"$NODE_KUBELET" --config="$NODE_DIR/kubelet.yaml" --kubeconfig="$NODE_DIR/kubelet.kubeconfig" \
    --root-dir="$NODE_DIR/kubelet" --cert-dir="$NODE_DIR/kubelet-pki" \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --v=1 >>"$NODE_DIR/logs/kubelet.log" 2>&1 &
kubelet_pid=$!

stop() {
    log "stopping"
    kill -TERM "$kubelet_pid" 2>/dev/null || true
    wait "$kubelet_pid" 2>/dev/null || true
    kill -TERM "$containerd_pid" 2>/dev/null || true
    wait "$containerd_pid" 2>/dev/null || true
    exit 0
}
trap stop TERM INT
# Either daemon exiting ends the node (real_node.py reports its log).
wait -n "$kubelet_pid" "$containerd_pid" || true
log "a daemon exited"
exit 1
