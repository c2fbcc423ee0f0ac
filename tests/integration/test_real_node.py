"""The real test node (devcluster/real_node.py) runs the project's images, and leaves nothing behind.

Two bugs only a real kubelet shows (issue 17) are checked here on one: the operator image's user
(`useradd: group operator exists` stopped the build on every Debian base) and the service-link
variables a kubelet injects (`KUBE_SFT_METRICS_PORT=tcp://...` crashed the operator at start).
The node is this module's own, pods are bound to it by name (the node agent may share the cluster).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from devcluster.controlplane import ControlPlane
from devcluster.node_images import archive_image_tags
from devcluster.procs import wait_until
from devcluster.real_node import KUBELET_SYSCTLS, RealNode
from tests.cluster_fixtures import running_real_node

pytestmark = pytest.mark.integration

# Where a kubelet, containerd, runc or CNI plugin writes by default: the node must leave these as they were.
HOST_PATHS = (
    "/var/lib/kubelet", "/var/lib/containerd", "/var/lib/cni", "/var/log/pods", "/var/log/containers",
    "/run/containerd", "/run/netns", "/var/run/netns", "/etc/cni/net.d", "/opt/cni", "/usr/libexec/kubernetes",
    "/etc/kubernetes",
)  # fmt: skip


def host_state() -> dict[str, Any]:
    """What of the host a kubelet or containerd would change by default: those paths, the sysctls.

    (Links, mounts and processes are shared with other test sessions on this machine: `leftovers()`
    looks for the node's own among them.)"""
    listing = {p: sorted(os.listdir(p)) if os.path.isdir(p) else os.path.exists(p) for p in HOST_PATHS}
    sysctls = {name: Path(f"/proc/sys/{name}").read_text() for name in KUBELET_SYSCTLS}
    return {"paths": listing, "sysctls": sysctls}


@pytest.fixture(scope="module")
def before() -> dict[str, Any]:
    return host_state()


@pytest.fixture(scope="module")
def node(
    request: pytest.FixtureRequest,
    before: dict[str, Any],
    kube_cluster: ControlPlane,
    project_images: dict[str, Path],
) -> Iterator[RealNode]:
    with running_real_node(request.config, kube_cluster, project_images) as started:
        yield started


@pytest.fixture(scope="module")
def images(project_images: dict[str, Path]) -> dict[str, str]:
    return {name: archive_image_tags(path)[0] for name, path in project_images.items()}


def run_pod(cluster: ControlPlane, node: RealNode, namespace: str, image: str, script: str, **spec: Any) -> str:
    """Run `sh -c script` in a pod of `image` bound to the node; its output once it Succeeded."""
    v1 = kubernetes.client.CoreV1Api(cluster.client)
    name = f"p-{uuid.uuid4().hex[:6]}"
    body = {
        "metadata": {"name": name},
        "spec": {
            "nodeName": node.node_name,
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": image, "command": ["sh", "-c", script]}],
            **spec,
        },
    }
    v1.create_namespaced_pod(namespace, body)

    def done() -> str | None:
        phase = v1.read_namespaced_pod(name, namespace).status.phase
        return phase if phase in ("Succeeded", "Failed") else None

    phase = wait_until(done, 180, f"pod {namespace}/{name} to finish", interval=0.5)
    output = node.logs(namespace, name)
    assert phase == "Succeeded", f"pod {name} {phase}:\n{output}"
    return output


def test_operator_image_runs_as_its_own_non_root_user(
    kube_cluster: ControlPlane, node: RealNode, images: dict[str, str], namespace: str
) -> None:
    output = run_pod(kube_cluster, node, namespace, images["operator"], "id -u; id -un; python -m sft_operator --help")
    uid, user, *usage = output.splitlines()
    assert (uid, user) == ("1000", "kube-sft")
    assert any("The kube-sft SFTJob operator" in line for line in usage)


def test_service_link_variables_leave_the_operator_settings_alone(
    kube_cluster: ControlPlane, node: RealNode, images: dict[str, str], namespace: str
) -> None:
    v1 = kubernetes.client.CoreV1Api(kube_cluster.client)
    service = {"metadata": {"name": "kube-sft-metrics"}, "spec": {"ports": [{"port": 28080, "name": "metrics"}]}}
    v1.create_namespaced_service(namespace, service)
    script = (
        'echo "$KUBE_SFT_METRICS_PORT"; '
        "python -c 'from sft_operator.__main__ import parse_args; a = parse_args([]); print(a.metrics_port, a.liveness_port)'"
    )
    link, ports = run_pod(kube_cluster, node, namespace, images["operator"], script).splitlines()
    assert link.startswith("tcp://10.0.0.") and link.endswith(":28080")  # the kubelet injected it
    assert ports == "8080 8081"


def test_trainer_cpu_image_runs_torch_as_non_root(
    kube_cluster: ControlPlane, node: RealNode, images: dict[str, str], namespace: str
) -> None:
    script = (
        "id -u; python -c 'import torch, sft_trainer.cli; print((torch.ones(2, 2) @ torch.ones(2, 2)).sum().item())'"
    )
    output = run_pod(kube_cluster, node, namespace, images["trainer-cpu"], script)
    assert output.splitlines() == ["1000", "8.0"]


def test_pods_reach_the_api_server_and_resolve_pod_names(
    kube_cluster: ControlPlane, node: RealNode, images: dict[str, str], namespace: str
) -> None:
    """In-cluster config (the `kubernetes` Service) and `<hostname>.<subdomain>` DNS, as a gang uses them."""
    script = (
        "python -c 'import socket, kubernetes as k; k.config.load_incluster_config(); "
        'print(k.client.VersionApi().get_code().git_version); print(socket.gethostbyname("me.sub"))\''
    )
    output = run_pod(
        kube_cluster, node, namespace, images["operator"], script, hostname="me", subdomain="sub",
        automountServiceAccountToken=True,
    )  # fmt: skip
    version, address = output.splitlines()
    assert version.startswith("v1.")
    assert address.startswith(f"10.201.{node.index}.")


def test_stopping_the_node_leaves_nothing_behind(node: RealNode, before: dict[str, Any]) -> None:
    """No process, mount, link, route, cgroup or sysctl of the node, nothing written outside its directory."""
    node.stop()
    assert node.leftovers() == []
    assert host_state() == before
