"""Desired child objects of an SFTJob, computed purely (no API calls).

One SFTJob becomes: a headless Service (stable DNS for every rank, published before readiness),
a ConfigMap with the trainer config, a ServiceAccount + Role + RoleBinding that may only patch this
job's status, and one Pod per node: `<job>-node-<rank>` in the first attempt, `<job>-node-<rank>-a<n>`
in attempt n after a gang restart (hostname `<job>-node-<rank>` in every attempt). Every object carries
an owner reference to the job, so deleting the job garbage-collects them; names are deterministic, so
creating them twice is harmless (409 AlreadyExists means done), and a restarted gang never reuses an
earlier attempt's pod names (a node agent that writes a pod by name cannot hit the new gang).
"""

import hashlib
import importlib.metadata
import json
from dataclasses import dataclass
from typing import Any

import yaml

from sft_operator.api import API_VERSION, GROUP, KIND, PLURAL, SFTJob, StorageLocation
from sft_operator.api.models import TRAINER_SERVICE_ACCOUNT_SUFFIX
from sft_operator.api.runtime import ClusterSFTRuntimeSpec
from sft_operator.runtime import with_runtime
from sft_trainer.contract import (
    ENV_JOB_ATTEMPT,
    ENV_JOB_NAME,
    ENV_JOB_NAMESPACE,
    ENV_POD_IP,
    ENV_POD_NAME,
    ENV_TERMINATION_MESSAGE_PATH,
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_RANK,
    TERMINATION_MESSAGE_PATH,
    TRAINER_CONTAINER,
)

Object = dict[str, Any]

MASTER_PORT = 29500
CONFIG_DIR = "/etc/kube-sft"
CONFIG_FILE = "config.yaml"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_FILE}"
# The chart passes its trainerImage to the operator; this default (used outside the chart, e.g. by
# `kubectl sft generate`) follows the same rule: the repository the chart names, tagged with the
# package version, which a test keeps equal to the chart's appVersion.
DEFAULT_IMAGE = f"ghcr.io/kube-sft/trainer:{importlib.metadata.version('kube-sft')}"
RUN_AS_USER = 1000

ANNOTATION_TEMPLATE_HASH = f"{GROUP}/template-hash"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
KUEUE_GROUP_COUNT = "kueue.x-k8s.io/pod-group-total-count"
MANAGED_BY = "kube-sft-operator"


@dataclass(frozen=True)
class Names:
    """Deterministic names of a job's children."""

    job: str

    @property
    def service(self) -> str:
        """The headless Service, also the pods' subdomain."""
        return self.job

    @property
    def config_map(self) -> str:
        """The ConfigMap holding the trainer config."""
        return f"{self.job}-config"

    @property
    def service_account(self) -> str:
        """The per-job ServiceAccount (and its Role and RoleBinding)."""
        return f"{self.job}{TRAINER_SERVICE_ACCOUNT_SUFFIX}"

    def hostname(self, rank: int) -> str:
        """The hostname of node `rank`, the same in every attempt (DNS `<hostname>.<job>`)."""
        return f"{self.job}-node-{rank}"

    def pod(self, rank: int, attempt: int) -> str:
        """The pod of node `rank` in gang attempt `attempt`: the hostname in the first attempt, with
        `-a<attempt>` after a restart, so that no name is used by two attempts' pods."""
        return self.hostname(rank) if attempt == 0 else f"{self.hostname(rank)}-a{attempt}"

    @property
    def master_addr(self) -> str:
        """DNS name of rank 0 through the headless Service."""
        return f"{self.hostname(0)}.{self.service}"


def job_labels(job: SFTJob) -> dict[str, str]:
    """Labels every child carries; LABEL_JOB selects a job's pods."""
    return {
        "app.kubernetes.io/name": "kube-sft",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/instance": job.metadata.name,
        LABEL_JOB: job.metadata.name,
    }


def owner_reference(job: SFTJob) -> Object:
    """The controller reference that ties a child's lifetime to the job."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job.metadata.name,
        "uid": job.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(job: SFTJob, name: str, labels: dict[str, str] | None = None) -> Object:
    """Name, namespace, labels and owner of a child; the operator's labels win over the user's."""
    return {
        "name": name,
        "namespace": job.metadata.namespace,
        "labels": {**(labels or {}), **job_labels(job)},
        "ownerReferences": [owner_reference(job)],
    }


def headless_service(job: SFTJob) -> Object:
    """DNS for `<job>-node-<rank>.<job>`, published before the pods are ready (no rendezvous race)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(job, Names(job.metadata.name).service),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {LABEL_JOB: job.metadata.name},
            "ports": [{"name": "dist", "port": MASTER_PORT, "targetPort": MASTER_PORT, "protocol": "TCP"}],
        },
    }


