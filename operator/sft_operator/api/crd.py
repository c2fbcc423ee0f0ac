"""Generate the SFTJob CRD from the pydantic models: `python -m sft_operator.api.crd --write`.

pydantic's JSON schema becomes a *structural* OpenAPI v3 schema: `$ref`s inlined, `anyOf` with
null turned into `nullable`, tuples into fixed-size arrays, the Kubernetes types passed to pods (affinity,
tolerations, volumes, ...) typed from the Kubernetes OpenAPI (`kubernetes_types.py`), and every
string, list and map bounded (the CEL cost estimator needs bounds). Then come defaults, CEL rules, immutability
(transition rules), printer columns, the short name and the status subresource.
"""

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from sft_operator.api import admission, cel, kubernetes_types, runtime
from sft_operator.api.models import (
    GROUP,
    KIND,
    MAX_JOB_NAME,
    PLURAL,
    RESERVED_DOMAIN,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    SFTJobSpec,
    SFTJobStatus,
)

Schema = dict[str, Any]

DEFAULT_MAX_LENGTH = 4096
DEFAULT_MAX_ITEMS = 256
DEFAULT_MAX_PROPERTIES = 256
REPO_ROOT = Path(__file__).resolve().parents[3]
CHART = REPO_ROOT / "charts" / "kube-sft"
OUTPUTS = {
    "sftjob.yaml": (REPO_ROOT / "crds", CHART / "files" / "crds"),
    "clustersftruntime.yaml": (REPO_ROOT / "crds", CHART / "files" / "crds"),
    "kopf-peering.yaml": (REPO_ROOT / "crds", CHART / "crds"),
}
"""Where each generated CRD file goes. The chart's SFTJob and ClusterSFTRuntime CRDs are files its templates/crds.yaml renders (so that
`helm upgrade` upgrades it); the kopf peering CRDs stay in the chart's crds/ (the chart creates peering objects,
which need their CRD before the templates are applied, and their schema never changes)."""

# Values pydantic accepts through a `mode="before"` validator, so the enum must accept them too.
EXTRA_ENUM_VALUES: dict[tuple[str, ...], list[str]] = {
    ("training", "trainer", "precision"): ["bf16-mixed", "16-mixed", "16", "32", "32-true"],
}
# No schema default: the operator fills these from `resources`, a default would contradict it.
NO_DEFAULT: set[tuple[str, ...]] = {("training", "trainer", "num_nodes"), ("training", "trainer", "devices")}

IMMUTABLE_HINT = "create a new SFTJob (it resumes from this job's checkpoints when output points at them)"
IMMUTABLE_FIELDS = ("training", "resources", "storage", "scheduling")

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Nodes", "type": "integer", "jsonPath": ".spec.resources.numNodes"},
    {"name": "GPUs", "type": "integer", "jsonPath": ".status.gpus"},
    {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step"},
    {"name": "Progress", "type": "number", "jsonPath": ".status.progress.percent", "description": "Percent done"},
    {"name": "Loss", "type": "number", "jsonPath": ".status.metrics.loss"},
    {"name": "Val-Loss", "type": "number", "jsonPath": ".status.metrics.valLoss"},
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "ETA", "type": "string", "jsonPath": ".status.progress.eta", "priority": 1},
    {"name": "Checkpoint", "type": "integer", "jsonPath": ".status.latestCheckpoint.step", "priority": 1},
    {"name": "Queue", "type": "string", "jsonPath": ".spec.scheduling.queueName", "priority": 1},
    {"name": "Model", "type": "string", "jsonPath": ".spec.training.model.path", "priority": 1},
    {"name": "Runtime", "type": "string", "jsonPath": ".status.runtime.name", "priority": 1},
]


BOUNDS = kubernetes_types.Bounds(DEFAULT_MAX_LENGTH, DEFAULT_MAX_ITEMS, DEFAULT_MAX_PROPERTIES)


def structural(schema: Schema, defs: dict[str, Schema], path: tuple[str, ...] = ()) -> Schema:
    """Turn one pydantic JSON-schema node (and its children) into a structural CRD schema node."""
    node = dict(schema)
    if kubernetes_types.MARKER in node:  # a Kubernetes core type: its own OpenAPI schema, typed
        return kubernetes_types.structural_schema(node, BOUNDS)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**target, **node}
    for key in ("title", "examples", "propertyNames", "$defs"):
        node.pop(key, None)
    if "anyOf" in node:
        node = _merge_any_of(node, defs, path)
    for bound, flag in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if isinstance(node.get(flag), int | float) and not isinstance(node.get(flag), bool):
            node[bound], node[flag] = node[flag], True  # JSON Schema 2020 -> OpenAPI 3.0 form
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "prefixItems" in node:
        items = node.pop("prefixItems")
        node["items"] = structural(items[0], defs, path)
    kind = node.get("type")
    if kind == "object":
        node = _object(node, defs, path)
    elif kind == "array":
        node["items"] = structural(node.get("items", {}), defs, path)
        node.setdefault("maxItems", DEFAULT_MAX_ITEMS)
    elif kind == "string":
        node.setdefault("maxLength", DEFAULT_MAX_LENGTH)
        if path in EXTRA_ENUM_VALUES and "enum" in node:
            node["enum"] = [*node["enum"], *EXTRA_ENUM_VALUES[path]]
    if node.get("default", 0) is None or path in NO_DEFAULT:
        node.pop("default", None)
    return node


