"""The chart's admission policies, rendered by the real helm binary, are exactly what
`sft_operator.api.admission` generates, each bound once to the namespaces the release serves."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml

from devcluster.binaries import MissingBinariesError, find_binaries
from sft_operator.api import admission
from tests.integration.operator.conftest import CHART

pytestmark = pytest.mark.integration

RELEASE = "kube-sft"
POLICY_KINDS = ("ValidatingAdmissionPolicy", "MutatingAdmissionPolicy")
BINDING_KINDS = ("ValidatingAdmissionPolicyBinding", "MutatingAdmissionPolicyBinding")


def helm_template(*values: str) -> list[dict[str, Any]]:
    """`helm template` of the chart with `values` (--set ...), as parsed documents."""
    try:
        helm = find_binaries().helm
    except MissingBinariesError as error:
        pytest.fail(str(error), pytrace=False)
    result = subprocess.run(
        [str(helm), "template", RELEASE, str(CHART), "--namespace", "kube-sft-system", *values],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def of_kind(documents: list[dict[str, Any]], kinds: tuple[str, ...]) -> list[dict[str, Any]]:
    return [doc for doc in documents if doc["kind"] in kinds]


def test_rendered_policies_equal_the_generated_ones() -> None:
    """Apart from the release prefix of their names, the chart installs the code's policies unchanged."""
    rendered = of_kind(helm_template(), POLICY_KINDS)
    for policy in rendered:
        name = policy["metadata"]["name"]
        assert name.startswith(f"{RELEASE}-"), name
        policy["metadata"]["name"] = name.removeprefix(f"{RELEASE}-")
    operator = f"system:serviceaccount:kube-sft-system:{RELEASE}"
    text = yaml.safe_dump_all(rendered, sort_keys=False)
    assert operator in text
    restored = list(yaml.safe_load_all(text.replace(operator, admission.OPERATOR_USERNAME)))
    by_name = {policy["metadata"]["name"]: policy for policy in restored}
    assert by_name == {policy["metadata"]["name"]: policy for policy in admission.policies()}


def test_every_policy_is_bound_once_to_the_served_namespaces() -> None:
    documents = helm_template(
        "--set", "watchNamespaces={team-a,team-b}", "--set", "admission.hostAccessNamespaces={team-b}"
    )  # fmt: skip
    policies = {doc["metadata"]["name"]: doc["kind"] for doc in of_kind(documents, POLICY_KINDS)}
    bindings = of_kind(documents, BINDING_KINDS)
    assert sorted(binding["spec"]["policyName"] for binding in bindings) == sorted(policies)
    for binding in bindings:
        name = binding["spec"]["policyName"]
        assert binding["kind"] == policies[name] + "Binding"
        expressions = binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"]
        served = {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}
        allowed = {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["team-b"]}
        assert expressions == ([served, allowed] if "host-access" in name else [served]), name
        if binding["kind"] == "ValidatingAdmissionPolicyBinding":
            assert binding["spec"]["validationActions"] == ["Deny"]


def test_cluster_wide_release_binds_every_namespace_and_admission_can_be_disabled() -> None:
    bindings = of_kind(helm_template(), BINDING_KINDS)
    assert len(bindings) == len(admission.policies())
    assert all("matchResources" not in binding["spec"] for binding in bindings)
    disabled = helm_template("--set", "admission.enabled=false")
    assert not of_kind(disabled, POLICY_KINDS + BINDING_KINDS)
