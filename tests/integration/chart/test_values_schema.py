"""values.schema.json: generated from sft_operator.api.chart_values, fresh, and enforced by the real helm."""

from __future__ import annotations

import pytest
import yaml

from devcluster.controlplane import ControlPlane
from sft_operator.api import chart_values
from tests.integration.chart.helm import CHART, helm_template

pytestmark = pytest.mark.integration


def test_schema_file_is_fresh() -> None:
    assert (CHART / "values.schema.json").read_text(encoding="utf-8") == chart_values.rendered(), (
        "run `make crds` (python -m sft_operator.api.chart_values --write)"
    )


def test_values_yaml_is_the_models_defaults() -> None:
    """values.yaml documents the defaults; it validates and says exactly what the model says."""
    written = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    assert chart_values.ChartValues.model_validate(written) == chart_values.ChartValues()
    dumped = chart_values.ChartValues().model_dump(mode="json", by_alias=True)
    assert dumped == written


@pytest.mark.parametrize(
    ("setting", "path", "words"),
    [
        ("replicaCount=two", "/replicaCount", "got string, want integer"),
        ("resourcez.foo=1", "", "additional properties 'resourcez' not allowed"),
        ("metrics.serviceMonitor.enabled=yes", "/metrics/serviceMonitor/enabled", "value must be 'auto'"),
        ("resources.limitz.cpu=1", "/resources", "additional properties 'limitz' not allowed"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy", "value must be one of"),
    ],
)
def test_helm_refuses_wrong_types_and_unknown_keys(setting: str, path: str, words: str) -> None:
    result = helm_template("--set", setting, check=False)
    assert result.returncode != 0, f"helm rendered --set {setting}"
    assert f"at '{path}'" in result.stderr and words in result.stderr, result.stderr


def test_helm_accepts_the_documented_settings() -> None:
    """What the user guide and the e2e harness set passes the schema, and reaches the rendered objects."""
    rendered = helm_template(
        "--set", "replicaCount=3", "--set", "watchNamespaces={a,b}", "--set", "resyncSeconds=1",
        "--set", "resources.requests.cpu=10m", "--set", "metrics.serviceMonitor.enabled=true",
        "--set", "admission.hostAccessNamespaces={a}", "--set", "crds.install=false",
    ).stdout  # fmt: skip
    for line in ("replicas: 3", "- --namespace=a", "- --namespace=b", "- --resync-seconds=1", "cpu: 10m"):
        assert line in rendered, line
    assert "kind: ServiceMonitor" in rendered
    assert "kind: CustomResourceDefinition" not in rendered


@pytest.mark.parametrize("command", ["install", "upgrade --install"])
def test_helm_install_and_upgrade_refuse_before_touching_the_cluster(kube_cluster: ControlPlane, command: str) -> None:
    release = "schema-" + command.split()[0]
    result = kube_cluster.helm(
        *command.split(), release, str(CHART), "--namespace", "schema-probe", "--create-namespace",
        "--set", "replicaCount=two", check=False,
    )  # fmt: skip
    assert result.returncode != 0 and "at '/replicaCount': got string, want integer" in result.stderr, result.stderr
    listed = kube_cluster.helm("list", "--namespace", "schema-probe", "--short").stdout
    assert release not in listed
