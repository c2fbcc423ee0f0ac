"""SFTJob spec and status: the single source of the API.

The CRD (`crd.py`), the operator and `sft run` all validate with these models. Fields outside
`spec.training` are camelCase, as in Kubernetes; `spec.training` is the trainer's own schema
(`sft_trainer.config.SFTConfig`), unchanged, so one file serves `sft train` and `kubectl apply`.
"""

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AliasGenerator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel

from sft_operator.api.kubernetes_types import VOLUME_SOURCES, KubernetesType
from sft_trainer.config import SFTConfig, consistency_problems
from sft_trainer.contract import API_VERSION as API_VERSION  # the API's coordinates: the pod contract's
from sft_trainer.contract import GROUP as GROUP
from sft_trainer.contract import KIND as KIND
from sft_trainer.contract import PLURAL as PLURAL
from sft_trainer.contract import VERSION as VERSION

SINGULAR = "sftjob"
SHORT_NAMES = ("sftj",)
RESERVED_DOMAIN = GROUP.split(".", 1)[1]
"""Labels and annotations under this domain (`kube-sft.io/...`, `*.kube-sft.io/...`) are the operator's."""
TRAINER_SERVICE_ACCOUNT_SUFFIX = "-trainer"
"""The per-job ServiceAccount is `<job><suffix>`."""

MAX_JOB_NAME = 42
"""Longest SFTJob name: `<name>-node-<rank>` must stay a DNS label (63) and names a Service (DNS-1035)."""

# --- string types (every string has a maxLength, as the CEL cost estimator needs) ----------------

