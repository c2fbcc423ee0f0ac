"""Typed schemas for the Kubernetes core types an SFTJob passes to its pods (tolerations, affinity,
volumes, volume mounts, env sources).

A model field says which Kubernetes type it holds with `KubernetesType("Toleration")` in its
annotation; pydantic then keeps the value as a plain dict (the operator copies it into the pod), and
the CRD generator (`crd.py`) replaces the field's schema with the structural schema of that type, read
from the Kubernetes OpenAPI that the `kubernetes-validate` package ships for the API version the
chart targets. So a misspelt key or a wrong type inside a toleration is refused by `kubectl apply`
with the field's path, exactly as for a Pod. `kubernetes-validate` is needed only to generate the
CRD (`make crds`), never at run time.
"""

import copy
import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from pydantic import GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

Schema = dict[str, Any]

KUBERNETES_VERSION = "1.37.0"
"""The Kubernetes API version whose OpenAPI the pass-through schemas come from (the e2e control plane's)."""

CORE_V1 = "io.k8s.api.core.v1."
MARKER = "x-kube-sft-kubernetes-type"
ONLY = "x-kube-sft-only-properties"

QUANTITY_PATTERN = r"^[+-]?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+|m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"

# Values the Kubernetes OpenAPI documents only in prose: listed here so that a misspelt operator or
# effect is refused at apply rather than by the API server when the operator creates the pods.
ENUMS: dict[tuple[str, str], list[str]] = {
    ("Toleration", "operator"): ["Exists", "Equal", "Lt", "Gt"],
    ("Toleration", "effect"): ["", "NoSchedule", "PreferNoSchedule", "NoExecute"],
    ("NodeSelectorRequirement", "operator"): ["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"],
    ("LabelSelectorRequirement", "operator"): ["In", "NotIn", "Exists", "DoesNotExist"],
    ("VolumeMount", "mountPropagation"): ["None", "HostToContainer", "Bidirectional"],
    ("VolumeMount", "recursiveReadOnly"): ["Disabled", "IfPossible", "Enabled"],
    ("HostPathVolumeSource", "type"): [
        "",
        "DirectoryOrCreate",
        "Directory",
        "FileOrCreate",
        "File",
        "Socket",
        "CharDevice",
        "BlockDevice",
    ],
    ("EmptyDirVolumeSource", "medium"): ["", "Memory"],
    ("PersistentVolumeClaimSpec", "volumeMode"): ["Filesystem", "Block"],
}

VOLUME_SOURCES: tuple[str, ...] = (
    "configMap",
    "secret",
    "projected",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "csi",
    "image",
    "nfs",
    "hostPath",
)
"""Volume sources an SFTJob may name in `spec.pod.volumes`: Pod Security's `restricted` list, plus
nfs and hostPath (hostPath only where the chart allows host access). The deprecated in-tree sources
(gitRepo, rbd, glusterfs, ...) are not in the CRD: `kubectl apply` calls them unknown fields."""


@dataclass(frozen=True)
class KubernetesType:
    """Annotation metadata: this dict field holds the Kubernetes core/v1 type `name`."""

    name: str
    only: tuple[str, ...] | None = None
    """Keep only these properties of the type (e.g. the allowed volume sources)."""

    def __get_pydantic_json_schema__(self, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        """A placeholder the CRD generator expands (see `structural_schema`)."""
        del core_schema, handler
        marker: JsonSchemaValue = {"type": "object", MARKER: self.name}
        if self.only is not None:
            marker[ONLY] = list(self.only)
        return marker


@functools.cache
def definitions() -> dict[str, Schema]:
    """The Kubernetes OpenAPI definitions (JSON schema) of KUBERNETES_VERSION, by full name."""
    package = resources.files("kubernetes_validate") / "kubernetes-json-schema"
    text = (package / f"v{KUBERNETES_VERSION}-local-strict" / "_definitions.json").read_text(encoding="utf-8")
    found: dict[str, Schema] = json.loads(text)["$defs"]
    return found


@dataclass(frozen=True)
class Bounds:
    """The bounds every string, list and map of a CRD gets (the CEL cost estimator needs them)."""

    max_length: int
    max_items: int
    max_properties: int


def structural_schema(marker: Schema, bounds: Bounds) -> Schema:
    """The structural CRD schema of the Kubernetes type a `KubernetesType` marker names."""
    name = marker[MARKER]
    schema = _convert(_definition(name), bounds, (name,))
    only = marker.get(ONLY)
    if only is not None:
        unknown = set(only) - set(schema["properties"])
        if unknown:
            raise ValueError(f"{name} has no properties {sorted(unknown)}")
        keep = {*only, *schema.get("required", [])}
        schema["properties"] = {key: value for key, value in schema["properties"].items() if key in keep}
    schema["description"] = f"A Kubernetes {name} (core/v1, as in a Pod). " + schema.get("description", "")
    return schema


def _definition(name: str) -> Schema:
    full = name if name.startswith("io.k8s.") else CORE_V1 + name
    return copy.deepcopy(definitions()[full])


def _short(ref: str) -> str:
    full = ref.rsplit("/", 1)[-1]
    return full.removeprefix(CORE_V1)


def _convert(node: Schema, bounds: Bounds, stack: tuple[str, ...]) -> Schema:
    """One OpenAPI node -> a structural CRD node (refs inlined, nulls dropped, bounds added)."""
    if "$ref" in node:
        name = _short(node["$ref"])
        if name in stack:
            raise ValueError(f"recursive Kubernetes type {' -> '.join((*stack, name))}")
        described = {"description": first_sentence(node["description"])} if "description" in node else {}
        return {**_convert(_definition(name), bounds, (*stack, name)), **described}
    if "oneOf" in node:  # IntOrString and Quantity: the only unions in the core types
        result: Schema = {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}
        if stack[-1] == "io.k8s.apimachinery.pkg.api.resource.Quantity":
            result["pattern"] = QUANTITY_PATTERN
        return result
    kinds = node.get("type")
    kind = next(k for k in kinds if k != "null") if isinstance(kinds, list) else kinds
    result = {"type": kind} if kind else {}
    if "description" in node:
        result["description"] = first_sentence(node["description"])
    if kind == "object":
        if "properties" in node:
            owner = stack[-1]
            result["properties"] = {
                key: _with_enum(_convert(child, bounds, stack), ENUMS.get((owner, key)))
                for key, child in node["properties"].items()
            }
            if node.get("required"):
                result["required"] = list(node["required"])
        elif isinstance(node.get("additionalProperties"), dict):
            result["additionalProperties"] = _convert(node["additionalProperties"], bounds, stack)
            result["maxProperties"] = bounds.max_properties
        else:
            result["x-kubernetes-preserve-unknown-fields"] = True
    elif kind == "array":
        result["items"] = _convert(node.get("items", {}), bounds, stack)
        result["maxItems"] = bounds.max_items
    elif kind == "string":
        result["maxLength"] = bounds.max_length
        if node.get("format") in ("byte", "date-time"):
            result["format"] = node["format"]
    elif kind == "integer" and node.get("format") in ("int32", "int64"):
        result["format"] = node["format"]
    return result


def first_sentence(text: str) -> str:
    """The first sentence of an OpenAPI description (the CRD keeps its size; `kubectl explain pod`
    has the rest)."""
    head = text.split("\n", 1)[0]
    end = head.find(". ")
    return head if end < 0 else head[: end + 1]


def _with_enum(node: Schema, values: list[str] | None) -> Schema:
    if values is not None:
        node["enum"] = list(values)
    return node
