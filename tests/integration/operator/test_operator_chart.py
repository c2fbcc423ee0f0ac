"""The Helm chart with the real helm binary, validated by the real API server's schemas."""

from __future__ import annotations

import pytest
import yaml

from devcluster.controlplane import ControlPlane
from tests.integration.operator.conftest import CHART

pytestmark = pytest.mark.integration


def test_helm_lint(kube_cluster: ControlPlane) -> None:
    result = kube_cluster.helm("lint", str(CHART), "--strict", check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "values",
    [[], ["--set", "watchNamespaces={team-a,team-b}", "--set", "replicaCount=3"], ["--set", "metrics.enabled=false"]],
    ids=["defaults", "namespaced", "no-metrics"],
)
def test_rendered_chart_passes_server_side_validation(
    kube_cluster: ControlPlane, installed_chart: str, values: list[str]
) -> None:
    """`helm template` output is accepted by the API server (schemas, CRDs, RBAC) in a dry run."""
    rendered = kube_cluster.helm("template", "kube-sft", str(CHART), "--namespace", "default", *values).stdout
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(rendered) if doc)
    assert "Deployment" in kinds and "ClusterRole" in kinds
    for namespace in ("team-a", "team-b"):
        kube_cluster.kubectl("create", "namespace", namespace, check=False)
    result = kube_cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered, check=False)
    assert result.returncode == 0, result.stderr


def test_monitoring_objects_render_when_the_prometheus_operator_exists(kube_cluster: ControlPlane) -> None:
    rendered = kube_cluster.helm(
        "template", "kube-sft", str(CHART), "--api-versions", "monitoring.coreos.com/v1"
    ).stdout
    docs = {doc["kind"]: doc for doc in yaml.safe_load_all(rendered) if doc}
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule"} <= set(docs)
    assert docs["PrometheusRule"]["spec"]["groups"][0]["rules"]
    deployment = docs["Deployment"]
    assert deployment["spec"]["replicas"] == 2
    assert "--peering-name=kube-sft" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]


def test_helm_install_runs_the_operator_under_the_charts_service_account(
    kube_cluster: ControlPlane, node_agent: object, installed_chart: str
) -> None:
    """The chart's Deployment (2 replicas, peering) serves a namespace; one replica is active."""
    import uuid

    import kubernetes

    from devcluster.procs import wait_until
    from tests.integration.operator.test_operator_reconcile import GROUP, PLURAL, VERSION, script, sftjob

    served = f"chart-{uuid.uuid4().hex[:6]}"
    system = f"{served}-system"
    v1 = kubernetes.client.CoreV1Api(kube_cluster.client)
    v1.create_namespace({"metadata": {"name": served}})
    release = f"r-{served}"
    kube_cluster.helm(
        "install", release, str(CHART), "--namespace", system, "--create-namespace", "--set", f"watchNamespaces={{{served}}}",
        "--set", f"peering.name={release}", "--set", "resyncSeconds=2",
    )  # fmt: skip
    try:
        running = lambda: [p for p in v1.list_namespaced_pod(system).items if p.status.phase == "Running"]  # noqa: E731
        wait_until(lambda: len(running()) == 2, 60, "two operator replicas Running")
        custom = kubernetes.client.CustomObjectsApi(kube_cluster.client)
        custom.create_namespaced_custom_object(
            GROUP, VERSION, served, PLURAL, sftjob("via-chart", script("time.sleep(1)"))
        )

        def succeeded() -> bool:
            job = custom.get_namespaced_custom_object(GROUP, VERSION, served, PLURAL, "via-chart")
            return (job.get("status") or {}).get("phase") == "Succeeded"

        wait_until(succeeded, 90, "the chart's operator to run the job to Succeeded", interval=0.5)

        def peers() -> dict[str, object]:
            peering = custom.get_namespaced_custom_object("kopf.dev", "v1", served, "kopfpeerings", release)
            return peering.get("status") or {}

        # A pod is Running as soon as its process starts; kopf writes its peering entry only after its
        # start-up, which on a loaded 2-core machine can come after the first replica ran the job.
        wait_until(lambda: len(peers()) == 2, 60, "both replicas taking part in peering", interval=0.5)
    finally:
        kube_cluster.helm("uninstall", release, "--namespace", system, check=False)
        v1.delete_namespace(served)