DNSLabel = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]
DNSSubdomain = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
    ),
]
AbsolutePath = Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=r"^/")]
RelativePath = Annotated[str, StringConstraints(max_length=1024, pattern=r"^[^/]")]
ShortString = Annotated[str, StringConstraints(max_length=253)]
LabelValue = Annotated[str, StringConstraints(max_length=63)]
AnnotationValue = Annotated[str, StringConstraints(max_length=4096)]
EnvName = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")]
ImageRef = Annotated[str, StringConstraints(min_length=1, max_length=512)]
QuantityString = Annotated[
    str, StringConstraints(max_length=64, pattern=r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$")
]
Quantity = Annotated[int, Field(ge=0)] | QuantityString
"""A Kubernetes resource quantity: `4`, `"500m"`, `"16Gi"` (int-or-string in the CRD)."""

Phase = Literal["Pending", "Suspended", "Initializing", "Running", "Restarting", "Succeeded", "Failed"]
FINISHED_PHASES: frozenset[str] = frozenset({"Succeeded", "Failed"})


class K8sModel(BaseModel):
    """Base of every SFTJob block: camelCase on the wire, unknown keys rejected."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        alias_generator=AliasGenerator(validation_alias=to_camel, serialization_alias=to_camel),
        use_attribute_docstrings=True,
    )

    def wire(self) -> dict[str, Any]:
        """This block as the API server stores it (camelCase, no unset optionals)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


Toleration = Annotated[dict[str, Any], KubernetesType("Toleration")]
Affinity = Annotated[dict[str, Any], KubernetesType("Affinity")]
Volume = Annotated[dict[str, Any], KubernetesType("Volume", only=VOLUME_SOURCES)]
VolumeMount = Annotated[dict[str, Any], KubernetesType("VolumeMount")]
EnvVarSource = Annotated[dict[str, Any], KubernetesType("EnvVarSource")]


# --- spec ----------------------------------------------------------------------------------------


class SecretRef(K8sModel):
    """A Secret in the job's namespace; its keys become environment variables of the trainer."""

    name: DNSSubdomain


class PersistentVolumeClaimSource(K8sModel):
    """An existing PersistentVolumeClaim."""

    claim_name: DNSSubdomain


class HostPathSource(K8sModel):
    """A directory on the node (single-node clusters and development only)."""

    path: AbsolutePath


class EmptyDirSource(K8sModel):
    """Scratch space that lives as long as the pod."""

    size_limit: Quantity | None = None


class StorageLocation(K8sModel):
    """A volume mounted into every trainer pod; `spec.training` paths point inside `mountPath`."""

    mount_path: AbsolutePath
    persistent_volume_claim: PersistentVolumeClaimSource | None = None
    host_path: HostPathSource | None = None
    empty_dir: EmptyDirSource | None = None
    sub_path: RelativePath | None = None
    read_only: bool = False
    credentials_secret_ref: SecretRef | None = None
    """Credentials for this location (e.g. HF_TOKEN, AWS_*), read from a Secret: never inline."""

    @model_validator(mode="after")
    def _one_source(self) -> "StorageLocation":
        sources = [self.persistent_volume_claim, self.host_path, self.empty_dir]
        if sum(source is not None for source in sources) > 1:
            raise ValueError("set at most one of persistentVolumeClaim, hostPath, emptyDir")
        return self


class Storage(K8sModel):
    """Where the model is read from, the data is read from, and checkpoints/the final model go."""

    model: StorageLocation | None = None
    data: StorageLocation | None = None
    output: StorageLocation | None = None

    def locations(self) -> dict[str, StorageLocation]:
        """The set locations by role name."""
        found = {"model": self.model, "data": self.data, "output": self.output}
        return {role: location for role, location in found.items() if location is not None}


class Resources(K8sModel):
    """How many nodes (pods), accelerators and how much memory the job gets."""

    num_nodes: int = Field(default=1, ge=1, le=1024)
    """Pods in the gang, one per node."""
    gpus_per_node: int = Field(default=1, ge=0, le=16)
    """GPUs each pod requests (0: CPU training)."""
    processes_per_node: int | None = Field(default=None, ge=1, le=64)
    """Trainer processes per pod (default: gpusPerNode, or 1 without GPUs)."""
    gpu_resource_name: ShortString = "nvidia.com/gpu"
    """Extended resource holding the accelerators."""
    requests: dict[ShortString, Quantity] = Field(default_factory=dict, max_length=16)
    limits: dict[ShortString, Quantity] = Field(default_factory=dict, max_length=16)
    shm_size: Quantity = "1Gi"
    """Size of the memory-backed /dev/shm (NCCL and data loader workers need more than the default)."""

    @property
    def nproc_per_node(self) -> int:
        """Processes launched in each pod."""
        return self.processes_per_node or max(self.gpus_per_node, 1)

    @property
    def world_size(self) -> int:
        """Trainer processes in the whole job."""
        return self.num_nodes * self.nproc_per_node


class EnvVar(K8sModel):
    """An environment variable of the trainer container (use valueFrom.secretKeyRef for secrets)."""

    name: EnvName
    value: Annotated[str, StringConstraints(max_length=32768)] | None = None
    value_from: EnvVarSource | None = None


class LocalObjectReference(K8sModel):
    """A name in the job's namespace."""

    name: DNSSubdomain


class PodBase(K8sModel):
    """The trainer pods' labels, annotations and scheduling: what an SFTJob's `spec.pod` and a
    ClusterSFTRuntime's pod defaults (`api.runtime.RuntimePodDefaults`) both set."""

    labels: dict[ShortString, LabelValue] = Field(default_factory=dict, max_length=64)
    annotations: dict[ShortString, AnnotationValue] = Field(default_factory=dict, max_length=64)
    node_selector: dict[ShortString, LabelValue] = Field(default_factory=dict, max_length=64)
    tolerations: list[Toleration] = Field(default_factory=list, max_length=64)
    affinity: Affinity | None = None
    priority_class_name: DNSSubdomain | None = None


class PodOverrides(PodBase):
    """What the pods get besides the rendered defaults."""

    service_account_name: DNSSubdomain | None = None
    """Run as this ServiceAccount instead of the per-job one (it then needs `patch sftjobs/status`)."""
    env: list[EnvVar] = Field(default_factory=list, max_length=128)
    volumes: list[Volume] = Field(default_factory=list, max_length=32)
    volume_mounts: list[VolumeMount] = Field(default_factory=list, max_length=32)
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list, max_length=16)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    command: list[Annotated[str, StringConstraints(max_length=4096)]] | None = Field(default=None, max_length=64)
    """Replace the trainer command (default: `python -m sft_trainer.entrypoint --config <file>`)."""
    termination_grace_period_seconds: int = Field(default=120, ge=0, le=86400)
    """Time a trainer gets after SIGTERM to write a checkpoint."""


