"""The operator against the real API server, scheduler, garbage collector and node agent.

Trainer pods here run small Python scripts (the node agent runs pod commands as local processes),
so each scenario takes seconds: the real trainer is exercised by the e2e tests.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

import kubernetes
import pytest
import yaml
from kubernetes.client import ApiException

from devcluster.controlplane import ControlPlane
from sft_operator.api import GROUP, PLURAL, VERSION
from tests import builders
from tests.integration.operator.conftest import Operator, settle, wait_for

pytestmark = pytest.mark.integration

TRAINING: dict[str, Any] = {
    "model": {"source": "hf", "path": "/models/tiny"},
    "data": {"train_file": "/data/train.jsonl"},
    "trainer": {"max_steps": 20, "val_check_interval": 5, "save_interval": 10, "global_batch_size": 8},
}


def script(body: str) -> list[str]:
    """A pod command running `body` with os, sys, time imported and ATTEMPT / RANK set."""
    prelude = "import os, sys, time, json\nATTEMPT = int(os.environ['SFT_JOB_ATTEMPT'])\nRANK = int(os.environ['NODE_RANK'])\n"
    return ["python", "-c", prelude + textwrap.dedent(body)]


def sftjob(name: str, command: list[str], nodes: int = 2, **spec: Any) -> dict[str, Any]:
    """A job whose pods run `command` on the node agent; `spec` keys merge into (dicts) or replace the defaults."""
    body = builders.sftjob(
        name,
        {
            "resources": {"numNodes": nodes, "gpusPerNode": 1},
            "pod": {"command": command, "terminationGracePeriodSeconds": 1},
            "runPolicy": {"backoffSeconds": 1},
            "training": TRAINING,
        },
    )
    for key, value in spec.items():
        body["spec"][key] = {**body["spec"].get(key, {}), **value} if isinstance(value, dict) else value
    return body


def custom(cluster: ControlPlane) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(cluster.client)


def core(cluster: ControlPlane) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(cluster.client)


def create(cluster: ControlPlane, namespace: str, body: dict[str, Any]) -> None:
    custom(cluster).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


def get(cluster: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    job: dict[str, Any] = custom(cluster).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return job


def status(cluster: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    return dict(get(cluster, namespace, name).get("status") or {})


def phase_is(cluster: ControlPlane, namespace: str, name: str, *phases: str) -> dict[str, Any] | None:
    current = status(cluster, namespace, name)
    return current if current.get("phase") in phases else None


def pods(cluster: ControlPlane, namespace: str, name: str) -> list[Any]:
    return list(core(cluster).list_namespaced_pod(namespace, label_selector=f"{GROUP}/job-name={name}").items)


def events(cluster: ControlPlane, namespace: str, name: str) -> list[tuple[str, str]]:
    items = core(cluster).list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    return [(item.reason, item.message) for item in items]


# --- CRD: CEL and schema validation at apply ------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"resources": {"numNodes": 1, "gpusPerNode": 3}, "training": {**TRAINING, "parallelism": {"tensor_model_parallel_size": 2}}},
         "TP x PP x CP = 2 does not divide the 3 processes"),
        ({"training": {**TRAINING, "trainer": {**TRAINING["trainer"], "global_batch_size": 3}}}, "global_batch_size: Invalid value: 3 is not divisible"),
        ({"training": {**TRAINING, "trainer": {**TRAINING["trainer"], "save_interval": 7}}}, "save_interval: Invalid value: 7 is not a multiple"),
        ({"training": {**TRAINING, "trainer": {**TRAINING["trainer"], "num_nodes": 5}}}, "num_nodes: Invalid value: 5 contradicts resources (2)"),
        ({"resources": {"numNodes": 0}}, "spec.resources.numNodes"),
        ({"resources": {"shmSize": "a lot"}}, "spec.resources.shmSize"),
        ({"resources": {"shmSize": -1}}, "spec.resources.shmSize"),
        ({"resources": {"numNodes": 2, "gpus": 1}}, 'unknown field "spec.resources.gpus"'),
        ({"image": "x" * 600}, "spec.image"),
        ({"runPolicy": {"cleanPodPolicy": "Sometimes"}}, "spec.runPolicy.cleanPodPolicy"),
        ({"storage": {"model": {"mountPath": "/m", "hostPath": {"path": "/x"}, "emptyDir": {}}}}, "at most one of"),
        ({"training": {**TRAINING, "data": {"validation_file": "/data/v.jsonl"}}}, "exactly one of training.data.train_file"),
        ({"training": {**TRAINING, "model": {"source": "hf"}}}, "model.source=hf needs model.path"),
        ({"training": {"model": TRAINING["model"]}}, "spec.training.data: Required value"),
    ],
    ids=["parallelism", "global-batch", "save-interval", "num-nodes", "zero-nodes", "shm-size", "negative-shm", "unknown-field",
         "long-image", "clean-pod-policy", "two-volume-sources", "no-data", "no-model-path", "missing-data"],
)  # fmt: skip
def test_bad_specs_are_rejected_at_apply(
    kube_cluster: ControlPlane, installed_chart: str, sft_namespace: str, change: dict[str, Any], message: str
) -> None:
    body = sftjob("bad", ["true"])
    body["spec"].update(change)
    result = kube_cluster.kubectl("apply", "-n", sft_namespace, "-f", "-", input=yaml.safe_dump(body), check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    with pytest.raises(ApiException) as missing:
        get(kube_cluster, sft_namespace, "bad")
    assert missing.value.status == 404


def test_name_too_long_for_pod_names(kube_cluster: ControlPlane, installed_chart: str, sft_namespace: str) -> None:
    body = sftjob("a" * 50, ["true"])
    result = kube_cluster.kubectl("apply", "-n", sft_namespace, "-f", "-", input=yaml.safe_dump(body), check=False)
    assert result.returncode != 0 and "metadata.name must be at most 42" in result.stderr, result.stderr


def test_immutable_fields(kube_cluster: ControlPlane, installed_chart: str, sft_namespace: str) -> None:
    body = sftjob("frozen", ["true"], runPolicy={"suspend": True})
    create(kube_cluster, sft_namespace, body)
    for key, value in (("training", {**TRAINING, "output_dir": "/elsewhere"}), ("resources", {"numNodes": 4})):
        changed = {**body, "spec": {**body["spec"], key: value}}
        result = kube_cluster.kubectl(
            "apply", "-n", sft_namespace, "-f", "-", input=yaml.safe_dump(changed), check=False
        )
        assert result.returncode != 0 and f"spec.{key} is immutable" in result.stderr, result.stderr
    allowed = {**body, "spec": {**body["spec"], "runPolicy": {"suspend": True, "backoffLimit": 7}}}
    kube_cluster.kubectl("apply", "-n", sft_namespace, "-f", "-", input=yaml.safe_dump(allowed))
    custom(kube_cluster).delete_namespaced_custom_object(GROUP, VERSION, sft_namespace, PLURAL, "frozen")


# --- reconcile ----------------------------------------------------------------------------------------


def test_children_are_created_owned_and_the_job_succeeds(
    kube_cluster: ControlPlane, operator: Operator, sft_namespace: str
) -> None:
    create(kube_cluster, sft_namespace, sftjob("happy", script("time.sleep(3)")))
    wait_for(lambda: len(pods(kube_cluster, sft_namespace, "happy")) == 2, 30, "two pods", operator)
    job = get(kube_cluster, sft_namespace, "happy")
    uid = job["metadata"]["uid"]
    assert not job["metadata"].get("finalizers"), "no finalizer may block deletion"
    v1, rbac = core(kube_cluster), kubernetes.client.RbacAuthorizationV1Api(kube_cluster.client)
    service = v1.read_namespaced_service("happy", sft_namespace)
    assert service.spec.cluster_ip == "None" and service.spec.publish_not_ready_addresses is True
    children = [
        service,
        v1.read_namespaced_config_map("happy-config", sft_namespace),
        v1.read_namespaced_service_account("happy-trainer", sft_namespace),
        rbac.read_namespaced_role("happy-trainer", sft_namespace),
        rbac.read_namespaced_role_binding("happy-trainer", sft_namespace),
        *pods(kube_cluster, sft_namespace, "happy"),
    ]
    for child in children:
        (owner,) = child.metadata.owner_references
        assert owner.uid == uid and owner.controller is True
    pod = v1.read_namespaced_pod("happy-node-1", sft_namespace)
    env = {item.name: item.value for item in pod.spec.containers[0].env}
    assert env["NODE_RANK"] == "1" and env["NNODES"] == "2" and env["MASTER_ADDR"] == "happy-node-0.happy"
    assert pod.spec.hostname == "happy-node-1" and pod.spec.subdomain == "happy"
    final = wait_for(lambda: phase_is(kube_cluster, sft_namespace, "happy", "Succeeded"), 60, "Succeeded", operator)
    assert final["restarts"] == 0 and final["completionTime"] and final["observedGeneration"] == 1
    conditions = {condition["type"]: condition["status"] for condition in final["conditions"]}
    assert conditions["Succeeded"] == "True" and conditions["Failed"] == "False"
    wanted = {"Accepted", "Started", "Succeeded"}  # Events are recorded just after the status is written
    wait_for(lambda: wanted <= {reason for reason, _ in events(kube_cluster, sft_namespace, "happy")}, 10, "Events")


def test_any_rank_failing_restarts_the_whole_gang(
    kube_cluster: ControlPlane, operator: Operator, sft_namespace: str
) -> None:
    command = script(
        """
        if ATTEMPT == 0 and RANK == 1:
            time.sleep(1); sys.exit(70)
        time.sleep(30 if ATTEMPT == 0 else 2)
        """
    )
    create(kube_cluster, sft_namespace, sftjob("flaky", command))
    first = wait_for(lambda: {p.metadata.uid for p in pods(kube_cluster, sft_namespace, "flaky")} or None, 30, "pods")
    final = wait_for(lambda: phase_is(kube_cluster, sft_namespace, "flaky", "Succeeded"), 60, "Succeeded", operator)
    assert final["restarts"] == 1 and final["attempt"] == 1
    failure = final["lastFailure"]
    assert failure["exitCode"] == 70 and failure["rank"] == 1 and failure["retryable"] is True
    assert "DISTRIBUTED_TIMEOUT" in failure["message"]
    second = pods(kube_cluster, sft_namespace, "flaky")  # rank 1 may be cleaned up already (cleanPodPolicy)
    assert second and all(p.metadata.labels[f"{GROUP}/attempt"] == "1" for p in second)
    assert not first & {p.metadata.uid for p in second}, "rank 0 must be replaced too (whole-gang restart)"
    reasons = {reason for reason, _ in events(kube_cluster, sft_namespace, "flaky")}
    assert {"PodFailed", "Restarting"} <= reasons


def test_stale_writes_by_pod_name_cannot_hit_the_restarted_gang(
    kube_cluster: ControlPlane, operator: Operator, sft_namespace: str
) -> None:
    """A node agent that writes pods by name (KWOK's delayed stages do: no uid precondition) and acts
    late on the failed attempt's pods must find nothing: a restarted gang never reuses a pod name.
    With one name per rank for every attempt, these writes failed the new gang again (issue 8)."""
    command = script(
        """
        if ATTEMPT == 0 and RANK == 1:
            time.sleep(1); sys.exit(137)
        time.sleep(600)
        """
    )
    create(kube_cluster, sft_namespace, sftjob("renamed", command))
    wait_for(lambda: status(kube_cluster, sft_namespace, "renamed").get("attempt") == 1, 60, "attempt 1", operator)

    def running_gang() -> dict[str, str] | None:
        current = pods(kube_cluster, sft_namespace, "renamed")
        running = len(current) == 2 and all(p.status.phase == "Running" for p in current)
        return {p.metadata.name: p.metadata.uid for p in current} if running else None

    gang = wait_for(running_gang, 30, "the restarted gang running", operator)
    v1 = core(kube_cluster)
    failed = {"status": {"phase": "Failed", "containerStatuses": [
        {"name": "trainer", "image": "x", "imageID": "", "ready": False, "restartCount": 0,
         "state": {"terminated": {"exitCode": 137, "reason": "Error"}}}]}}  # fmt: skip
    stale_writes = (  # the first attempt's pod names, as a node agent remembers them
        lambda: v1.patch_namespaced_pod_status("renamed-node-1", sft_namespace, failed),
        lambda: v1.delete_namespaced_pod("renamed-node-0", sft_namespace, grace_period_seconds=0),
    )
    for write in stale_writes:
        try:
            write()
        except ApiException as error:
            assert error.status == 404  # gone, and the name was not given to the new gang
    settle(3)
    assert {p.metadata.name: p.metadata.uid for p in pods(kube_cluster, sft_namespace, "renamed")} == gang
    current = status(kube_cluster, sft_namespace, "renamed")
    assert current["attempt"] == 1 and current["restarts"] == 1 and current["phase"] in ("Initializing", "Running")
    custom(kube_cluster).delete_namespaced_custom_object(GROUP, VERSION, sft_namespace, PLURAL, "renamed")


def test_permanent_exit_code_fails_without_retry(
    kube_cluster: ControlPlane, operator: Operator, sft_namespace: str
) -> None:
    command = script(
        """
        if RANK == 0:
            path = os.environ["SFT_TERMINATION_MESSAGE_PATH"]
            open(path, "w").write(json.dumps({"outcome": "failed", "message": "data file /data/x.jsonl not found"}))
            sys.exit(11)
        time.sleep(30)
        """
    )
    create(kube_cluster, sft_namespace, sftjob("broken", command))
    final = wait_for(lambda: phase_is(kube_cluster, sft_namespace, "broken", "Failed"), 60, "Failed", operator)
    assert final["restarts"] == 0 and final["lastFailure"]["exitCode"] == 11
    assert "data file /data/x.jsonl not found" in final["lastFailure"]["message"]
    wait_for(lambda: "DATA_ERROR" in " ".join(m for _, m in events(kube_cluster, sft_namespace, "broken")), 10, "Event")
    wait_for(lambda: all(p.metadata.deletion_timestamp or p.status.phase != "Running"
                         for p in pods(kube_cluster, sft_namespace, "broken")), 30, "rank 1 stopped")  # fmt: skip


def test_no_duplicate_pods_after_operator_restart(
    kube_cluster: ControlPlane, operator: Operator, sft_namespace: str
) -> None:
    create(kube_cluster, sft_namespace, sftjob("steady", script("time.sleep(600)")))
    wait_for(lambda: phase_is(kube_cluster, sft_namespace, "steady", "Initializing"), 30, "Initializing", operator)
    before = {p.metadata.name: p.metadata.uid for p in pods(kube_cluster, sft_namespace, "steady")}
    operator.kill()
    operator.start()
    settle(4)
    after = {p.metadata.name: p.metadata.uid for p in pods(kube_cluster, sft_namespace, "steady")}
    assert after == before
    current = status(kube_cluster, sft_namespace, "steady")
    assert current["attempt"] == 0 and current["restarts"] == 0 and current["phase"] == "Initializing"
    custom(kube_cluster).delete_namespaced_custom_object(GROUP, VERSION, sft_namespace, PLURAL, "steady")


def test_suspend_deletes_the_pods_and_resume_starts_a_new_gang(
    kube_cluster: ControlPlane, operator: Operator, sft_namespace: str
) -> None:
    create(kube_cluster, sft_namespace, sftjob("pausable", script("time.sleep(600)")))
    wait_for(lambda: phase_is(kube_cluster, sft_namespace, "pausable", "Initializing"), 30, "Initializing", operator)
    patch = {"spec": {"runPolicy": {"suspend": True}}}
    custom(kube_cluster).patch_namespaced_custom_object(GROUP, VERSION, sft_namespace, PLURAL, "pausable", patch)
    wait_for(lambda: phase_is(kube_cluster, sft_namespace, "pausable", "Suspended"), 30, "Suspended", operator)
    wait_for(lambda: not pods(kube_cluster, sft_namespace, "pausable"), 30, "pods deleted", operator)
    patch = {"spec": {"runPolicy": {"suspend": False}}}
    custom(kube_cluster).patch_namespaced_custom_object(GROUP, VERSION, sft_namespace, PLURAL, "pausable", patch)
    resumed = wait_for(
        lambda: phase_is(kube_cluster, sft_namespace, "pausable", "Initializing"), 30, "resumed", operator
    )
    assert resumed["attempt"] == 1 and resumed["restarts"] == 0
    assert len(pods(kube_cluster, sft_namespace, "pausable")) == 2
    custom(kube_cluster).delete_namespaced_custom_object(GROUP, VERSION, sft_namespace, PLURAL, "pausable")


def test_deadline_fails_the_job(kube_cluster: ControlPlane, operator: Operator, sft_namespace: str) -> None:
    create(
        kube_cluster, sft_namespace, sftjob("late", script("time.sleep(600)"), runPolicy={"activeDeadlineSeconds": 3})
    )
    final = wait_for(lambda: phase_is(kube_cluster, sft_namespace, "late", "Failed"), 40, "Failed", operator)
    assert final["reason"] == "DeadlineExceeded"
    wait_for(lambda: not [p for p in pods(kube_cluster, sft_namespace, "late") if not p.metadata.deletion_timestamp],
             30, "pods deleted")  # fmt: skip


def test_delete_garbage_collects_every_child(
    kube_cluster: ControlPlane, operator: Operator, sft_namespace: str
) -> None:
    create(kube_cluster, sft_namespace, sftjob("doomed", script("time.sleep(600)")))
    wait_for(lambda: len(pods(kube_cluster, sft_namespace, "doomed")) == 2, 30, "pods", operator)
    operator.stop()  # deletion must not need the operator
    try:
        custom(kube_cluster).delete_namespaced_custom_object(GROUP, VERSION, sft_namespace, PLURAL, "doomed")
        wait_for(lambda: not pods(kube_cluster, sft_namespace, "doomed"), 60, "pods garbage-collected")
        v1 = core(kube_cluster)
        wait_for(lambda: not [cm for cm in v1.list_namespaced_config_map(sft_namespace).items
                              if cm.metadata.name == "doomed-config"], 30, "ConfigMap collected")  # fmt: skip
    finally:
        operator.start()


def test_trainer_reporter_patches_only_its_own_jobs_status(
    kube_cluster: ControlPlane, operator: Operator, sft_namespace: str
) -> None:
    command = script(
        """
        from sft_trainer.report.events import StepReport, ValidationReport, CheckpointReport, RunSummary
        from sft_trainer.report.kubernetes import create_reporter
        if RANK != 0:
            time.sleep(4); sys.exit(0)
        reporter = create_reporter(None)
        assert reporter is not None
        for step in range(1, 6):
            reporter.step(StepReport(step=step, total_steps=10, epoch=0, consumed_samples=8 * step, loss=3.0 - step / 10,
                                     lr=1e-4, grad_norm=1.0, tokens=100, tokens_per_s=1000.0, elapsed_s=step,
                                     eta_s=10.0 - step, data_wait_s=0.0, mfu=None))
            time.sleep(0.3)
        reporter.validation(ValidationReport(step=5, val_loss=2.5, best_val_loss=2.5))
        reporter.checkpoint(CheckpointReport(step=5, path="/output/ckpt/step-5", seconds=0.1))
        reporter.finish(RunSummary(outcome="succeeded", step=10, total_steps=10, exit_code=0, message="ok",
                                   last_loss=2.0, best_val_loss=2.5, final_model="/output/final"))
        """
    )
    create(
        kube_cluster,
        sft_namespace,
        sftjob("reporting", command, pod={"env": [{"name": "SFT_STATUS_INTERVAL_SECONDS", "value": "0.5"}]}),
    )
    final = wait_for(lambda: phase_is(kube_cluster, sft_namespace, "reporting", "Succeeded"), 60, "Succeeded", operator)
    assert final["finalModel"] == "/output/final"
    assert final["progress"]["step"] == 10 and final["progress"]["percent"] == 100.0
    assert final["metrics"]["valLoss"] == 2.5 and final["latestCheckpoint"]["step"] == 5
    rank0 = core(kube_cluster).read_namespaced_pod("reporting-node-0", sft_namespace)
    message = rank0.status.container_statuses[0].state.terminated.message
    assert json.loads(message)["final_model"] == "/output/final"
    # The per-job ServiceAccount may patch this job's status, and nothing else.
    trainer = kube_cluster.api_client(kube_cluster.service_account_kubeconfig(sft_namespace, "reporting-trainer"))
    as_trainer = kubernetes.client.CustomObjectsApi(trainer)
    as_trainer.patch_namespaced_custom_object_status(
        GROUP, VERSION, sft_namespace, PLURAL, "reporting", {"status": {"metrics": {"mfu": 0.5}}}
    )
    create(kube_cluster, sft_namespace, sftjob("neighbour", ["true"], runPolicy={"suspend": True}))
    denied = [
        lambda: as_trainer.patch_namespaced_custom_object_status(
            GROUP, VERSION, sft_namespace, PLURAL, "neighbour", {"status": {}}
        ),
        lambda: as_trainer.patch_namespaced_custom_object(
            GROUP, VERSION, sft_namespace, PLURAL, "reporting", {"spec": {}}
        ),
        lambda: kubernetes.client.CoreV1Api(trainer).list_namespaced_secret(sft_namespace),
        lambda: kubernetes.client.CoreV1Api(trainer).list_namespaced_pod(sft_namespace),
    ]
    for call in denied:
        with pytest.raises(ApiException) as error:
            call()
        assert error.value.status == 403


def test_operator_metrics_count_jobs(kube_cluster: ControlPlane, operator: Operator, sft_namespace: str) -> None:
    settle(2)
    text = operator.metrics()
    assert 'kube_sft_jobs{phase="Succeeded"}' in text
    assert "kube_sft_reconcile_duration_seconds_count" in text
    assert "kube_sft_operator_leader 1.0" in text


def test_image_change_restarts_the_gang_without_counting_a_failure(
    kube_cluster: ControlPlane, operator: Operator, sft_namespace: str
) -> None:
    create(kube_cluster, sft_namespace, sftjob("rolling", script("time.sleep(600)")))
    wait_for(lambda: phase_is(kube_cluster, sft_namespace, "rolling", "Initializing"), 30, "Initializing", operator)
    patch = {"spec": {"image": "registry.local/trainer:2"}}
    custom(kube_cluster).patch_namespaced_custom_object(GROUP, VERSION, sft_namespace, PLURAL, "rolling", patch)

    def restarted() -> bool:
        current = status(kube_cluster, sft_namespace, "rolling")
        images = {p.spec.containers[0].image for p in pods(kube_cluster, sft_namespace, "rolling")}
        return current.get("attempt") == 1 and images == {"registry.local/trainer:2"}

    wait_for(restarted, 40, "a new gang with the new image", operator)
    assert status(kube_cluster, sft_namespace, "rolling")["restarts"] == 0
    assert "SpecChanged" in {reason for reason, _ in events(kube_cluster, sft_namespace, "rolling")}
    custom(kube_cluster).delete_namespaced_custom_object(GROUP, VERSION, sft_namespace, PLURAL, "rolling")


def test_ttl_deletes_the_finished_job(kube_cluster: ControlPlane, operator: Operator, sft_namespace: str) -> None:
    create(
        kube_cluster, sft_namespace, sftjob("shortlived", ["true"], nodes=1, runPolicy={"ttlSecondsAfterFinished": 2})
    )

    def gone() -> bool:
        try:
            get(kube_cluster, sft_namespace, "shortlived")
        except ApiException as error:
            return error.status == 404
        return False

    wait_for(gone, 40, "the job deleted by its TTL", operator)
    wait_for(lambda: not pods(kube_cluster, sft_namespace, "shortlived"), 60, "its pod garbage-collected")
    settle(2)
    assert not pods(kube_cluster, sft_namespace, "shortlived"), "nothing is recreated after the TTL"


def test_stalled_trainer_and_unschedulable_pods_are_acted_on(
    kube_cluster: ControlPlane, operator: Operator, sft_namespace: str
) -> None:
    no_restarts = {"backoffLimit": 0, "stallTimeoutSeconds": 10, "pendingTimeoutSeconds": 10}
    create(kube_cluster, sft_namespace, sftjob("silent", script("time.sleep(600)"), runPolicy=no_restarts))
    create(
        kube_cluster,
        sft_namespace,
        sftjob("homeless", ["true"], runPolicy=no_restarts, pod={"nodeSelector": {"pool": "does-not-exist"}}),
    )
    silent = wait_for(lambda: phase_is(kube_cluster, sft_namespace, "silent", "Failed"), 60, "stall detected", operator)
    assert silent["reason"] == "BackoffLimitExceeded" and "no progress report" in silent["lastFailure"]["message"]
    homeless = wait_for(lambda: phase_is(kube_cluster, sft_namespace, "homeless", "Failed"), 60, "pending timeout")
    assert "still Pending after 10s" in homeless["lastFailure"]["message"]
    wait_for(lambda: not [p for p in pods(kube_cluster, sft_namespace, "silent") if not p.metadata.deletion_timestamp],
             30, "the stalled gang deleted")  # fmt: skip
