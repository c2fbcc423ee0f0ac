"""The controller: its pure helpers (status merge patch, peering rule) and the order of a new gang's writes."""

import copy
import threading
import time
from typing import Any

import pytest
import urllib3

from sft_operator import render
from sft_operator.api import Metrics, Progress, SFTJob, SFTJobStatus
from sft_operator.children import Supporting, pod_waves
from sft_operator.controller import Controller, Settings, needs_resync, status_patch
from sft_operator.pods import pod_view
from sft_operator.policy import gang_breach
from sft_operator.status import Event
from tests.builders import NOW, manifest


def test_first_patch_writes_defaults_and_later_only_changes() -> None:
    new = SFTJobStatus(phase="Pending", restarts=0, attempt=0)
    first = status_patch({}, SFTJobStatus(), new)
    assert first["restarts"] == 0 and first["phase"] == "Pending"
    assert status_patch(new.wire(), new, new) == {}


def test_trainer_fields_are_left_alone_unless_the_operator_changed_them() -> None:
    old = SFTJobStatus(phase="Running", progress=Progress(step=5), metrics=Metrics(loss=2.0))  # an older read
    stored = {**old.wire(), "progress": {"step": 9}, "metrics": {"loss": 1.0}}  # the trainer patched since
    assert status_patch(stored, old, old.model_copy(update={"phase": "Restarting"})) == {"phase": "Restarting"}
    final = old.model_copy(update={"final_model": "/out/final"})
    assert status_patch(stored, old, final)["finalModel"] == "/out/final"


def test_removed_operator_keys_become_null() -> None:
    stored = {"phase": "Restarting", "nextAttemptTime": "2026-01-01T12:00:00Z"}
    new = SFTJobStatus(phase="Pending")
    assert status_patch(stored, SFTJobStatus(phase="Restarting"), new)["nextAttemptTime"] is None


def test_resync_skips_long_finished_jobs_without_ttl() -> None:
    done = {"status": {"phase": "Succeeded", "completionTime": "2026-01-01T11:00:00Z"}, "spec": {}}
    assert not needs_resync(done, NOW)
    assert needs_resync({**done, "spec": {"runPolicy": {"ttlSecondsAfterFinished": 60}}}, NOW)
    recent = {"status": {"phase": "Failed", "completionTime": "2026-01-01T11:58:00Z"}, "spec": {}}
    assert needs_resync(recent, NOW)
    assert needs_resync({"status": {"phase": "Running"}}, NOW)
    assert needs_resync({}, NOW)


# --- the write order of a new gang (a Kube that records its calls) ----------------------------------------


