"""Scenario 6: invalid SFTJob manifests are rejected by the API server at `kubectl apply`, each with a
message naming the offending field, and none of them creates a pod (table-driven).

The checks run against the CRD installed by `helm install` (schema + CEL rules), with the
helm-installed operator watching the namespace, so a manifest that slipped through would get pods.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tests.e2e.harness import System, gsm8k_data, sft_system, sftjob, tiny_training

__all__ = ["sft_system"]

pytestmark = pytest.mark.e2e

Edit = Callable[[dict[str, Any]], None]


def valid(name: str = "bad") -> dict[str, Any]:
    """A valid 2-node CPU SFTJob (suspended, so that a valid one never runs in this module)."""
    body = sftjob(name, tiny_training(output_dir="/output/bad", data=gsm8k_data()), run_policy={"suspend": True})
    body["spec"]["storage"]["data"] = {"mountPath": "/data", "emptyDir": {}}
    return body


def setter(path: str, value: Any) -> Edit:
    """An edit that sets `spec.<path>` (dotted) to `value`, creating maps on the way."""

    def edit(body: dict[str, Any]) -> None:
        node = body["spec"]
        *parents, last = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value

    return edit


def remover(path: str) -> Edit:
    """An edit that deletes `spec.<path>`."""

    def edit(body: dict[str, Any]) -> None:
        node = body["spec"]
        *parents, last = path.split(".")
        for key in parents:
            node = node[key]
        del node[last]

    return edit


def both(*edits: Edit) -> Edit:
    """Several edits in order."""

    def edit(body: dict[str, Any]) -> None:
        for each in edits:
            each(body)

    return edit


def rename(name: str) -> Edit:
    """An edit of metadata.name."""

    def edit(body: dict[str, Any]) -> None:
        body["metadata"]["name"] = name

    return edit


# (id, edit, text the API server's message must contain: the field's path or the rule naming it)
CASES: list[tuple[str, Edit, str]] = [
    # wrong types
    ("nodes-string", setter("resources.numNodes", "two"), "spec.resources.numNodes"),
    ("suspend-string", setter("runPolicy.suspend", "yes"), "spec.runPolicy.suspend"),
    ("grace-string", setter("pod.terminationGracePeriodSeconds", "soon"), "spec.pod.terminationGracePeriodSeconds"),
    ("lr-string", setter("training.optim.lr", "fast"), "spec.training.optim.lr"),
    ("add-eos-list", setter("training.data.add_eos", [True]), "spec.training.data.add_eos"),
    ("betas-three", setter("training.optim.betas", [0.9, 0.98, 0.99]), "spec.training.optim.betas"),
    # missing fields
    ("no-training", remover("training"), "spec.training: Required value"),
    ("no-model", remover("training.model"), "spec.training.model: Required value"),
    ("no-data", remover("training.data"), "spec.training.data: Required value"),
    ("no-mount-path", remover("storage.output.mountPath"), "spec.storage.output.mountPath: Required value"),
    ("no-data-source", remover("training.data.train_file"), "exactly one of training.data.train_file"),
    ("hf-no-path", setter("training.model.source", "hf"), "model.source=hf needs model.path"),
    # impossible parallelism / batch arithmetic
    ("tensor-parallel", setter("training.parallelism.tensor_model_parallel_size", 4), "tensor_model_parallel_size"),
    ("pipeline-parallel", setter("training.parallelism.pipeline_model_parallel_size", 3), "does not divide the"),
    ("global-batch", setter("training.trainer.global_batch_size", 6), "global_batch_size: Invalid value: 6 is not divisible"),
    ("save-interval", setter("training.trainer.save_interval", 7), "save_interval: Invalid value: 7 is not a multiple"),
    ("num-nodes", setter("training.trainer.num_nodes", 3), "training.trainer.num_nodes: Invalid value: 3 contradicts resources"),
    ("devices", setter("training.trainer.devices", 2), "training.trainer.devices: Invalid value: 2 contradicts resources"),
    ("never-stops", both(setter("training.trainer.max_steps", -1), setter("training.trainer.max_epochs", -1)),
     "max_steps: Invalid value: -1 together with trainer.max_epochs=-1"),
    ("too-many-gpus", setter("resources.gpusPerNode", 17), "spec.resources.gpusPerNode"),
    # negative / zero sizes
    ("zero-nodes", setter("resources.numNodes", 0), "spec.resources.numNodes"),
    ("negative-nodes", setter("resources.numNodes", -2), "spec.resources.numNodes"),
    ("negative-shm", setter("resources.shmSize", "-1Gi"), "spec.resources.shmSize"),
    ("negative-micro-batch", setter("training.trainer.micro_batch_size", -4), "spec.training.trainer.micro_batch_size"),
    ("zero-global-batch", setter("training.trainer.global_batch_size", 0), "spec.training.trainer.global_batch_size"),
    ("negative-lr", setter("training.optim.lr", -0.1), "spec.training.optim.lr"),
    ("tiny-seq-length", setter("training.data.max_seq_length", 4), "spec.training.data.max_seq_length"),
    ("negative-backoff", setter("runPolicy.backoffLimit", -1), "spec.runPolicy.backoffLimit"),
    ("zero-deadline", setter("runPolicy.activeDeadlineSeconds", 0), "spec.runPolicy.activeDeadlineSeconds"),
    ("bad-size-limit", setter("storage.output.emptyDir", {"sizeLimit": "lots"}), "spec.storage.output.emptyDir.sizeLimit"),
    ("port-range", setter("training.logging.metrics_port", 70000), "spec.training.logging.metrics_port"),
    ("lora-dropout", setter("training.training", {"method": "lora", "lora": {"dropout": 1.5}}),
     "spec.training.training.lora.dropout"),
    # oversized strings / lists
    ("long-image", setter("image", "x" * 600), "spec.image"),
    ("long-output-dir", setter("training.output_dir", "/" + "o" * 5000), "spec.training.output_dir"),
    ("long-run-name", setter("training.name", "n" * 64), "spec.training.name"),
    ("long-job-name", rename("j" * 50), "metadata.name must be at most 42"),
    ("long-command", setter("pod.command", ["true"] * 65), "spec.pod.command"),
    # bad enums / patterns
    ("model-source", setter("training.model.source", "gguf"), "spec.training.model.source"),
    ("precision", setter("training.trainer.precision", "fp4"), "spec.training.trainer.precision"),
    ("clean-pod-policy", setter("runPolicy.cleanPodPolicy", "Sometimes"), "spec.runPolicy.cleanPodPolicy"),
    ("relative-mount", setter("storage.output.mountPath", "output"), "spec.storage.output.mountPath"),
    ("claim-name", setter("storage.output", {"mountPath": "/output", "persistentVolumeClaim": {"claimName": "Bad_Claim"}}),
     "spec.storage.output.persistentVolumeClaim.claimName"),
    ("two-sources", setter("storage.output.hostPath", {"path": "/tmp/x"}), "at most one of"),
    # unknown fields
    ("unknown-resources", setter("resources.gpus", 1), 'unknown field "spec.resources.gpus"'),
    ("unknown-trainer", setter("training.trainer.max_step", 10), 'unknown field "spec.training.trainer.max_step"'),
    ("unknown-spec", setter("replicas", 2), 'unknown field "spec.replicas"'),
]  # fmt: skip


def pod_list(key: str, *items: Any) -> Edit:
    """An edit appending `items` to `spec.pod.<key>` (after what `valid()` has there)."""

    def edit(body: dict[str, Any]) -> None:
        body["spec"]["pod"].setdefault(key, []).extend(copy.deepcopy(items))

    return edit


ENV = 2  # index of the first user env var: `sftjob()` puts two of its own first
SCRATCH = {"name": "scratch", "emptyDir": {}}
AFFINITY = "spec.pod.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms"

# Kubernetes types the spec passes to the pods (issue 16): typed from the Kubernetes OpenAPI in the CRD.
PASS_THROUGH: list[tuple[str, Edit, str]] = [
    # tolerations
    ("toleration-misspelt-key", pod_list("tolerations", {"operater": "Exists"}),
     'unknown field "spec.pod.tolerations[0].operater"'),
    ("toleration-operator", pod_list("tolerations", {"key": "a", "operator": "Exist"}),
     "spec.pod.tolerations[0].operator: Unsupported value"),
    ("toleration-effect", pod_list("tolerations", {"key": "a", "operator": "Exists", "effect": "NoSchedul"}),
     "spec.pod.tolerations[0].effect: Unsupported value"),
    ("toleration-seconds-string", pod_list("tolerations", {"key": "a", "tolerationSeconds": "soon"}),
     "spec.pod.tolerations[0].tolerationSeconds"),
    # affinity
    ("affinity-misspelt", setter("pod.affinity", {"nodeAfinity": {}}), 'unknown field "spec.pod.affinity.nodeAfinity"'),
    ("affinity-terms-string", setter("pod.affinity", {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": "gpu"}}}),
     AFFINITY),
    ("affinity-missing-operator", setter("pod.affinity", {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu"}]}]}}}),
     f"{AFFINITY}[0].matchExpressions[0].operator: Required value"),
    ("affinity-operator", setter("pod.affinity", {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "Equals"}]}]}}}),
     f"{AFFINITY}[0].matchExpressions[0].operator: Unsupported value"),
    ("anti-affinity-weight-string", setter("pod.affinity", {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": "high", "podAffinityTerm": {"topologyKey": "x"}}]}}),
     "spec.pod.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight"),
    # volumes
    ("volume-deprecated-source", pod_list("volumes", {"name": "repo", "gitRepo": {"repository": "x"}}),
     'unknown field "spec.pod.volumes[0].gitRepo"'),
    ("volume-misspelt-source", pod_list("volumes", {"name": "scratch", "emptydir": {}}),
     'unknown field "spec.pod.volumes[0].emptydir"'),
    ("volume-no-name", pod_list("volumes", {"emptyDir": {}}), "spec.pod.volumes[0].name: Required value"),
    ("volume-secret-mode-string", pod_list("volumes", {"name": "s", "secret": {"secretName": "x", "defaultMode": "rw"}}),
     "spec.pod.volumes[0].secret.defaultMode"),
    ("volume-config-items-string", pod_list("volumes", {"name": "c", "configMap": {"name": "x", "items": "all"}}),
     "spec.pod.volumes[0].configMap.items"),
    ("volume-empty-dir-medium", pod_list("volumes", {"name": "m", "emptyDir": {"medium": "Disk"}}),
     "spec.pod.volumes[0].emptyDir.medium: Unsupported value"),
    ("volume-size-limit", pod_list("volumes", {"name": "m", "emptyDir": {"sizeLimit": "lots"}}),
     "spec.pod.volumes[0].emptyDir.sizeLimit"),
    ("volume-csi-no-driver", pod_list("volumes", {"name": "c", "csi": {"readOnly": True}}),
     "spec.pod.volumes[0].csi.driver: Required value"),
    ("volume-nfs-no-server", pod_list("volumes", {"name": "share", "nfs": {"path": "/x"}}),
     "spec.pod.volumes[0].nfs.server: Required value"),
    ("volume-projected-misspelt", pod_list("volumes", {"name": "p", "projected": {"source": []}}),
     'unknown field "spec.pod.volumes[0].projected.source"'),
    ("volume-ephemeral-modes-string", pod_list("volumes", {"name": "e", "ephemeral": {"volumeClaimTemplate": {"spec": {"accessModes": "ReadWriteOnce"}}}}),
     "spec.pod.volumes[0].ephemeral.volumeClaimTemplate.spec.accessModes"),
    # volume mounts
    ("mount-no-path", both(pod_list("volumes", SCRATCH), pod_list("volumeMounts", {"name": "scratch"})),
     "spec.pod.volumeMounts[0].mountPath: Required value"),
    ("mount-read-only-string", both(pod_list("volumes", SCRATCH), pod_list("volumeMounts", {"name": "scratch", "mountPath": "/s", "readOnly": "yes"})),
     "spec.pod.volumeMounts[0].readOnly"),
    ("mount-misspelt", both(pod_list("volumes", SCRATCH), pod_list("volumeMounts", {"name": "scratch", "mountpath": "/s"})),
     'unknown field "spec.pod.volumeMounts[0].mountpath"'),
    ("mount-propagation", both(pod_list("volumes", SCRATCH), pod_list("volumeMounts", {"name": "scratch", "mountPath": "/s", "mountPropagation": "Sideways"})),
     "spec.pod.volumeMounts[0].mountPropagation: Unsupported value"),
    # env sources
    ("env-source-misspelt", pod_list("env", {"name": "T", "valueFrom": {"secretKeyRefs": {"name": "x", "key": "k"}}}),
     f'unknown field "spec.pod.env[{ENV}].valueFrom.secretKeyRefs"'),
    ("env-secret-no-key", pod_list("env", {"name": "T", "valueFrom": {"secretKeyRef": {"name": "x"}}}),
     f"spec.pod.env[{ENV}].valueFrom.secretKeyRef.key: Required value"),
    ("env-field-no-path", pod_list("env", {"name": "T", "valueFrom": {"fieldRef": {"apiVersion": "v1"}}}),
     f"spec.pod.env[{ENV}].valueFrom.fieldRef.fieldPath: Required value"),
    ("env-optional-string", pod_list("env", {"name": "T", "valueFrom": {"configMapKeyRef": {"name": "x", "key": "k", "optional": "maybe"}}}),
     f"spec.pod.env[{ENV}].valueFrom.configMapKeyRef.optional"),
]  # fmt: skip


@pytest.mark.parametrize(("edit", "message"), [pytest.param(e, m, id=i) for i, e, m in CASES + PASS_THROUGH])
def test_invalid_manifest_is_rejected_at_apply(sft_system: System, edit: Edit, message: str) -> None:
    """`kubectl apply` fails, the message names the field, and no SFTJob or pod exists afterwards."""
    body = valid()
    edit(body)
    name = body["metadata"]["name"]
    result = sft_system.apply(body, check=False)
    assert result.returncode != 0, f"accepted: {result.stdout}"
    assert message in result.stderr, result.stderr
    assert sft_system.get(name) is None
    assert not sft_system.pods(name)


def test_at_least_thirty_cases() -> None:
    """The tables cover the issues' minimums (issue 4: 30 cases; issue 16: 20 pass-through fields)."""
    assert len(CASES) >= 30
    assert len(PASS_THROUGH) >= 20


