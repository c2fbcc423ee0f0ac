"""The Helm chart's values as a model: the one source of `charts/kube-sft/values.schema.json`.

`python -m sft_operator.api.chart_values --write` (part of `make crds`) writes the schema; Helm validates
every `helm install/upgrade/template` against it, so a wrong type (`--set replicaCount=two`), a value
outside its set (`metrics.serviceMonitor.enabled=yes`) or an unknown key (`--set resourcez.foo=1`) is
refused with the key's path. values.yaml holds the documented defaults; tests/unit/chart checks that it
validates and equals this model's defaults, and that the schema file is fresh.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from sft_operator.api.models import DNSSubdomain, K8sModel

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "charts" / "kube-sft" / "values.schema.json"

Auto = Literal["auto"] | bool
"""A Prometheus Operator object: true, false, or "auto" (only when monitoring.coreos.com/v1 exists)."""
KubeObject = dict[str, Any]
"""A Kubernetes object passed through to the rendered manifest as written (the API server validates it)."""
Quantity = str | int
"""A resource quantity: `"100m"`, `"512Mi"`, `2`."""
Port = Annotated[int, Field(ge=1, le=65535)]


class Image(K8sModel):
    """An image reference."""

    repository: str
    tag: str = ""
    """Default: the chart's appVersion."""
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"


class TrainerImage(K8sModel):
    """The trainer image SFTJobs use unless their spec.image says otherwise."""

    repository: str = "ghcr.io/kube-sft/trainer"
    tag: str = ""


class Crds(K8sModel):
    """The SFTJob and ClusterSFTRuntime CRDs (templates/crds.yaml)."""

    install: bool = True
    """Render the CRDs (kept on uninstall); false when the platform applies crds/ itself."""


class Peering(K8sModel):
    """kopf peering between the operator replicas."""

    name: str = "kube-sft"
    lifetime: Annotated[int, Field(ge=1)] = 20


class Resources(K8sModel):
    """The operator container's resources."""

    requests: dict[str, Quantity] = Field(default_factory=lambda: dict[str, Quantity](cpu="100m", memory="192Mi"))
    limits: dict[str, Quantity] = Field(default_factory=lambda: dict[str, Quantity](memory="512Mi"))


class ServiceAccount(K8sModel):
    """The operator's ServiceAccount."""

    create: bool = True
    name: str = ""
    annotations: dict[str, str] = Field(default_factory=dict)


class Rbac(K8sModel):
    """The operator's (Cluster)Role and binding."""

    create: bool = True


class Admission(K8sModel):
    """The admission policies (docs/security.md)."""

    enabled: bool = True
    host_access_namespaces: list[str] = Field(default_factory=list)


class PodDisruptionBudget(K8sModel):
    """A PodDisruptionBudget for the operator replicas (a drain keeps one running)."""

    enabled: bool = True
    max_unavailable: Annotated[int, Field(ge=0)] = 1


class Monitor(K8sModel):
    """A ServiceMonitor or PodMonitor."""

    enabled: Auto = "auto"
    interval: str = "30s"
    labels: dict[str, str] = Field(default_factory=dict)


class PrometheusRule(K8sModel):
    """The alerting rules (files/alerts.yaml)."""

    enabled: Auto = "auto"
    labels: dict[str, str] = Field(default_factory=dict)


class GrafanaDashboard(K8sModel):
    """The dashboard ConfigMap (files/dashboard.json)."""

    enabled: bool = True
    labels: dict[str, str] = Field(default_factory=lambda: {"grafana_dashboard": "1"})


class Metrics(K8sModel):
    """The operator's metrics endpoint and the monitoring objects."""

    enabled: bool = True
    port: Port = 8080
    service_monitor: Monitor = Monitor()
    pod_monitor: Monitor = Monitor(interval="15s")
    prometheus_rule: PrometheusRule = PrometheusRule()
    grafana_dashboard: GrafanaDashboard = GrafanaDashboard()


class ChartValues(K8sModel):
    """Every value of charts/kube-sft (values.yaml documents each one)."""

    name_override: str = ""
    fullname_override: str = ""
    replica_count: Annotated[int, Field(ge=0)] = 2
    image: Image = Image(repository="ghcr.io/kube-sft/operator")
    image_pull_secrets: list[KubeObject] = Field(default_factory=list)
    trainer_image: TrainerImage = TrainerImage()
    command: list[str] = Field(default_factory=lambda: ["python", "-m", "sft_operator"])
    extra_args: list[str] = Field(default_factory=list)
    extra_env: list[KubeObject] = Field(default_factory=list)
    default_runtime: Literal[""] | DNSSubdomain = ""
    """The ClusterSFTRuntime of SFTJobs without spec.runtimeRef ("": none)."""
    watch_namespaces: list[str] = Field(default_factory=list)
    crds: Crds = Crds()
    peering: Peering = Peering()
    resync_seconds: Annotated[float, Field(gt=0)] = 5
    resources: Resources = Resources()
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[KubeObject] = Field(default_factory=list)
    affinity: KubeObject = Field(default_factory=dict)
    priority_class_name: str = ""
    pod_annotations: dict[str, str] = Field(default_factory=dict)
    pod_labels: dict[str, str] = Field(default_factory=dict)
    pod_disruption_budget: PodDisruptionBudget = PodDisruptionBudget()
    service_account: ServiceAccount = ServiceAccount()
    rbac: Rbac = Rbac()
    admission: Admission = Admission()
    metrics: Metrics = Metrics()
    liveness_port: Port = 8081


def values_schema() -> dict[str, Any]:
    """The JSON schema Helm validates values against (unknown keys refused at every level)."""
    schema = ChartValues.model_json_schema(by_alias=True, mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def rendered() -> str:
    """values.schema.json's text."""
    return json.dumps(values_schema(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print the schema, `--write` it to the chart, or `--check` that the chart's copy is fresh."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--write", action="store_true", help=f"write {SCHEMA_PATH}")
    parser.add_argument("--check", action="store_true", help="exit 1 when the chart's schema is stale")
    args = parser.parse_args(argv)
    text = rendered()
    if args.check:
        if not SCHEMA_PATH.exists() or SCHEMA_PATH.read_text(encoding="utf-8") != text:
            print(f"stale: {SCHEMA_PATH} (run `make crds`)", file=sys.stderr)
            return 1
        return 0
    if args.write:
        SCHEMA_PATH.write_text(text, encoding="utf-8")
        print(f"wrote {SCHEMA_PATH}")
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