def trainer_config(job: SFTJob) -> dict[str, Any]:
    """The trainer config file: `spec.training` with the node and process counts filled in."""
    return job.spec.training.model_dump(mode="json")


def config_map(job: SFTJob) -> Object:
    """The trainer config, mounted read-only at CONFIG_PATH."""
    text = yaml.safe_dump(trainer_config(job), sort_keys=False)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(job, Names(job.metadata.name).config_map),
        "data": {CONFIG_FILE: text},
    }


def service_account(job: SFTJob) -> Object:
    """The identity of the trainer pods."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(job, Names(job.metadata.name).service_account),
        "automountServiceAccountToken": True,
    }


def role(job: SFTJob) -> Object:
    """May get and patch the status of this one SFTJob: nothing else."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(job, Names(job.metadata.name).service_account),
        "rules": [
            {
                "apiGroups": [GROUP],
                "resources": [f"{PLURAL}/status"],
                "resourceNames": [job.metadata.name],
                "verbs": ["get", "patch"],
            }
        ],
    }


def role_binding(job: SFTJob) -> Object:
    """Binds the per-job Role to the per-job ServiceAccount."""
    name = Names(job.metadata.name).service_account
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(job, name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": job.metadata.namespace}],
    }


def template_hash(job: SFTJob) -> str:
    """Hash of everything in the spec that shapes a pod; a change restarts the gang.

    Computed once per spec object (every reconcile compares it with the pods'; dumping the spec was a
    fifth of the operator's CPU at a 500-job burst): a validated spec is never changed in place, a new
    spec is a new object.
    """
    spec = job.spec
    if spec._template_hash is None:
        shaping = spec.model_dump(mode="json", by_alias=True, exclude={"run_policy"})
        spec._template_hash = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]
    return spec._template_hash


def distributed_env(job: SFTJob, rank: int) -> list[Object]:
    """torch.distributed / torchrun variables (and their PET_* aliases, as Kubeflow sets them)."""
    resources = job.spec.resources
    names = Names(job.metadata.name)
    values = {
        "MASTER_ADDR": names.master_addr,
        "MASTER_PORT": str(MASTER_PORT),
        "NNODES": str(resources.num_nodes),
        "NODE_RANK": str(rank),
        "NPROC_PER_NODE": str(resources.nproc_per_node),
        "WORLD_SIZE": str(resources.world_size),
    }
    env = [{"name": key, "value": value} for key, value in values.items()]
    env += [{"name": f"PET_{key}", "value": value} for key, value in values.items() if key != "WORLD_SIZE"]
    if resources.nproc_per_node == 1:
        env += [{"name": "RANK", "value": str(rank)}, {"name": "LOCAL_RANK", "value": "0"}]
    return env


