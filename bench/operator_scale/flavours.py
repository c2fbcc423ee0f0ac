"""The two operators under test (kube-sft's SFTJob, Kubeflow's PyTorchJob) and the floor: what differs between
them for the bench (group/kind, labels, phases, restart scope) and the job each is sent."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from sft_trainer import contract

FAIL_ANNOTATION = "bench.kube-sft.io/fail"
GPU = "nvidia.com/gpu"
FINAL_PHASES = frozenset({"Succeeded", "Failed"})
BENCH_IMAGE = "ghcr.io/kube-sft/trainer:0.1.0"  # never pulled: KWOK runs no containers
Object = dict[str, Any]
TRAINING = {
    "model": {"source": "hf", "path": "/models/tiny"},
    "data": {"train_file": "/data/train.jsonl"},
    "trainer": {"max_steps": 20, "val_check_interval": 5, "save_interval": 10, "global_batch_size": 128},
}


POD_COMMAND = ["sleep", "infinity"]  # never run: KWOK plays the pod lifecycle


@dataclass(frozen=True)
class Flavour:
    """What differs between kube-sft's SFTJob and the peer's PyTorchJob, for the bench."""

    name: str
    group: str
    version: str
    plural: str
    kind: str
    job_label: str
    slot_labels: tuple[str, ...]
    victim_slot: str
    running_phases: frozenset[str]
    whole_gang_restart: bool
    short: str  # the run's namespace is bench-<short>
    prefix: str  # job names are <prefix>-<index>
    floor: bool = False  # the floor client: creates each job's pods and nothing else; jobs never finish

    def pod_key(self, pod: Object) -> tuple[str, str] | None:
        """(job name, slot) of a job's pod, None for other pods."""
        labels = (pod.get("metadata") or {}).get("labels") or {}
        if self.job_label not in labels:
            return None
        return labels[self.job_label], "/".join(labels.get(label, "?") for label in self.slot_labels)

    def replaced_after_failure(self, nodes_per_job: int) -> int:
        """Pods created again after one pod fails: the whole gang (kube-sft) or the failed pod (peer)."""
        return nodes_per_job if self.whole_gang_restart else 1

    def job_phase(self, obj: Object) -> str | None:
        """SFTJob: status.phase. PyTorchJob: the newest condition that is True."""
        status = obj.get("status") or {}
        if self.kind == "SFTJob":
            return status.get("phase")
        true = [c for c in status.get("conditions") or [] if c.get("status") == "True"]
        return str(true[-1]["type"]) if true else None

    def manifest(self, name: str, namespace: str, nodes: int) -> Object:
        """The job the bench submits."""
        meta = {"name": name, "namespace": namespace}
        if self.kind == "SFTJob":
            return {
                "apiVersion": f"{self.group}/{self.version}",
                "kind": self.kind,
                "metadata": meta,
                "spec": {
                    "resources": {"numNodes": nodes, "gpusPerNode": 8},
                    "pod": {"command": POD_COMMAND, "terminationGracePeriodSeconds": 30},
                    "runPolicy": {"backoffLimit": 3, "backoffSeconds": 0, "pendingTimeoutSeconds": 86400},
                    "training": TRAINING,
                },
            }

        def replica(count: int) -> Object:
            container = {
                "name": "pytorch",
                "image": BENCH_IMAGE,
                "command": POD_COMMAND,
                "resources": {"limits": {GPU: "8"}, "requests": {GPU: "8"}},
            }
            return {
                "replicas": count,
                "restartPolicy": "ExitCode",
                "template": {"spec": {"containers": [container], "terminationGracePeriodSeconds": 30}},
            }

        specs = {"Master": replica(1)}
        if nodes > 1:
            specs["Worker"] = replica(nodes - 1)
        return {
            "apiVersion": f"{self.group}/{self.version}",
            "kind": self.kind,
            "metadata": meta,
            "spec": {"runPolicy": {"backoffLimit": 3, "cleanPodPolicy": "Running"}, "pytorchReplicaSpecs": specs},
        }


SFT = Flavour(
    name="kube-sft",
    group=contract.GROUP,
    version=contract.VERSION,
    plural=contract.PLURAL,
    kind=contract.KIND,
    job_label=contract.LABEL_JOB,
    slot_labels=(contract.LABEL_RANK,),
    victim_slot="1",
    running_phases=frozenset({"Initializing", "Running"}),
    whole_gang_restart=True,
    short="sft",
    prefix="sft",
)


FLOOR = replace(SFT, name="floor", short="floor", prefix="flr", running_phases=frozenset(), floor=True)
"""The same SFTJobs, served by `serve_floor`: the fastest any operator can get pods created here."""


PEER = Flavour(
    name="training-operator",
    group="kubeflow.org",
    version="v1",
    plural="pytorchjobs",
    kind="PyTorchJob",
    job_label="training.kubeflow.org/job-name",
    slot_labels=("training.kubeflow.org/replica-type", "training.kubeflow.org/replica-index"),
    victim_slot="worker/0",
    running_phases=frozenset({"Running"}),
    whole_gang_restart=False,
    short="peer",
    prefix="ptj",
)