def _merge_any_of(node: Schema, defs: dict[str, Schema], path: tuple[str, ...]) -> Schema:
    options = node.pop("anyOf")
    concrete = [option for option in options if option.get("type") != "null"]
    nullable = len(concrete) < len(options)
    types = {option.get("type") for option in concrete}
    if len(concrete) == 1:
        merged = {**structural(concrete[0], defs, path), **node}
    elif types == {"integer", "number"}:
        merged = {"type": "number", **node}
    elif types == {"integer", "string"}:
        # As controller-gen writes resource.Quantity: the string's pattern applies to strings only.
        string = next(option for option in concrete if option.get("type") == "string")
        integer = next(option for option in concrete if option.get("type") == "integer")
        bounds = {key: string[key] for key in ("pattern", "maxLength") if key in string}
        bounds.update({key: integer[key] for key in ("minimum", "maximum") if key in integer})
        merged = {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            **bounds,
            **node,
        }
    else:
        raise ValueError(f"{'.'.join(path)}: cannot express anyOf {types} structurally")
    if nullable:
        merged["nullable"] = True
    return merged


def _object(node: Schema, defs: dict[str, Schema], path: tuple[str, ...]) -> Schema:
    extra = node.pop("additionalProperties", None)
    if "properties" in node:
        node["properties"] = {
            name: _with_object_default(structural(child, defs, (*path, name)))
            for name, child in node["properties"].items()
        }
    elif extra is True or extra == {}:
        node["x-kubernetes-preserve-unknown-fields"] = True
    elif isinstance(extra, dict):
        node["additionalProperties"] = structural(extra, defs, path)
        node.setdefault("maxProperties", DEFAULT_MAX_PROPERTIES)
    else:
        node["x-kubernetes-preserve-unknown-fields"] = True
    return node


def _with_object_default(node: Schema) -> Schema:
    """An optional block whose fields all have defaults defaults to `{}`, so they cascade."""
    optional_block = node.get("type") == "object" and "properties" in node and not node.get("required")
    if optional_block and "default" not in node and not node.get("nullable"):
        node["default"] = {}
    return node


def spec_schema() -> Schema:
    """The structural schema of `spec`, with CEL rules and immutable fields."""
    raw = SFTJobSpec.model_json_schema(by_alias=True, mode="validation")
    schema = structural(raw, raw.get("$defs", {}))
    schema.pop("default", None)
    schema["x-kubernetes-validations"] = cel.spec_rules()
    for name in IMMUTABLE_FIELDS:
        schema["properties"][name]["x-kubernetes-validations"] = [
            *schema["properties"][name].get("x-kubernetes-validations", []),
            *cel.immutable(f"spec.{name}", IMMUTABLE_HINT),
        ]
    for location in ("model", "data", "output"):
        schema["properties"]["storage"]["properties"][location]["x-kubernetes-validations"] = (
            cel.one_volume_source_rule()
        )
    return schema


def status_schema() -> Schema:
    """The structural schema of `status` (conditions form a map keyed by type)."""
    raw = SFTJobStatus.model_json_schema(by_alias=True, mode="validation")
    schema = structural(raw, raw.get("$defs", {}))
    schema.pop("default", None)
    conditions = schema["properties"]["conditions"]
    conditions.pop("default", None)
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    conditions["items"]["required"] = ["type", "status", "lastTransitionTime"]
    return _strip_defaults(schema)


def _strip_defaults(schema: Any) -> Any:
    """Status is written, never defaulted."""
    if isinstance(schema, dict):
        return {key: _strip_defaults(value) for key, value in schema.items() if key != "default"}
    if isinstance(schema, list):
        return [_strip_defaults(value) for value in schema]
    return schema


def crd() -> dict[str, Any]:
    """The SFTJob CustomResourceDefinition."""
    root: Schema = {
        "type": "object",
        "description": "SFTJob: a supervised fine-tuning run of a language model on a gang of pods.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema(),
            "status": status_schema(),
        },
        "x-kubernetes-validations": cel.name_rules(MAX_JOB_NAME),
    }
    return definition(KIND, PLURAL, SINGULAR, SHORT_NAMES, "Namespaced", PRINTER_COLUMNS, root)


