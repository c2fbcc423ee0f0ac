"""Scenarios 3 and 4: chaos through the helm-installed operator and the real trainer.

3. A trainer pod is killed mid-run (`System.agent.kill`: SIGKILL of its container on the real
   node): the whole gang is replaced, the new gang resumes from the last checkpoint on the PVC (the agent's default
   StorageClass; an emptyDir would be lost with the pod), at most `save_interval` steps are lost,
   and the job finishes with `status.restarts == 1` and the failure in `status.lastFailure`.
4. The active operator replica is killed right after an SFTJob is applied (while it reconciles the
   new job): the standby takes over, the job gets exactly one pod per rank (no duplicates), every
   pod is owned by the job (no orphans), and the job finishes.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from sft_operator.render import Names
from tests.e2e.harness import (
    LABEL_JOB,
    RELEASE,
    SYSTEM_NAMESPACE,
    System,
    gsm8k_data,
    gsm8k_dir,
    sft_system,
    sftjob,
    tiny_training,
)

__all__ = ["sft_system"]

pytestmark = pytest.mark.e2e

SAVE_INTERVAL = 20


def create_pvc(system: System, name: str) -> None:
    """A PVC of the default StorageClass (provisioned by the node agent as a hostPath PV)."""
    system.core.create_namespaced_persistent_volume_claim(
        system.namespace,
        {
            "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )


def pvc_host_path(system: System, name: str) -> Path:
    """The host directory behind a bound PVC (the PV's hostPath)."""

    def bound() -> str | None:
        claim = system.core.read_namespaced_persistent_volume_claim(name, system.namespace)
        return str(claim.spec.volume_name) if claim.status.phase == "Bound" and claim.spec.volume_name else None

    volume = system.wait(bound, 60, f"PVC {name} Bound")
    return Path(system.core.read_persistent_volume(volume).spec.host_path.path)


def max_step(metrics_file: Path) -> int:
    """The highest step recorded in a metrics.jsonl (0 when absent)."""
    if not metrics_file.exists():
        return 0
    steps = []
    for line in metrics_file.read_text().splitlines():
        try:
            steps.append(int(json.loads(line).get("step", 0)))
        except (json.JSONDecodeError, ValueError, AttributeError):
            continue
    return max(steps, default=0)


def test_killed_trainer_pod_restarts_the_gang_from_the_checkpoint(
    sft_system: System, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """SIGKILL rank 1 after the first checkpoint: gang restart, resume, <= save_interval steps lost."""
    system = sft_system
    data_dir = gsm8k_dir(tmp_path_factory.mktemp("chaos") / "data")
    create_pvc(system, "chaos-output")
    training = tiny_training(
        output_dir="/output/chaos", data=gsm8k_data(), max_steps=240,
        val_check_interval=10, save_interval=SAVE_INTERVAL,
    )  # fmt: skip
    system.apply(
        sftjob("chaos", training, data_dir=data_dir, output={"persistentVolumeClaim": {"claimName": "chaos-output"}})
    )
    metrics_file = pvc_host_path(system, "chaos-output") / "chaos" / "metrics.jsonl"

    def past_first_checkpoint() -> dict[str, Any] | None:
        status = system.status("chaos")
        checkpoint = (status.get("latestCheckpoint") or {}).get("step", 0)
        return status if checkpoint >= SAVE_INTERVAL and max_step(metrics_file) > checkpoint else None

    system.wait(past_first_checkpoint, 300, "training past the first checkpoint", "chaos")
    first_gang = {p.metadata.name: p.metadata.uid for p in system.pods("chaos")}
    assert len(first_gang) == 2
    system.agent.kill(system.namespace, "chaos-node-1")
    time.sleep(1.0)  # rank 0 blocks in its next collective; what it wrote by now is the work at risk
    killed_at = max_step(metrics_file)
    final = system.wait_phase("chaos", {"Succeeded", "Failed"}, 400)
    assert final["phase"] == "Succeeded", system.diagnostics("chaos")
    assert final["restarts"] == 1 and final["attempt"] == 1, final
    failure = final["lastFailure"]
    assert failure["rank"] == 1 and failure["exitCode"] == 137 and failure["retryable"] is True, failure
    assert failure.get("message"), failure
    second_gang = {p.metadata.name: p.metadata.uid for p in system.pods("chaos")}
    assert not set(first_gang.values()) & set(second_gang.values()), "both ranks must be replaced"
    assert all(p.metadata.labels["sft.kube-sft.io/attempt"] == "1" for p in system.pods("chaos"))
    log = system.agent.logs(system.namespace, system.rank_pod("chaos", 0))
    resumed = re.search(r"resumed from \S+ at step (\d+)", log)
    assert resumed, f"the new gang did not resume from a checkpoint:\n{log[-3000:]}"
    resumed_step = int(resumed.group(1))
    assert SAVE_INTERVAL <= resumed_step <= killed_at, (resumed_step, killed_at)
    assert killed_at - resumed_step <= SAVE_INTERVAL, f"lost {killed_at - resumed_step} steps (> save_interval)"
    steps = [json.loads(line)["step"] for line in metrics_file.read_text().splitlines() if '"loss"' in line]
    assert steps == sorted(steps) and steps[-1] == 240, "metrics.jsonl reads as one uninterrupted run"
    assert final["progress"]["step"] == 240


def crashed(system: System, pod: str) -> bool:
    """Whether the pod's container has restarted or is not running (as its node reports it)."""
    statuses = system.core.read_namespaced_pod(pod, SYSTEM_NAMESPACE).status.container_statuses or []
    return any(s.restart_count > 0 or not s.state.running for s in statuses)


def test_killed_active_operator_hands_over_to_the_standby(
    sft_system: System, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Kill the leading replica's process right after `kubectl apply`; the standby finishes the job."""
    system = sft_system
    data_dir = gsm8k_dir(tmp_path_factory.mktemp("failover") / "data")
    replicas = system.wait_operators(2)
    leader = system.leader()
    standby = next(p for p in replicas if p.metadata.name != leader.metadata.name)
    training = tiny_training(output_dir="/output/failover", data=gsm8k_data(), max_steps=40)
    system.apply(sftjob("failover", training, data_dir=data_dir))
    # Mid-reconcile of the new job: SIGKILL the leader's process (no clean-up, its peering record
    # stays until it expires), then remove its pod and keep the Deployment at one replica, as when
    # the leader's node dies and no replacement can start. Without this the node agent restarts the
    # container in place within a second and the restarted process (a new random peering priority)
    # may win the leadership back, so the hand-over to the standby would be left to chance.
    system.agent.kill(SYSTEM_NAMESPACE, leader.metadata.name)
    # The kubelet reports the crash a moment later; until then the ReplicaSet could pick the standby
    # (the newer pod) for the scale-down below instead of the crashed leader.
    system.wait(lambda: crashed(system, leader.metadata.name), 30, "the kubelet to report the crash", "failover")
    system.cluster.kubectl("scale", "deployment", RELEASE, "-n", SYSTEM_NAMESPACE, "--replicas=1")
    system.cluster.kubectl(
        "delete",
        "pod",
        leader.metadata.name,
        "-n",
        SYSTEM_NAMESPACE,
        "--grace-period=0",
        "--force",
        "--wait=false",
        check=False,  # the scale-down may have removed it already (a ReplicaSet drops not-ready pods first)
    )
    system.wait(lambda: system.is_leader(standby), 60, "the standby to become active", "failover")
    system.wait(
        lambda: [p.metadata.name for p in system.operator_pods()] == [standby.metadata.name], 30, "one replica left"
    )
    final = system.wait_phase("failover", {"Succeeded", "Failed"}, 300)
    assert final["phase"] == "Succeeded", system.diagnostics("failover")
    # The kill may land between the two pods' creates: the standby then finds a started gang with a
    # rank missing and restarts it whole (never a rank created alone), once. Otherwise no restart.
    assert final["attempt"] == final["restarts"] <= 1, final
    if final["restarts"]:
        assert final["lastFailure"]["reason"] == "PodDeleted" and "missing" in final["lastFailure"]["message"], final
    names_by_attempt = [[Names("failover").pod(rank, attempt) for rank in (0, 1)] for attempt in (0, 1)]
    uid = system.get("failover")["metadata"]["uid"]  # type: ignore[index]
    pods = system.pods("failover")
    names = [p.metadata.name for p in pods]
    assert len(names) == len(set(names)) and set(names) <= set(names_by_attempt[final["attempt"]]), names
    created = system.core.list_namespaced_event(
        system.namespace, field_selector="involvedObject.kind=Pod,reason=Scheduled"
    ).items
    scheduled = [e.involved_object.name for e in created if e.involved_object.name.startswith("failover-node-")]
    assert len(scheduled) == len(set(scheduled)), f"a pod scheduled twice: {scheduled}"
    assert set(names_by_attempt[final["attempt"]]) <= set(scheduled), f"pods scheduled: {scheduled}"
    for pod in system.core.list_namespaced_pod(system.namespace).items:
        if pod.metadata.name.startswith("failover"):
            owners = [ref.uid for ref in pod.metadata.owner_references or []]
            assert owners == [uid], f"orphan or foreign pod {pod.metadata.name}: {owners}"
            assert pod.metadata.labels[LABEL_JOB] == "failover"
    system.cluster.kubectl("scale", "deployment", RELEASE, "-n", SYSTEM_NAMESPACE, "--replicas=2")
    system.wait_operators(2)  # a replacement replica joins; exactly one is active
    assert system.pods("failover") == [] or {p.metadata.uid for p in system.pods("failover")} == {
        p.metadata.uid for p in pods
    }, "the new replica recreated nothing"