class RunPolicy(K8sModel):
    """Restarts, deadlines and clean-up."""

    suspend: bool = False
    """Delete the pods (keeping checkpoints); set false again to resume from the newest checkpoint."""
    backoff_limit: int = Field(default=3, ge=0, le=1000)
    """Gang restarts after retryable failures before the job fails."""
    backoff_seconds: int = Field(default=10, ge=0, le=3600)
    """Wait before the first restart; doubles with every restart."""
    max_backoff_seconds: int = Field(default=300, ge=0, le=86400)
    retryable_exit_codes: list[Annotated[int, Field(ge=1, le=255)]] = Field(default_factory=list, max_length=64)
    """Exit codes to retry besides the defaults (1, 64-127 and signals >= 128)."""
    non_retryable_exit_codes: list[Annotated[int, Field(ge=1, le=255)]] = Field(default_factory=list, max_length=64)
    """Exit codes that fail the job at once (wins over retryableExitCodes)."""
    active_deadline_seconds: int | None = Field(default=None, ge=1)
    """Fail the job (DeadlineExceeded) this long after it started running."""
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0)
    """Delete the finished job (and, through owner references, its children) after this long."""
    clean_pod_policy: Literal["All", "Running", "None"] = "Running"
    """Pods deleted when the job finishes: All, only those still Running, or None."""
    stall_timeout_seconds: int | None = Field(default=3600, ge=10)
    """Restart the gang when the trainer reports no progress for this long (null: never)."""
    pending_timeout_seconds: int | None = Field(default=900, ge=10)
    """Restart the gang when a pod stays Pending (unscheduled, image pull) this long (null: never)."""
    gang_start_timeout_seconds: int | None = Field(default=1800, ge=10)
    """Restart the whole gang (GangStartTimeout) when it has not reached Running (every rank started and
    the trainer's first progress report) this long after its pods were created (null: never)."""


class RuntimeRef(K8sModel):
    """The ClusterSFTRuntime whose platform defaults this job's pods get (the job's own fields win)."""

    name: DNSSubdomain


class Scheduling(K8sModel):
    """Which scheduler and queue place the gang."""

    queue_name: DNSSubdomain | None = None
    """Kueue LocalQueue: pods become one Kueue pod group, admitted (or suspended) together."""
    scheduler_name: DNSSubdomain | None = None


class SFTJobSpec(K8sModel):
    """What to train, where, and how to run it."""

    training: SFTConfig
    """The trainer configuration (`sft train --config`); trainer.num_nodes/devices follow `resources`."""
    storage: Storage = Field(default_factory=Storage)
    resources: Resources = Field(default_factory=Resources)
    image: ImageRef | None = None
    """Trainer image (default: the operator's configured trainer image)."""
    pod: PodOverrides = Field(default_factory=PodOverrides)
    run_policy: RunPolicy = Field(default_factory=RunPolicy)
    scheduling: Scheduling = Field(default_factory=Scheduling)
    runtime_ref: RuntimeRef | None = None
    """Platform defaults (a ClusterSFTRuntime) merged under this spec when each gang attempt starts;
    without it, the operator's default runtime (chart value `defaultRuntime`), if any."""
    _template_hash: str | None = PrivateAttr(default=None)
    """render.template_hash of this spec, computed once (a validated spec is never changed in place)."""

    @model_validator(mode="before")
    @classmethod
    def _training_follows_resources(cls, data: Any) -> Any:
        """Fill trainer.num_nodes / trainer.devices from `resources`, refusing contradictions."""
        if not isinstance(data, dict) or not isinstance(data.get("training"), dict):
            return data
        try:
            resources = Resources.model_validate(data.get("resources") or {})
        except ValidationError:
            return data  # field validation reports it, at spec.resources
        training = dict(data["training"])
        trainer = dict(training.get("trainer") or {})
        for key, wanted in (("num_nodes", resources.num_nodes), ("devices", resources.nproc_per_node)):
            if trainer.get(key, wanted) != wanted:
                raise ValueError(
                    f"training.trainer.{key}: {trainer[key]} contradicts resources ({wanted}); leave it unset"
                )
            trainer[key] = wanted
        training["trainer"] = trainer
        return {**data, "training": training}

    @model_validator(mode="after")
    def _consistent(self) -> "SFTJobSpec":
        problems = consistency_problems(self.training, self.resources.world_size)
        if problems:
            raise ValueError("\n".join(problems))
        return self


# --- status --------------------------------------------------------------------------------------


class Condition(K8sModel):
    """A standard Kubernetes condition (metav1.Condition)."""

    type: Annotated[str, StringConstraints(max_length=316)]
    status: Literal["True", "False", "Unknown"]
    reason: Annotated[str, StringConstraints(max_length=1024)] = ""
    message: Annotated[str, StringConstraints(max_length=32768)] = ""
    last_transition_time: datetime
    observed_generation: int | None = None


