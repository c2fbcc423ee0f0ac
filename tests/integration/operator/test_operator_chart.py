"""The Helm chart with the real helm binary, validated by the real API server's schemas."""

from __future__ import annotations

import pytest
import yaml

from tests.cluster.controlplane import ControlPlane
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
