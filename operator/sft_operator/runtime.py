"""Platform defaults (ClusterSFTRuntime) under a job's own fields: which runtime, and the merge. Pure.

Which runtime: `spec.runtimeRef.name`, else the operator's default runtime (`--default-runtime`, the
chart's `defaultRuntime`), else none. The operator reads it when a gang attempt starts (`resolve`): a
runtime that does not exist or does not validate keeps the job from starting, with a condition and an
Event naming the field; an edit of the runtime reaches a running job at its next attempt only.

The merge (`with_runtime`), the job's own values winning key by key (docs/notes/runtime.md):

| field | rule |
|---|---|
| image, pod.priorityClassName, pod.imagePullPolicy, pod.affinity | the job's when set, else the runtime's |
| pod.env | by name: the runtime's variables the job does not set, then the job's |
| pod.nodeSelector, pod.labels, pod.annotations, resources.requests/limits | by key: the job's win |
| pod.tolerations | the runtime's, then the job's (an identical one once) |
| pod.imagePullSecrets | by name: the runtime's, then the job's others |

The job's spec itself is never changed: admission and the creator's access checks see what its author
wrote, and the pods' template hash is the job's own (a runtime edit restarts no running gang).
"""

from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import ValidationError

from sft_operator.api import SFTJobSpec
from sft_operator.api.models import AppliedRuntime, EnvVar, LocalObjectReference
from sft_operator.api.runtime import RUNTIME_KIND, ClusterSFTRuntime, ClusterSFTRuntimeSpec

Object = dict[str, Any]
T = TypeVar("T")

RUNTIME_NOT_FOUND = "RuntimeNotFound"
RUNTIME_INVALID = "RuntimeInvalid"
RUNTIME_FORBIDDEN = "RuntimeForbidden"
RUNTIME_APPLIED = "RuntimeApplied"
RUNTIME_PROBLEMS = frozenset({RUNTIME_NOT_FOUND, RUNTIME_INVALID, RUNTIME_FORBIDDEN})
"""Reasons that hold a job: its runtime cannot be used."""
RUNTIME_CONDITION = "RuntimeApplied"
"""The status condition saying which runtime the current attempt got (or why none could be)."""
REF_FIELD = "spec.runtimeRef.name"
DEFAULT_FLAG = "--default-runtime"


@dataclass(frozen=True)
class Choice:
    """The runtime a job asks for: by its own spec.runtimeRef, or the operator's default."""

    name: str
    default: bool

    @property
    def source(self) -> str:
        """Where the name came from, as a user reads it."""
        return f"the operator's default runtime ({DEFAULT_FLAG})" if self.default else REF_FIELD


@dataclass(frozen=True)
class Resolution:
    """A runtime as resolved for one attempt: its defaults and record, or why the job cannot start."""

    defaults: ClusterSFTRuntimeSpec | None = None
    applied: AppliedRuntime | None = None
    reason: str = ""
    problem: str = ""
    """Set when the job must not start (RUNTIME_NOT_FOUND, RUNTIME_INVALID): the message, naming the field."""


NO_RUNTIME = Resolution()


def choose(spec: SFTJobSpec, default_runtime: str | None) -> Choice | None:
    """The runtime a job uses: its spec.runtimeRef, else the operator's default, else none."""
    if spec.runtime_ref is not None:
        return Choice(spec.runtime_ref.name, default=False)
    return Choice(default_runtime, default=True) if default_runtime else None


def resolve(choice: Choice | None, raw: Object | None) -> Resolution:
    """The Resolution of `choice` from the object the API server returned (None: not found); the
    attempt it is applied to is filled in when the attempt starts."""
    if choice is None:
        return NO_RUNTIME
    if raw is None:
        message = (
            f"{choice.source}: {RUNTIME_KIND} {choice.name!r} not found; the job starts once a cluster admin "
            f"creates it (kubectl get {RUNTIME_KIND.lower()}s lists those that exist)"
        )
        return Resolution(reason=RUNTIME_NOT_FOUND, problem=message)
    try:
        runtime = ClusterSFTRuntime.model_validate(raw)
    except ValidationError as error:
        details = "; ".join(f"{'.'.join(map(str, item['loc']))}: {item['msg']}" for item in error.errors())
        message = f"{choice.source}: {RUNTIME_KIND} {choice.name!r} is invalid: {details}"[:4096]
        return Resolution(reason=RUNTIME_INVALID, problem=message)
    applied = AppliedRuntime(
        name=runtime.metadata.name,
        generation=runtime.metadata.generation,
        resource_version=runtime.metadata.resource_version,
        is_default=choice.default,
    )
    return Resolution(defaults=runtime.spec, applied=applied, reason=RUNTIME_APPLIED)


def forbidden(choice: Choice, reason: str) -> Resolution:
    """The operator may not read the runtime (a chart older than the operator: no `get clustersftruntimes`)."""
    message = (
        f"{choice.source}: the operator may not get {RUNTIME_KIND} {choice.name!r} ({reason}); "
        "its ClusterRole lacks get on clustersftruntimes: upgrade the chart"
    )
    return Resolution(reason=RUNTIME_FORBIDDEN, problem=message)


def describe(applied: AppliedRuntime) -> str:
    """One line naming the runtime an attempt got (the condition's message)."""
    chosen = f"the operator's default runtime ({DEFAULT_FLAG})" if applied.is_default else REF_FIELD
    return (
        f"{RUNTIME_KIND} {applied.name!r} (generation {applied.generation}, resourceVersion "
        f"{applied.resource_version}) from {chosen} applied to attempt {applied.attempt}"
    )


def _by_key(defaults: dict[str, T], own: dict[str, T]) -> dict[str, T]:
    return {**defaults, **own}


def _env(defaults: list[Any], own: list[EnvVar]) -> list[EnvVar]:
    names = {item.name for item in own}
    inherited = [EnvVar(name=item.name, value=item.value) for item in defaults if item.name not in names]
    return inherited + own


def _tolerations(defaults: list[Object], own: list[Object]) -> list[Object]:
    return defaults + [item for item in own if item not in defaults]


def _pull_secrets(defaults: list[LocalObjectReference], own: list[LocalObjectReference]) -> list[LocalObjectReference]:
    names = {item.name for item in defaults}
    return defaults + [item for item in own if item.name not in names]


def with_runtime(spec: SFTJobSpec, defaults: ClusterSFTRuntimeSpec | None) -> SFTJobSpec:
    """The spec the pods are rendered from: `defaults` under the job's own fields (module docstring)."""
    if defaults is None:
        return spec
    pod, base = spec.pod, defaults.pod
    merged_pod = pod.model_copy(
        update={
            "labels": _by_key(base.labels, pod.labels),
            "annotations": _by_key(base.annotations, pod.annotations),
            "node_selector": _by_key(base.node_selector, pod.node_selector),
            "tolerations": _tolerations(base.tolerations, pod.tolerations),
            "affinity": pod.affinity if pod.affinity is not None else base.affinity,
            "priority_class_name": pod.priority_class_name or base.priority_class_name,
            "env": _env(base.env, pod.env),
            "image_pull_secrets": _pull_secrets(base.image_pull_secrets, pod.image_pull_secrets),
            "image_pull_policy": pod.image_pull_policy or base.image_pull_policy,
        }
    )
    resources = spec.resources.model_copy(
        update={
            "requests": _by_key(defaults.resources.requests, spec.resources.requests),
            "limits": _by_key(defaults.resources.limits, spec.resources.limits),
        }
    )
    return spec.model_copy(update={"image": spec.image or defaults.image, "pod": merged_pod, "resources": resources})