class Failure(K8sModel):
    """Why the last attempt failed."""

    reason: Annotated[str, StringConstraints(max_length=128)]
    """PodFailed, PodDeleted, Evicted, Stalled, PendingTimeout, DeadlineExceeded, BackoffLimitExceeded."""
    message: Annotated[str, StringConstraints(max_length=4096)] = ""
    exit_code: int | None = None
    rank: int | None = None
    pod: ShortString | None = None
    retryable: bool = False
    time: datetime


class Progress(K8sModel):
    """Training progress, written by the trainer's rank 0."""

    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    percent: float = 0.0
    eta_seconds: float | None = None
    eta: Annotated[str, StringConstraints(max_length=64)] | None = None
    consumed_samples: int = 0
    tokens: int = 0
    """Tokens trained on so far (padding excluded)."""
    last_report_time: datetime | None = None


class Metrics(K8sModel):
    """The newest training metrics, written by the trainer's rank 0."""

    loss: float | None = None
    val_loss: float | None = None
    best_val_loss: float | None = None
    lr: float | None = None
    grad_norm: float | None = None
    tokens_per_second: float | None = None
    mfu: float | None = None
    eval_loss: float | None = None
    """`spec.training.evaluation` after training: loss of final/ on the held-out file."""
    eval_perplexity: float | None = None
    eval_exact_match: float | None = None
    """Share of held-out answers equal to the reference (after `evaluation.answer_regex`)."""
    eval_contains: float | None = None
    eval_regex_match: float | None = None


class CheckpointInfo(K8sModel):
    """The newest checkpoint: resume starts here."""

    step: int
    path: Annotated[str, StringConstraints(max_length=4096)]
    time: datetime | None = None


class ReplicaCounts(K8sModel):
    """Pods of the current attempt by state."""

    desired: int = 0
    pending: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0


class AppliedRuntime(K8sModel):
    """The ClusterSFTRuntime whose defaults the current attempt's pods got, as it was then."""

    name: DNSSubdomain
    generation: int = 0
    resource_version: ShortString = ""
    attempt: int = 0
    """The gang attempt it was resolved for (a later edit of the runtime reaches the next attempt only)."""
    is_default: bool = False
    """Chosen as the operator's default runtime (the job has no spec.runtimeRef)."""


class SFTJobStatus(K8sModel):
    """What the operator and the trainer observed. The operator owns all but progress, metrics,
    latestCheckpoint and finalModel, which the trainer's rank 0 patches."""

    phase: Phase | None = None
    reason: Annotated[str, StringConstraints(max_length=128)] | None = None
    message: Annotated[str, StringConstraints(max_length=4096)] | None = None
    conditions: list[Condition] = Field(default_factory=list, max_length=16)
    observed_generation: int | None = None
    start_time: datetime | None = None
    completion_time: datetime | None = None
    restarts: int = 0
    """Gang restarts after failures (compared with runPolicy.backoffLimit)."""
    attempt: int = 0
    """Generation of the current pod gang; grows on every restart, resume or spec-driven restart."""
    attempt_start_time: datetime | None = None
    next_attempt_time: datetime | None = None
    """While Restarting: when the next gang is created (exponential backoff)."""
    gpus: int = 0
    replicas: ReplicaCounts = Field(default_factory=ReplicaCounts)
    last_failure: Failure | None = None
    progress: Progress | None = None
    metrics: Metrics | None = None
    latest_checkpoint: CheckpointInfo | None = None
    final_model: Annotated[str, StringConstraints(max_length=4096)] | None = None
    runtime: AppliedRuntime | None = None
    """The platform defaults applied to the current attempt (spec.runtimeRef or the default runtime)."""


class ObjectMeta(BaseModel):
    """The parts of metadata the operator reads."""

    model_config = ConfigDict(extra="ignore")

    name: Annotated[str, StringConstraints(min_length=1, max_length=MAX_JOB_NAME)]
    namespace: str = "default"
    uid: str = ""
    generation: int = 0
    creation_timestamp: datetime | None = Field(default=None, alias="creationTimestamp")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class SFTJob(BaseModel):
    """A whole SFTJob object as read from the API server or a manifest file."""

    model_config = ConfigDict(extra="forbid")

    api_version: Literal["sft.kube-sft.io/v1alpha1"] = Field(default="sft.kube-sft.io/v1alpha1", alias="apiVersion")
    kind: Literal["SFTJob"] = "SFTJob"
    metadata: ObjectMeta
    spec: SFTJobSpec
    status: SFTJobStatus = Field(default_factory=SFTJobStatus)
