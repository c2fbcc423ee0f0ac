"""The config files of a real node's daemons: containerd's, the CNI network's and the kubelet's. Pure."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from devcluster.real_node import RealNode


def containerd_config(workdir: Path, cni_dir: Path, pause_image: str) -> str:
    """containerd's config (version 3): state in the node's /run, data in workdir, runc, the CNI bridge."""
    return f"""version = 3
root = "{workdir / "containerd"}"
state = "/run/containerd"
[grpc]
  address = "{workdir / "containerd.sock"}"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{pause_image}"
[plugins."io.containerd.cri.v1.runtime"]
  # No CAP_SYS_RESOURCE on these machines: lowering oom_score_adj below the parent's fails.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
      SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{cni_dir}"]
    conf_dir = "{workdir / "cni"}"
"""


def cni_config(bridge: str, pod_cidr: str, ipam_dir: Path) -> dict[str, Any]:
    """A bridge + host-local IPAM network (masquerading what leaves the pod subnet)."""
    return {
        "cniVersion": "1.0.0",
        "name": "kube-sft",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(ipam_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(node: RealNode) -> dict[str, Any]:
    """The KubeletConfiguration of a node on a shared cgroup-v1 test machine."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node.node_ip,
        "readOnlyPort": 0,
        "healthzPort": 0,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(node.cluster.pki.ca.cert)},
        },
        # Only holders of a certificate of the cluster CA get past authentication (the API server).
        "authorization": {"mode": "AlwaysAllow"},
        "containerRuntimeEndpoint": f"unix://{node.workdir / 'containerd.sock'}",
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{node.cgroup_name}",
        "failCgroupV1": False,
        "failSwapOn": False,
        "protectKernelDefaults": False,
        "clusterDNS": [node.host_ip],
        "clusterDomain": "cluster.local",
        "resolvConf": str(node.workdir / "resolv.conf"),
        "podLogsDir": str(node.workdir / "pod-logs"),
        "volumePluginDir": str(node.workdir / "volume-plugins"),
        "rotateCertificates": False,
        "serializeImagePulls": False,
        "maxPods": 110,
        # Imported images cannot be pulled again: never garbage-collect them, never evict for disk.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "nodeStatusReportFrequency": "10s",
        "syncFrequency": "5s",
        "fileCheckFrequency": "20s",
        "shutdownGracePeriod": "0s",
    }