class RecordingKube:
    """The calls a reconcile makes, with start and end times; writes answer what the API server would."""

    def __init__(self, patch_seconds: float = 0.1) -> None:
        self.patch_seconds = patch_seconds
        self.calls: list[tuple[str, str, float, float]] = []  # (verb, what, start, end)
        self.lock = threading.Lock()
        self.version = 100

    def _record(self, verb: str, what: str, start: float) -> int:
        with self.lock:
            self.calls.append((verb, what, start, time.monotonic()))
            self.version += 1
            return self.version

    def patch_job_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        start = time.monotonic()
        time.sleep(self.patch_seconds)
        written = manifest()
        written["status"] = patch
        written["metadata"]["resourceVersion"] = str(self._record("patch", "status", start))
        return written

    def patch_job_metadata(self, namespace: str, name: str, metadata: dict[str, Any]) -> dict[str, Any]:
        start = time.monotonic()
        written = manifest()
        written["metadata"]["annotations"] = metadata["annotations"]
        written["metadata"]["resourceVersion"] = str(self._record("patch", "lifecycle", start))
        return written

    def create(self, obj: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
        start = time.monotonic()
        created = copy.deepcopy(obj)
        version = self._record("create", f"{obj['kind']}/{obj['metadata']['name']}", start)
        created["metadata"].update(uid=f"uid-{version}", resourceVersion=str(version))
        return created

    def record_event(self, raw: dict[str, Any], event: Event) -> None:
        self._record("event", event.reason, time.monotonic())

    def started(self, what: str) -> float:
        return next(start for _, name, start, _ in self.calls if name == what)

    def ended(self, what: str) -> float:
        return next(end for _, name, _, end in self.calls if name == what)


def test_a_new_gang_is_written_status_first_with_its_supporting_objects_alongside() -> None:
    kube = RecordingKube()
    controller = Controller(kube, Settings())  # type: ignore[arg-type]
    controller.store.put_job({**manifest(), "metadata": {**manifest()["metadata"], "resourceVersion": "1"}})
    controller.synced.set()
    controller.reconcile(("team-a", "demo"))
    controller.recorder.shutdown(wait=True)  # the Events are recorded off the worker
    created = [what for verb, what, _, _ in kube.calls if verb == "create"]
    assert sorted(created) == sorted(
        ["ServiceAccount/demo-trainer", "Role/demo-trainer", "RoleBinding/demo-trainer", "ConfigMap/demo-config",
         "Service/demo", "Pod/demo-node-0", "Pod/demo-node-1"]
    )  # fmt: skip
    status_written = kube.ended("status")
    assert kube.ended("lifecycle") <= kube.started("status")  # the operator's own record first, then its mirror
    assert kube.started("ServiceAccount/demo-trainer") < status_written  # not waiting for the status write
    for pod in ("Pod/demo-node-0", "Pod/demo-node-1"):  # crash-safe: the attempt is recorded before its pods
        assert kube.started(pod) >= status_written and kube.started(pod) >= kube.ended("ServiceAccount/demo-trainer")
        assert kube.started(pod) >= kube.ended("RoleBinding/demo-trainer")
    assert kube.started("RoleBinding/demo-trainer") >= kube.ended("Role/demo-trainer")
    assert [what for verb, what, _, _ in kube.calls if verb == "event"] == ["Accepted", "Started"]
    assert {view.name for view in controller.store.pods(("team-a", "demo"))} == {"demo-node-0", "demo-node-1"}
    controller.stop()


def test_a_restarted_gang_creates_rank_0_first() -> None:
    """Attempt 0's pods are named by their hostnames; a restarted gang's are not, so its rank 0 (the
    rendezvous host) exists before any other rank starts."""
    job = SFTJob.model_validate(manifest(resources={"numNodes": 4, "gpusPerNode": 1}))
    names = [[obj["metadata"]["name"] for obj in wave] for wave in pod_waves([], render.pods(job), 0)]
    assert names == [["demo-node-0", "demo-node-1", "demo-node-2", "demo-node-3"]]
    restarted = job.model_copy(update={"status": job.status.model_copy(update={"attempt": 2})})
    names = [[obj["metadata"]["name"] for obj in wave] for wave in pod_waves([], render.pods(restarted), 2)]
    assert names == [["demo-node-0-a2"], ["demo-node-1-a2", "demo-node-2-a2", "demo-node-3-a2"]]
    missing_rank0 = render.pods(restarted)[1:]  # a crash left rank 0 created: the rest in one wave
    assert len(pod_waves([], missing_rank0, 2)) == 1


class OldChildrenKube(RecordingKube):
    """A job re-created under a deleted job's name: the old ConfigMap is still there (owned by the old uid)
    until `collected`, and the old rank 1 pod holds its name."""

    def __init__(self) -> None:
        super().__init__(patch_seconds=0.0)
        self.collected = False

    def create(self, obj: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
        if obj["kind"] == "ConfigMap" and not self.collected:
            old = copy.deepcopy(obj)
            old["metadata"]["ownerReferences"] = [{**obj["metadata"]["ownerReferences"][0], "uid": "old-uid"}]
            return old  # what kube.create returns for a 409: the existing object, read back
        return super().create(obj, dry_run)


def test_children_of_another_owner_are_never_taken_as_the_jobs_own() -> None:
    kube = OldChildrenKube()
    controller = Controller(kube, Settings())  # type: ignore[arg-type]
    controller.store.put_job({**manifest(), "metadata": {**manifest()["metadata"], "resourceVersion": "1"}})
    controller.synced.set()
    key = ("team-a", "demo")
    controller.reconcile(key)
    assert not [what for verb, what, _, _ in kube.calls if what.startswith("Pod/")], "no pod before the ConfigMap"
    assert controller.queue.get(timeout=3) == key  # it looks again soon
    controller.queue.done(key)
    controller.reconcile(key)
    record = controller.store.job(key)
    assert record is not None and record.raw["status"]["reason"] == "WaitingForOldChildren"
    assert "ConfigMap/demo-config" in record.raw["status"]["message"]
    kube.collected = True  # garbage collection removed the old ConfigMap: the job creates its own
    impostor = render.pod(SFTJob.model_validate(manifest()), 1)
    impostor["metadata"].update(uid="x", resourceVersion="5", ownerReferences=[])
    controller.store.put_pod(impostor)  # a pod with the job's labels and rank-1 name, owned by nobody
    controller.reconcile(key)
    created = [what for verb, what, _, _ in kube.calls if verb == "create" and what.startswith("Pod/")]
    assert created == [], "the rank-1 name is held by a pod that is not the job's: no partial gang"
    impostor["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    controller.store.drop_pod(impostor)
    controller.reconcile(key)
    created = [what for verb, what, _, _ in kube.calls if verb == "create" and what.startswith("Pod/")]
    assert sorted(created) == ["Pod/demo-node-0", "Pod/demo-node-1"]
    controller.recorder.shutdown(wait=True)
    reasons = [what for verb, what, _, _ in kube.calls if verb == "event"]
    assert "WaitingForOldChildren" in reasons and "ForeignPod" in reasons
    controller.stop()


class LostResponseKube(RecordingKube):
    """The API server stores rank 1's pod, then the connection drops before the answer (a restart)."""

    def __init__(self, stored: bool = True) -> None:
        super().__init__(patch_seconds=0.0)
        self.stored = stored  # False: the connection dropped before the API server stored the pod
        self.pods: dict[str, dict[str, Any]] = {}
        self.deleted: list[str] = []
        self.lost = False

    def create(self, obj: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
        lose = obj["kind"] == "Pod" and obj["metadata"]["name"] == "demo-node-1" and not self.lost
        if lose and not self.stored:
            self.lost = True
            raise urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset"))
        created = super().create(obj, dry_run)
        if obj["kind"] == "Pod":
            self.pods[obj["metadata"]["name"]] = created
        if lose:
            self.lost = True
            raise urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset"))
        return created

    def find_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.pods.get(name)

    def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        self.deleted.append(name)


@pytest.mark.parametrize("stored", [True, False], ids=["created-answer-lost", "never-created"])
def test_a_pod_whose_create_had_no_answer_is_read_back_before_the_next_decision(stored: bool) -> None:
    """A lost create response must not make the gang look broken: deciding from a store without rank 1
    restarted the gang and created attempt 1 beside the unseen attempt-0 pod (the soak's overlap).
    Read back absent, rank 1 was never created: the attempt's creates are finished (a gang of fewer
    pods than nodes was torn down before)."""
    kube = LostResponseKube(stored)
    controller = Controller(kube, Settings())  # type: ignore[arg-type]
    controller.store.put_job({**manifest(), "metadata": {**manifest()["metadata"], "resourceVersion": "1"}})
    controller.synced.set()
    key = ("team-a", "demo")
    controller.reconcile(key)  # rank 1's answer is lost: no error, the job is looked at again soon
    assert controller.queue.get(timeout=3) == key
    controller.queue.done(key)
    controller.reconcile(key)
    assert {view.name for view in controller.store.pods(key)} == {"demo-node-0", "demo-node-1"}
    assert kube.deleted == [], "the gang is whole: nothing to tear down"
    created = [what for verb, what, _, _ in kube.calls if verb == "create" and what.startswith("Pod/")]
    assert sorted(created) == ["Pod/demo-node-0", "Pod/demo-node-1"], "no second attempt beside the first"
    record = controller.store.job(key)
    assert record is not None and record.raw["status"].get("restarts", 0) == 0
    controller.stop()


def test_a_rank_never_created_is_not_missing_but_one_seen_is() -> None:
    job = SFTJob.model_validate(manifest())
    rank0 = pod_view({**render.pod(job, 0), "status": {"phase": "Running"}})
    assert gang_breach([rank0], 0, 2, True, NOW, uncreated=frozenset({1})) is None
    assert gang_breach([rank0], 0, 2, True, NOW) is not None  # rank 1 gone unseen: broken
    deleting = pod_view(
        {**render.pod(job, 1), "metadata": {**render.pod(job, 1)["metadata"], "deletionTimestamp": "x"}}
    )
    failure = gang_breach([rank0, deleting], 0, 2, True, NOW, uncreated=frozenset({1}))
    assert failure is not None and failure.rank == 1  # a rank seen being deleted was created: the gang is broken


def test_a_pod_name_ever_stored_is_never_created_again() -> None:
    """The store may drop a pod (its DELETED event) between a decision to create the gang's missing
    ranks and the creates: the rank it had is not re-created (short soak seed 11: rank 0 of attempt 2
    created twice); the job is queued for a new decision."""
    kube = RecordingKube(patch_seconds=0.0)
    controller = Controller(kube, Settings())  # type: ignore[arg-type]
    raw = {**manifest(), "metadata": {**manifest()["metadata"], "resourceVersion": "1", "uid": "job-uid"}}
    controller.store.put_job(raw)
    key = ("team-a", "demo")
    job = SFTJob.model_validate(raw)
    controller.gang.supported[key] = "job-uid"
    rank0 = render.pod(job, 0)
    rank0["metadata"].update(uid="p0", resourceVersion="2")
    controller.store.put_pod(rank0)
    controller.store.drop_pod(rank0)
    controller.gang.create(job, Supporting())
    created = [what for verb, what, _, _ in kube.calls if verb == "create"]
    assert created == ["Pod/demo-node-1"]
    assert controller.queue.get(timeout=3) == key
    controller.stop()
