"""The chart's ClusterRole grants exactly what the operator's code uses (derived from the source)."""

import ast
import re
from pathlib import Path

import yaml

from sft_operator import handlers, kube, render
from sft_operator.api import GROUP, PLURAL, SFTJob
from sft_operator.api.runtime import RUNTIME_PLURAL
from sft_operator.rbac import FRAMEWORK_RULES, Rule
from tests.builders import manifest

CHART = Path(__file__).resolve().parents[3] / "charts" / "kube-sft"
CLIENT_METHOD = re.compile(
    r"^(create|delete|get|list|patch|read|replace|watch)_(namespaced_|cluster_)?(\w+?)(_for_all_namespaces)?(_status)?$"
)
RESOURCE_NAMES = {
    "pod": "pods",
    "service": "services",
    "config_map": "configmaps",
    "service_account": "serviceaccounts",
    "role": "roles",
    "role_binding": "rolebindings",
    "event": "events",
}
API_GROUPS = {"core": "", "rbac": "rbac.authorization.k8s.io"}
CONSTANTS = {"GROUP": GROUP, "PLURAL": PLURAL, "PEERING_GROUP": kube.PEERING_GROUP, "RUNTIME_PLURAL": RUNTIME_PLURAL}


def _value(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return CONSTANTS.get(node.id)
    return None


def calls_in_kube_module() -> set[Rule]:
    """(group, resource, verb) of every `self.core/rbac/custom.<method>` used in kube.py."""
    tree = ast.parse(Path(kube.__file__).read_text())
    rules: set[Rule] = set()
    calls = {id(node.func): node for node in ast.walk(tree) if isinstance(node, ast.Call)}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)):
            continue
        owner = node.value.attr
        match = CLIENT_METHOD.match(node.attr)
        if owner not in ("core", "rbac", "custom") or match is None:
            continue
        verb = {"read": "get"}.get(match.group(1), match.group(1))
        subresource = "/status" if match.group(5) else ""
        if owner == "custom":
            call = calls[id(node)]
            strings = [value for value in map(_value, call.args) if value is not None]
            group, resource = strings[0], strings[-1]
            if resource in (GROUP, "v1") or len(strings) < 2:  # (group, version, [namespace,] plural, ...)
                raise AssertionError(f"cannot read the plural of {node.attr} in kube.py")
            rules.add((group, resource + subresource, verb))
        else:
            rules.add((API_GROUPS[owner], RESOURCE_NAMES[match.group(3)] + subresource, verb))
    return rules


def watched_by_kopf() -> set[Rule]:
    """list + watch of every resource a `@kopf.on.event` handler in handlers.py watches."""
    tree = ast.parse(Path(handlers.__file__).read_text())
    rules: set[Rule] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "kopf.on.event":
            group, _version, plural = (_value(arg) for arg in node.args[:3])
            assert group is not None and plural is not None
            rules |= {(group, plural, "list"), (group, plural, "watch")}
    return rules


def granted_to_trainers() -> set[Rule]:
    """The per-job Role: the operator must hold it to create it."""
    role = render.role(SFTJob.model_validate(manifest()))
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def chart_rules() -> set[Rule]:
    """The rules of the chart's ClusterRoles (template expressions blanked; the rules themselves are static)."""
    text = (CHART / "templates" / "clusterrole.yaml").read_text()
    text = re.sub(r"(?m)^\s*\{\{-?[^}]*\}\}\s*$", "", text)  # control lines ({{- if }}, {{- include }})
    text = re.sub(r"\{\{.*?\}\}", "x", text)
    roles = [doc for doc in yaml.safe_load_all(text) if isinstance(doc, dict) and doc["kind"] == "ClusterRole"]
    return {
        (group, resource, verb)
        for role in roles
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_derivation_sees_the_calls() -> None:
    derived = calls_in_kube_module()
    assert ("", "pods", "create") in derived and ("", "pods", "delete") in derived
    assert (GROUP, "sftjobs/status", "patch") in derived
    assert ("kopf.dev", "clusterkopfpeerings", "get") in derived
    assert (GROUP, RUNTIME_PLURAL, "get") in derived
    assert ("", "pods", "watch") in watched_by_kopf()


def test_cluster_role_is_exactly_what_the_code_uses() -> None:
    needed = calls_in_kube_module() | watched_by_kopf() | FRAMEWORK_RULES | granted_to_trainers()
    granted = chart_rules()
    assert not needed - granted, f"the chart lacks {sorted(needed - granted)}"
    assert not granted - needed, f"the chart grants unused {sorted(granted - needed)}"


def test_no_wildcards_and_no_secrets() -> None:
    for group, resource, verb in chart_rules():
        assert "*" not in (group, resource, verb)
        assert resource != "secrets"