@pytest.fixture(scope="module")
def frozen(sft_system: System) -> dict[str, Any]:
    """A valid, suspended SFTJob applied once for the immutability cases."""
    body = valid("frozen")
    sft_system.apply(body)
    return body


IMMUTABLE: list[tuple[str, Edit, str]] = [
    ("training-output-dir", setter("training.output_dir", "/output/elsewhere"), "spec.training is immutable"),
    ("training-max-steps", setter("training.trainer.max_steps", 99), "spec.training is immutable"),
    ("resources-nodes", setter("resources.numNodes", 4), "spec.resources is immutable"),
    ("resources-requests", setter("resources.requests", {"cpu": "2"}), "spec.resources is immutable"),
    ("storage-output", setter("storage.output", {"mountPath": "/out2", "emptyDir": {}}), "spec.storage is immutable"),
    ("scheduling-queue", setter("scheduling.queueName", "team-a"), "spec.scheduling is immutable"),
]


@pytest.mark.parametrize(("edit", "message"), [pytest.param(e, m, id=i) for i, e, m in IMMUTABLE])
def test_immutable_field_edit_is_rejected(sft_system: System, frozen: dict[str, Any], edit: Edit, message: str) -> None:
    """Re-applying the job with an immutable field changed fails and leaves the stored spec as it was."""
    before = sft_system.get("frozen")
    assert before is not None
    changed = copy.deepcopy(frozen)
    edit(changed)
    result = sft_system.apply(changed, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    after = sft_system.get("frozen")
    assert after is not None and after["spec"] == before["spec"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"]


def test_mutable_fields_still_apply_and_no_pod_was_created(sft_system: System, frozen: dict[str, Any]) -> None:
    """A mutable edit (runPolicy) applies; the suspended job and every rejected one made no pod."""
    changed = copy.deepcopy(frozen)
    changed["spec"]["runPolicy"]["backoffLimit"] = 5
    sft_system.apply(changed)
    time.sleep(2)  # a few operator resyncs
    assert not sft_system.pods("frozen")
    assert sft_system.status("frozen").get("phase") in (None, "Suspended")
    rendered = yaml.safe_dump(changed)
    assert "backoffLimit: 5" in rendered
    sft_system.delete("frozen")
