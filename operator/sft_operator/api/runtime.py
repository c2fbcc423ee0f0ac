"""ClusterSFTRuntime: platform-owned pod defaults that SFTJobs reference by `spec.runtimeRef.name`.

A cluster-scoped object, written by cluster admins only (no chart role grants it to anyone else; the
operator may only `get` it). It holds what every SFTJob of a platform would otherwise repeat: the trainer
image, NCCL environment, tolerations, node selectors, image pull secrets, a priority class, resource
requests and limits. The operator resolves the runtime once per gang attempt and merges it under the
job's own fields (`sft_operator.runtime.with_runtime`); the job's own values win.

Every name a runtime holds is resolved in the job's own namespace (pull secrets, the priority class is
cluster-scoped): a runtime has no namespace field, so neither it nor the author choosing it can point
a job at another namespace's objects. Its environment holds plain values only (no `valueFrom`): a
runtime never makes a pod read a Secret or ConfigMap.
"""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from sft_operator.api.models import (
    Affinity,
    DNSSubdomain,
    EnvName,
    ImageRef,
    K8sModel,
    LocalObjectReference,
    PodBase,
    Quantity,
    ShortString,
)

RUNTIME_KIND = "ClusterSFTRuntime"
RUNTIME_PLURAL = "clustersftruntimes"
RUNTIME_SINGULAR = "clustersftruntime"
RUNTIME_SHORT_NAMES = ("sftrt",)


class RuntimeEnvVar(K8sModel):
    """An environment variable of the trainer container: a plain value (NCCL_*, proxies, ...)."""

    name: EnvName
    value: Annotated[str, StringConstraints(max_length=32768)] = ""


class RuntimePodDefaults(PodBase):
    """Defaults of every trainer pod; the SFTJob's `spec.pod` wins key by key (see the merge rules)."""

    affinity: Affinity | None = None  # redeclared for its description only (the field keeps its place)
    """Used whole when the job sets no affinity."""
    env: list[RuntimeEnvVar] = Field(default_factory=list, max_length=128)
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list, max_length=16)
    """Secrets of the job's own namespace (a platform replicates its registry secret into each)."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None


class RuntimeResources(K8sModel):
    """Requests and limits of the trainer container besides the GPUs, by resource name."""

    requests: dict[ShortString, Quantity] = Field(default_factory=dict, max_length=16)
    limits: dict[ShortString, Quantity] = Field(default_factory=dict, max_length=16)


class ClusterSFTRuntimeSpec(K8sModel):
    """Platform defaults merged under the fields of every SFTJob that references this runtime."""

    image: ImageRef | None = None
    """Trainer image (the job's `spec.image` wins; without either, the operator's trainer image)."""
    pod: RuntimePodDefaults = Field(default_factory=RuntimePodDefaults)
    resources: RuntimeResources = Field(default_factory=RuntimeResources)


class RuntimeMeta(BaseModel):
    """The parts of a runtime's metadata the operator records."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: DNSSubdomain
    generation: int = 0
    resource_version: str = Field(default="", alias="resourceVersion")


class ClusterSFTRuntime(BaseModel):
    """A whole ClusterSFTRuntime as read from the API server."""

    model_config = ConfigDict(extra="ignore")

    api_version: Literal["sft.kube-sft.io/v1alpha1"] = Field(default="sft.kube-sft.io/v1alpha1", alias="apiVersion")
    kind: Literal["ClusterSFTRuntime"] = "ClusterSFTRuntime"
    metadata: RuntimeMeta
    spec: ClusterSFTRuntimeSpec = Field(default_factory=ClusterSFTRuntimeSpec)
