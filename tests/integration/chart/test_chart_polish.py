"""What a platform team checks in the rendered chart: labels, names, security context, probes, PDB, RBAC scope."""

from __future__ import annotations

import pytest

from tests.integration.chart.helm import by_kind, rendered

pytestmark = pytest.mark.integration

STANDARD_LABELS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
}


def test_pod_template_has_the_standard_labels() -> None:
    (deployment,) = by_kind(rendered(), "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert set(labels) >= STANDARD_LABELS, sorted(STANDARD_LABELS - set(labels))
    assert labels["app.kubernetes.io/component"] == "operator"
    # The selector is a subset of the pod labels and stays stable across versions (it is immutable).
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items() and "app.kubernetes.io/version" not in selector


def test_name_and_fullname_overrides() -> None:
    docs = rendered("--set", "nameOverride=sft", release="prod")
    (deployment,) = by_kind(docs, "Deployment")
    assert deployment["metadata"]["name"] == "prod-sft"
    assert deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "sft"
    docs = rendered("--set", "fullnameOverride=platform-sft")
    names = {doc["metadata"]["name"] for doc in docs if doc["kind"] in ("Deployment", "ServiceAccount", "Service")}
    assert names == {"platform-sft", "platform-sft-metrics"}


def test_no_fixed_uid_but_non_root() -> None:
    """OpenShift's restricted SCC assigns the UID: the chart must not pin one."""
    (deployment,) = by_kind(rendered(), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    contexts = [pod["securityContext"], *(c.get("securityContext", {}) for c in pod["containers"])]
    assert not any("runAsUser" in c or "runAsGroup" in c for c in contexts), contexts


def test_readiness_probe_and_disruption_budget() -> None:
    docs = rendered()
    (deployment,) = by_kind(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert not by_kind(rendered("--set", "podDisruptionBudget.enabled=false"), "PodDisruptionBudget")


def test_watch_namespaces_binds_namespaced_rules_only_there() -> None:
    docs = rendered("--set", "watchNamespaces={team-a,team-b}")
    bindings = by_kind(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    assert {b["roleRef"]["name"] for b in bindings} == {"kube-sft-namespaced"}
    cluster_bound = {b["roleRef"]["name"] for b in by_kind(docs, "ClusterRoleBinding")}
    assert cluster_bound == {"kube-sft"}, "the namespaced rules must not be bound cluster-wide"
    (cluster_only,) = [r for r in by_kind(docs, "ClusterRole") if r["metadata"]["name"] == "kube-sft"]
    resources = {res for rule in cluster_only["rules"] for res in rule["resources"]}
    assert resources == {
        "subjectaccessreviews",
        "clusterkopfpeerings",
        "customresourcedefinitions",
        "namespaces",
        "clustersftruntimes",
    }
    # Every namespace: both ClusterRoles bound cluster-wide, no RoleBinding.
    docs = rendered()
    assert {b["roleRef"]["name"] for b in by_kind(docs, "ClusterRoleBinding")} == {"kube-sft", "kube-sft-namespaced"}
    assert not by_kind(docs, "RoleBinding")


def test_crd_is_rendered_kept_on_uninstall_and_optional() -> None:
    crds = by_kind(rendered(), "CustomResourceDefinition")
    assert [crd["metadata"]["name"] for crd in crds] == [
        "sftjobs.sft.kube-sft.io",
        "clustersftruntimes.sft.kube-sft.io",
    ]
    for crd in crds:
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert not by_kind(rendered("--set", "crds.install=false"), "CustomResourceDefinition")
