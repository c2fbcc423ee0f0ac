"""KWOK on the real control plane: fake GPU nodes come up Ready, and a pod they "run" goes Running then
Succeeded (hack/kwok/stages.yaml), or Failed with exit code 137 when annotated to fail — what
the operator benchmark (bench/operator_scale/cluster.py) relies on. Fails (never skips) when the kwok binary is not built."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest

from bench.operator_scale.cluster import MissingToolError, create_nodes, kwok_binary, start_kwok
from bench.operator_scale.flavours import FAIL_ANNOTATION, GPU
from devcluster.controlplane import ControlPlane
from devcluster.procs import wait_until

pytestmark = pytest.mark.integration
RUN_SECONDS = 3.0


@pytest.fixture(scope="module")
def kwok_cluster(kube_cluster: ControlPlane) -> Iterator[ControlPlane]:
    """The session's control plane with KWOK managing two fake 8-GPU nodes."""
    try:
        kwok_binary()
    except MissingToolError as error:
        pytest.fail(str(error), pytrace=False)
    process = start_kwok(kube_cluster, RUN_SECONDS)
    create_nodes(kube_cluster.client, 2, timeout=60)
    yield kube_cluster
    process.stop()
    kube_cluster.processes.remove(process)
    v1 = kubernetes.client.CoreV1Api(kube_cluster.client)
    for index in range(2):
        v1.delete_node(f"kwok-gpu-{index:03d}")


def gpu_pod(name: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {
            "restartPolicy": "Never",
            # KWOK's nodes only: the session's node agent (8 GPUs too) may be up, and cannot run a pod without a command.
            "nodeSelector": {"type": "kwok"},
            "containers": [{"name": "main", "image": "example.invalid/none", "resources": {"limits": {GPU: "8"}}}],
        },
    }


def phase_of(v1: kubernetes.client.CoreV1Api, namespace: str, name: str) -> dict[str, Any]:
    pod: dict[str, Any] = json.loads(v1.read_namespaced_pod(name, namespace, _preload_content=False).data)
    return pod


def test_kwok_nodes_have_gpus(kwok_cluster: ControlPlane) -> None:
    v1 = kubernetes.client.CoreV1Api(kwok_cluster.client)
    node = v1.read_node("kwok-gpu-000")
    assert node.status.allocatable[GPU] == "8"
    assert any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)


def test_pod_runs_then_succeeds(kwok_cluster: ControlPlane, namespace: str) -> None:
    v1 = kubernetes.client.CoreV1Api(kwok_cluster.client)
    v1.create_namespaced_pod(namespace, gpu_pod("ok"))
    t0 = time.monotonic()
    running = wait_until(
        lambda: (pod := phase_of(v1, namespace, "ok"))["status"].get("phase") == "Running" and pod, 20, "Running", 0.1
    )
    assert running["spec"]["nodeName"].startswith("kwok-gpu-")
    done = wait_until(
        lambda: (pod := phase_of(v1, namespace, "ok"))["status"].get("phase") == "Succeeded" and pod, 20, "Succeeded"
    )
    assert time.monotonic() - t0 >= RUN_SECONDS - 0.5
    assert done["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0


def test_annotated_pod_fails_with_137(kwok_cluster: ControlPlane, namespace: str) -> None:
    v1 = kubernetes.client.CoreV1Api(kwok_cluster.client)
    v1.create_namespaced_pod(namespace, gpu_pod("doomed"))
    wait_until(lambda: phase_of(v1, namespace, "doomed")["status"].get("phase") == "Running", 20, "Running", 0.1)
    v1.patch_namespaced_pod("doomed", namespace, {"metadata": {"annotations": {FAIL_ANNOTATION: "true"}}})
    failed = wait_until(
        lambda: (pod := phase_of(v1, namespace, "doomed"))["status"].get("phase") == "Failed" and pod, 20, "Failed"
    )
    assert failed["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137
