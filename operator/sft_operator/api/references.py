"""The fields of an SFTJob spec that name objects of the job's namespace (Secrets, ConfigMaps,
PersistentVolumeClaims, a ServiceAccount), and the rights their author must hold for each.

One table (REFERENCES) for both enforcers: the admission policies compile it to CEL
(`sft_operator.api.admission`), the operator walks it in Python to re-check the creator's rights
before it creates pods (`sft_operator.access`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sft_operator.api.models import TRAINER_SERVICE_ACCOUNT_SUFFIX

Object = dict[str, Any]


@dataclass(frozen=True)
class Segment:
    """One step of a Reference path: a key, and for a list the key naming its items in messages."""

    key: str
    is_list: bool = False
    naming: str = ""


@dataclass(frozen=True)
class Reference:
    """A field of `spec` that names an object of the job's namespace the pods will read.

    `path` is dotted under `spec`; `key[]` walks a list, `key[name]` a list whose items are named by
    their `name` in messages (`spec.pod.env[HF_TOKEN].valueFrom.secretKeyRef.name`).
    """

    path: str
    resource: str

    @property
    def segments(self) -> tuple[Segment, ...]:
        """The parsed path."""
        result = []
        for part in self.path.split("."):
            if part.endswith("]"):
                key, naming = part[:-1].split("[")
                result.append(Segment(key, True, naming))
            else:
                result.append(Segment(part))
        return tuple(result)


REFERENCES: tuple[Reference, ...] = (
    *(Reference(f"storage.{role}.credentialsSecretRef.name", "secrets") for role in ("model", "data", "output")),
    *(
        Reference(f"storage.{role}.persistentVolumeClaim.claimName", "persistentvolumeclaims")
        for role in ("model", "data", "output")
    ),
    Reference("pod.env[name].valueFrom.secretKeyRef.name", "secrets"),
    Reference("pod.env[name].valueFrom.configMapKeyRef.name", "configmaps"),
    Reference("pod.volumes[name].secret.secretName", "secrets"),
    Reference("pod.volumes[name].configMap.name", "configmaps"),
    Reference("pod.volumes[name].projected.sources[].secret.name", "secrets"),
    Reference("pod.volumes[name].projected.sources[].configMap.name", "configmaps"),
    Reference("pod.volumes[name].csi.nodePublishSecretRef.name", "secrets"),
    Reference("pod.volumes[name].persistentVolumeClaim.claimName", "persistentvolumeclaims"),
    Reference("pod.imagePullSecrets[name].name", "secrets"),
)
"""Every field of the spec that names a Secret, ConfigMap or PersistentVolumeClaim."""


# --- the rights a job needs (the operator's re-check, sft_operator.access) -------------------------


@dataclass(frozen=True)
class AccessCheck:
    """A right the job's author must hold: `verb` on `resource` (named `name`, or any) in the namespace."""

    field: str
    verb: str
    resource: str
    name: str = ""

    def describe(self) -> str:
        """`get secrets/x`, `create pods`."""
        return f"{self.verb} {self.resource}/{self.name}" if self.name else f"{self.verb} {self.resource}"


def referenced(spec: Object, reference: Reference) -> Iterator[tuple[str, str]]:
    """(field path, name) of every object `reference` names in a spec (wire form, camelCase)."""
    yield from _walk(spec, reference.segments, "spec")


def _walk(node: Any, segments: tuple[Segment, ...], prefix: str) -> Iterator[tuple[str, str]]:
    if not segments:
        if isinstance(node, str) and node:
            yield prefix, node
        return
    segment, rest = segments[0], segments[1:]
    if not isinstance(node, dict) or node.get(segment.key) is None:
        return
    child, here = node[segment.key], f"{prefix}.{segment.key}"
    if not segment.is_list:
        yield from _walk(child, rest, here)
        return
    for item in child if isinstance(child, list) else []:
        label = str(item.get(segment.naming, "")) if segment.naming and isinstance(item, dict) else ""
        yield from _walk(item, rest, f"{here}[{label}]")


def required_access(job: Object) -> list[AccessCheck]:
    """Every right the author of `job` (a whole SFTJob, wire form) must hold for the operator to act on it."""
    spec = job.get("spec") or {}
    checks = [
        AccessCheck(field, "get", reference.resource, name)
        for reference in REFERENCES
        for field, name in referenced(spec, reference)
    ]
    account = (spec.get("pod") or {}).get("serviceAccountName")
    if account and account != job["metadata"]["name"] + TRAINER_SERVICE_ACCOUNT_SUFFIX:
        checks.append(AccessCheck("spec.pod.serviceAccountName", "create", "pods"))
    return checks
