"""Scenario 5, through the helm-installed operator and the real trainer: a permanent failure (bad
data path) ends Failed without retries, with the reason in status and an Event; a deadline ends
Failed with reason DeadlineExceeded; suspend then resume works (and resumes from the checkpoint);
deleting an SFTJob removes every child object (garbage collection, no finalizers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes
import pytest
from kubernetes.client import ApiException

from tests.e2e.harness import System, gsm8k_data, gsm8k_dir, sft_system, sftjob, tiny_training

__all__ = ["sft_system"]

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GSM8K rows on the host, mounted read-only at /data."""
    return gsm8k_dir(tmp_path_factory.mktemp("failures") / "data")


def output(tmp_path_factory: pytest.TempPathFactory, name: str) -> dict[str, Any]:
    """A hostPath output volume (kept across gang restarts, like a PVC)."""
    path = tmp_path_factory.mktemp(name)
    path.chmod(0o777)
    return {"hostPath": {"path": str(path)}}


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """status.conditions by type."""
    return {c["type"]: c for c in status.get("conditions", [])}


def test_bad_data_path_fails_permanently_without_retries(
    sft_system: System, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """train_file points at a file that does not exist: the trainer exits DATA_ERROR (11) and the
    operator fails the job at once (backoffLimit 2 unused), with the reason in status and an Event."""
    data = {**gsm8k_data(), "train_file": "/data/missing.jsonl"}
    training = tiny_training(output_dir="/output/baddata", data=data)
    sft_system.apply(sftjob("bad-data", training, data_dir=data_dir, output=output(tmp_path_factory, "bd")))
    final = sft_system.wait_phase("bad-data", {"Failed", "Succeeded"}, 240)
    assert final["phase"] == "Failed", final
    assert final["restarts"] == 0 and final["attempt"] == 0, "a permanent failure must not be retried"
    failure = final["lastFailure"]
    assert failure["exitCode"] == 11 and failure["retryable"] is False, failure
    assert "missing.jsonl" in failure["message"], failure
    assert final.get("reason"), final
    assert conditions(final)["Failed"]["status"] == "True"
    pods = sft_system.pods("bad-data")
    assert all(p.metadata.labels["sft.kube-sft.io/attempt"] == "0" for p in pods), "no second attempt"

    def failure_event() -> list[tuple[str, str]]:
        return [(r, m) for r, m in sft_system.events("bad-data") if "missing.jsonl" in m or "DATA_ERROR" in m]

    sft_system.wait(failure_event, 20, "a Warning Event with the failure reason", "bad-data")


def test_deadline_exceeded(sft_system: System, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """runPolicy.activeDeadlineSeconds: a run that cannot finish in time ends Failed/DeadlineExceeded
    and its pods are deleted."""
    training = tiny_training(output_dir="/output/late", data=gsm8k_data(), max_steps=100000)
    body = sftjob(
        "late", training, data_dir=data_dir, output=output(tmp_path_factory, "late"),
        run_policy={"activeDeadlineSeconds": 20},
    )  # fmt: skip
    sft_system.apply(body)
    final = sft_system.wait_phase("late", {"Failed", "Succeeded"}, 120)
    assert final["phase"] == "Failed" and final["reason"] == "DeadlineExceeded", final
    failed = conditions(final)["Failed"]
    assert failed["status"] == "True" and failed["reason"] == "DeadlineExceeded", failed
    assert final["restarts"] == 0
    sft_system.wait(
        lambda: not sft_system.pods("late", include_deleting=False), 60, "the late job's pods deleted", "late"
    )
    sft_system.wait(  # Events are posted after the status patch: give the operator a moment
        lambda: any(
            reason == "DeadlineExceeded" or "deadline" in message.lower()
            for reason, message in sft_system.events("late")
        ),
        30,
        "a DeadlineExceeded Event",
        "late",
    )


def test_suspend_then_resume(sft_system: System, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Suspend a running job (pods deleted, phase Suspended), resume it: a new gang starts from the
    last checkpoint and the job succeeds; suspension is not a failure (restarts stays 0)."""
    training = tiny_training(
        output_dir="/output/pause", data=gsm8k_data(), max_steps=60, val_check_interval=10, save_interval=10
    )
    sft_system.apply(sftjob("pause", training, data_dir=data_dir, output=output(tmp_path_factory, "pause")))

    def checkpointed() -> dict[str, Any] | None:
        status = sft_system.status("pause")
        return status if (status.get("latestCheckpoint") or {}).get("step", 0) >= 10 else None

    sft_system.wait(checkpointed, 240, "a first checkpoint", "pause")
    sft_system.cluster.kubectl(
        "patch", "sftjob", "pause", "-n", sft_system.namespace, "--type=merge", "-p", '{"spec":{"runPolicy":{"suspend":true}}}'
    )  # fmt: skip
    suspended = sft_system.wait_phase("pause", {"Suspended"}, 60)
    sft_system.wait(lambda: not sft_system.pods("pause"), 60, "the suspended job's pods deleted", "pause")
    saved = int(sft_system.status("pause")["latestCheckpoint"]["step"])
    assert suspended["restarts"] == 0
    sft_system.cluster.kubectl(
        "patch", "sftjob", "pause", "-n", sft_system.namespace, "--type=merge", "-p", '{"spec":{"runPolicy":{"suspend":false}}}'
    )  # fmt: skip
    resumed = sft_system.wait_phase("pause", {"Initializing", "Running", "Succeeded"}, 60)
    assert resumed["attempt"] >= 1, resumed
    final = sft_system.wait_phase("pause", {"Succeeded", "Failed"}, 300)
    assert final["phase"] == "Succeeded" and final["restarts"] == 0, final
    rank0 = sft_system.agent.logs(sft_system.namespace, sft_system.rank_pod("pause", 0))
    assert "resum" in rank0.lower() and str(saved) in rank0, f"no resume from step {saved}:\n{rank0[-3000:]}"


OWNED_KINDS = ("pods", "services", "configmaps", "serviceaccounts", "roles", "rolebindings", "persistentvolumeclaims")


def owned_children(system: System, uid: str) -> list[str]:
    """`kind/name` of every object in the jobs namespace whose ownerReferences name `uid`."""
    api = system.cluster.client
    core, rbac = kubernetes.client.CoreV1Api(api), kubernetes.client.RbacAuthorizationV1Api(api)
    ns = system.namespace
    listings: dict[str, Any] = {
        "pods": core.list_namespaced_pod(ns),
        "services": core.list_namespaced_service(ns),
        "configmaps": core.list_namespaced_config_map(ns),
        "serviceaccounts": core.list_namespaced_service_account(ns),
        "roles": rbac.list_namespaced_role(ns),
        "rolebindings": rbac.list_namespaced_role_binding(ns),
        "persistentvolumeclaims": core.list_namespaced_persistent_volume_claim(ns),
        "secrets": core.list_namespaced_secret(ns),
        "events-excluded": [],
    }
    found = []
    for kind, listing in listings.items():
        for item in getattr(listing, "items", []):
            if any(ref.uid == uid for ref in item.metadata.owner_references or []):
                found.append(f"{kind}/{item.metadata.name}")
    return found


def test_delete_removes_every_child(
    sft_system: System, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`kubectl delete sftjob` of a running job: pods, Service, ConfigMap, ServiceAccount, Role and
    RoleBinding are all garbage-collected, and nothing is recreated."""
    training = tiny_training(output_dir="/output/doomed", data=gsm8k_data(), max_steps=100000)
    sft_system.apply(sftjob("doomed", training, data_dir=data_dir, output=output(tmp_path_factory, "doomed")))
    job = sft_system.wait_phase("doomed", {"Running"}, 240)
    uid = sft_system.get("doomed")["metadata"]["uid"]  # type: ignore[index]
    children = owned_children(sft_system, uid)
    kinds = {child.split("/")[0] for child in children}
    assert {"pods", "services", "configmaps", "serviceaccounts", "roles", "rolebindings"} <= kinds, children
    assert job["phase"] == "Running"
    sft_system.cluster.kubectl("delete", "sftjob", "doomed", "-n", sft_system.namespace, "--wait=false")
    sft_system.wait(lambda: not owned_children(sft_system, uid), 90, "every child garbage-collected", "doomed")
    with pytest.raises(ApiException) as missing:
        sft_system.custom.get_namespaced_custom_object(
            "sft.kube-sft.io", "v1alpha1", sft_system.namespace, "sftjobs", "doomed"
        )
    assert missing.value.status == 404
    assert not sft_system.pods("doomed"), "no pod is recreated for a deleted job"