def reporter_env(job: SFTJob) -> list[Object]:
    """What the trainer's status reporter needs to find its SFTJob."""
    return [
        {"name": ENV_JOB_NAME, "value": job.metadata.name},
        {"name": ENV_JOB_NAMESPACE, "value": job.metadata.namespace},
        {"name": ENV_JOB_ATTEMPT, "value": str(job.status.attempt)},
        {"name": ENV_TERMINATION_MESSAGE_PATH, "value": TERMINATION_MESSAGE_PATH},
        {"name": ENV_POD_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": ENV_POD_IP, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]


def storage_volume(role_name: str, location: StorageLocation) -> Object | None:
    """The pod volume `sft-<role>` of a storage location (None when it names no source); `kubectl sft generate` mounts it too."""
    volume: Object = {"name": f"sft-{role_name}"}
    if location.persistent_volume_claim is not None:
        claim = location.persistent_volume_claim.claim_name
        volume["persistentVolumeClaim"] = {"claimName": claim, "readOnly": location.read_only}
    elif location.host_path is not None:
        volume["hostPath"] = {"path": location.host_path.path, "type": "DirectoryOrCreate"}
    elif location.empty_dir is not None:
        volume["emptyDir"] = location.empty_dir.wire()
    else:
        return None
    return volume


def volumes_and_mounts(job: SFTJob) -> tuple[list[Object], list[Object]]:
    """Config, /dev/shm, storage locations and the user's own volumes."""
    volumes: list[Object] = [
        {"name": "sft-config", "configMap": {"name": Names(job.metadata.name).config_map}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": job.spec.resources.shm_size}},
    ]
    mounts: list[Object] = [
        {"name": "sft-config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    for role_name, location in job.spec.storage.locations().items():
        volume = storage_volume(role_name, location)
        if volume is None:
            continue
        volumes.append(volume)
        mount: Object = {"name": volume["name"], "mountPath": location.mount_path, "readOnly": location.read_only}
        if location.sub_path:
            mount["subPath"] = location.sub_path
        mounts.append(mount)
    volumes += job.spec.pod.volumes
    mounts += job.spec.pod.volume_mounts
    return volumes, mounts


def container_resources(job: SFTJob) -> Object:
    """Requests/limits, with the GPUs in both (extended resources must match)."""
    resources = job.spec.resources
    requests = {key: str(value) for key, value in resources.requests.items()}
    limits = {key: str(value) for key, value in resources.limits.items()}
    if resources.gpus_per_node:
        requests[resources.gpu_resource_name] = str(resources.gpus_per_node)
        limits[resources.gpu_resource_name] = str(resources.gpus_per_node)
    result: Object = {}
    if requests:
        result["requests"] = requests
    if limits:
        result["limits"] = limits
    return result


def trainer_container(job: SFTJob, rank: int, default_image: str) -> Object:
    """The one container of a trainer pod."""
    pod = job.spec.pod
    _, mounts = volumes_and_mounts(job)
    env = distributed_env(job, rank) + reporter_env(job) + [item.wire() for item in pod.env]
    env_from = [
        {"secretRef": {"name": location.credentials_secret_ref.name}}
        for location in job.spec.storage.locations().values()
        if location.credentials_secret_ref is not None
    ]
    metrics_port = job.spec.training.logging.metrics_port
    ports: list[Object] = [{"name": "dist", "containerPort": MASTER_PORT, "protocol": "TCP"}]
    if metrics_port:
        ports.append({"name": "metrics", "containerPort": metrics_port, "protocol": "TCP"})
    container: Object = {
        "name": TRAINER_CONTAINER,
        "image": job.spec.image or default_image,
        "command": pod.command or ["python", "-m", "sft_trainer.entrypoint", "--config", CONFIG_PATH],
        "env": env,
        "ports": ports,
        "resources": container_resources(job),
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if env_from:
        container["envFrom"] = env_from
    if pod.image_pull_policy:
        container["imagePullPolicy"] = pod.image_pull_policy
    return container


def pod(
    job: SFTJob, rank: int, default_image: str = DEFAULT_IMAGE, runtime: ClusterSFTRuntimeSpec | None = None
) -> Object:
    """Trainer pod of node `rank` in the current attempt, with a runtime's platform defaults under the
    job's own fields (`runtime.with_runtime`). The template hash is the job's own spec's: an edit of
    the runtime restarts no running gang."""
    names = Names(job.metadata.name)
    shape = template_hash(job)
    if runtime is not None:
        job = job.model_copy(update={"spec": with_runtime(job.spec, runtime)})
    spec = job.spec
    labels = {**spec.pod.labels, LABEL_RANK: str(rank), LABEL_ATTEMPT: str(job.status.attempt)}  # ours win
    annotations = {**spec.pod.annotations, ANNOTATION_TEMPLATE_HASH: shape}
    if spec.scheduling.queue_name:
        labels[KUEUE_QUEUE_LABEL] = spec.scheduling.queue_name
        labels[KUEUE_GROUP_LABEL] = f"{job.metadata.name}-{job.status.attempt}"
        annotations[KUEUE_GROUP_COUNT] = str(spec.resources.num_nodes)
    volumes, _ = volumes_and_mounts(job)
    pod_spec: Object = {
        "hostname": names.hostname(rank),
        "subdomain": names.service,
        "restartPolicy": "Never",
        "serviceAccountName": spec.pod.service_account_name or names.service_account,
        "automountServiceAccountToken": True,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": spec.pod.termination_grace_period_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [trainer_container(job, rank, default_image)],
        "volumes": volumes,
    }
    optional = {
        "nodeSelector": spec.pod.node_selector,
        "tolerations": spec.pod.tolerations,
        "affinity": spec.pod.affinity,
        "priorityClassName": spec.pod.priority_class_name,
        "schedulerName": spec.scheduling.scheduler_name,
        "imagePullSecrets": [ref.wire() for ref in spec.pod.image_pull_secrets],
    }
    pod_spec.update({key: value for key, value in optional.items() if value})
    metadata = _meta(job, names.pod(rank, job.status.attempt), labels)
    metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}


def supporting_objects(job: SFTJob) -> list[Object]:
    """Everything but the pods, in creation order (the pods need all of them)."""
    return [service_account(job), role(job), role_binding(job), config_map(job), headless_service(job)]


def pods(job: SFTJob, default_image: str = DEFAULT_IMAGE, runtime: ClusterSFTRuntimeSpec | None = None) -> list[Object]:
    """The gang: one pod per node, rank order."""
    return [pod(job, rank, default_image, runtime) for rank in range(job.spec.resources.num_nodes)]