def definition(
    kind: str,
    plural: str,
    singular: str,
    short_names: tuple[str, ...],
    scope: str,
    columns: list[dict[str, Any]],
    root: Schema,
) -> dict[str, Any]:
    """A CustomResourceDefinition of the kube-sft group with one served, stored version whose schema is
    `root`; a `status` property of the root gets the status subresource."""
    version: dict[str, Any] = {"name": VERSION, "served": True, "storage": True}
    if "status" in root["properties"]:
        version["subresources"] = {"status": {}}
    version["additionalPrinterColumns"] = copy.deepcopy(columns)
    version["schema"] = {"openAPIV3Schema": root}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "kube-sft", "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": list(short_names),
                "categories": ["kube-sft"],
            },
            "scope": scope,
            "versions": [version],
        },
    }


RUNTIME_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Image", "type": "string", "jsonPath": ".spec.image"},
    {"name": "Priority-Class", "type": "string", "jsonPath": ".spec.pod.priorityClassName"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def runtime_spec_schema() -> Schema:
    """The structural schema of a ClusterSFTRuntime's `spec`; its pod labels and annotations may not use
    the operator's reserved domain (as the SFTJob admission policy refuses them to authors)."""
    raw = runtime.ClusterSFTRuntimeSpec.model_json_schema(by_alias=True, mode="validation")
    schema = structural(raw, raw.get("$defs", {}))
    schema.pop("default", None)
    pod = schema["properties"]["pod"]["properties"]
    for what in ("labels", "annotations"):
        pod[what]["x-kubernetes-validations"] = [
            {
                "rule": f"self.all(k, !k.matches('{admission.RESERVED_KEY_PATTERN}'))",
                "message": f"{what} under {RESERVED_DOMAIN}/ are the operator's",
            }
        ]
    return schema


def runtime_crd() -> dict[str, Any]:
    """The ClusterSFTRuntime CustomResourceDefinition: cluster-scoped platform defaults, no status."""
    root: Schema = {
        "type": "object",
        "description": "ClusterSFTRuntime: platform-owned defaults of the trainer pods of the SFTJobs that "
        "reference it (spec.runtimeRef.name); the job's own fields win.",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": runtime_spec_schema(),
        },
    }
    names = (runtime.RUNTIME_KIND, runtime.RUNTIME_PLURAL, runtime.RUNTIME_SINGULAR, runtime.RUNTIME_SHORT_NAMES)
    return definition(*names, "Cluster", RUNTIME_PRINTER_COLUMNS, root)


def kopf_peering_crds() -> list[dict[str, Any]]:
    """kopf's peering resources (kopf.dev/v1), which let two operator replicas elect one active."""
    schema = {
        "openAPIV3Schema": {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": True,
            "properties": {"status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
        }
    }
    result = []
    for kind, plural, scope in (
        ("ClusterKopfPeering", "clusterkopfpeerings", "Cluster"),
        ("KopfPeering", "kopfpeerings", "Namespaced"),
    ):
        result.append(
            {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": f"{plural}.kopf.dev"},
                "spec": {
                    "group": "kopf.dev",
                    "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                    "scope": scope,
                    "versions": [{"name": "v1", "served": True, "storage": True, "schema": schema}],
                },
            }
        )
    return result


HEADER = "# Generated by `make crds` (python -m sft_operator.api.crd --write) from sft_operator.api: do not edit.\n"


def rendered() -> dict[str, str]:
    """File name -> YAML text of every generated CRD file."""
    return {
        "sftjob.yaml": HEADER + yaml.safe_dump(crd(), sort_keys=False, width=120),
        "clustersftruntime.yaml": HEADER + yaml.safe_dump(runtime_crd(), sort_keys=False, width=120),
        "kopf-peering.yaml": HEADER + yaml.safe_dump_all(kopf_peering_crds(), sort_keys=False, width=120),
    }


ADMISSION_POLICIES = CHART / "files" / "admission-policies.yaml"
ADMISSION_HEADER = (
    "# Generated by `make crds` (python -m sft_operator.api.crd --write) from sft_operator.api.admission:"
    " do not edit.\n# templates/admission.yaml installs these policies and binds them.\n"
)


def generated_files() -> dict[Path, str]:
    """Path -> text of every file `make crds` writes: the CRDs (crds/ and the chart's) and the admission policies."""
    files = {directory / name: text for name, text in rendered().items() for directory in OUTPUTS[name]}
    files[ADMISSION_POLICIES] = ADMISSION_HEADER + yaml.safe_dump_all(admission.policies(), sort_keys=False, width=120)
    return files


def stale_files() -> list[Path]:
    """Checked-in generated files that differ from what the code generates."""
    return [
        path
        for path, text in generated_files().items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]


def main(argv: list[str] | None = None) -> int:
    """Print the CRD, `--write` it (and the admission policies) to crds/ and the chart, or `--check` that the files are fresh."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--write", action="store_true", help="write crds/ and charts/kube-sft/{crds,files,files/crds}/")
    parser.add_argument("--check", action="store_true", help="exit 1 when the checked-in files are stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for path in stale:
            print(f"stale: {path} (run `make crds`)", file=sys.stderr)
        return 1 if stale else 0
    if args.write:
        for path, text in generated_files().items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
        return 0
    sys.stdout.write(rendered()["sftjob.yaml"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
