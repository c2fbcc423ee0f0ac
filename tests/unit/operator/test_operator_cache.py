"""The operator's store (slim records, newest resourceVersion wins) and its de-duplicating work queue."""

import threading
from typing import Any

from sft_operator import render
from sft_operator.api import SFTJob
from sft_operator.cache import Store, is_newer, slim_job
from sft_operator.children import creation_waves
from sft_operator.pods import missing_ranks
from sft_operator.policy import PodView
from sft_operator.render import LABEL_ATTEMPT, LABEL_JOB, LABEL_RANK
from sft_operator.workqueue import WorkQueue
from tests.builders import manifest

KEY = ("team", "demo")


def job(version: str, phase: str | None = None, uid: str = "u1") -> dict:
    raw = manifest()
    raw["metadata"].update(
        namespace="team",
        name="demo",
        uid=uid,
        resourceVersion=version,
        managedFields=[{"manager": "kubectl"}],
        annotations={"kubectl.kubernetes.io/last-applied-configuration": "{...}", "keep": "me"},
    )
    raw["status"] = {"phase": phase} if phase else {}
    return raw


def pod(
    name: str, version: str, uid: str, phase: str = "Pending", rank: int = 0, attempt: int = 0, owner: str | None = "u1"
) -> dict:
    labels = {LABEL_JOB: "demo", LABEL_RANK: str(rank), LABEL_ATTEMPT: str(attempt)}
    meta: dict[str, Any] = {"name": name, "namespace": "team", "uid": uid, "resourceVersion": version, "labels": labels}
    if owner is not None:
        meta["ownerReferences"] = [{"kind": "SFTJob", "name": "demo", "uid": owner, "controller": True}]
    return {"metadata": meta, "spec": {}, "status": {"phase": phase}}


def stored(*pods: dict) -> Store:
    """A store holding the job (uid u1) and these pods."""
    store = Store()
    store.put_job(job("1"))
    for item in pods:
        store.put_pod(item)
    return store


def test_versions_compare_as_numbers_and_unknown_ones_always_win() -> None:
    assert is_newer(10, 9) and not is_newer(9, 10) and not is_newer(9, 9)
    assert is_newer(None, 9) and is_newer(9, None)


def test_slim_job_keeps_what_the_operator_reads() -> None:
    slim = slim_job(job("5"))
    assert "managedFields" not in slim["metadata"]
    assert slim["metadata"]["annotations"] == {"keep": "me"}
    assert slim["spec"] == manifest()["spec"] and slim["metadata"]["resourceVersion"] == "5"


def test_an_older_job_never_replaces_a_newer_one() -> None:
    store = Store()
    assert store.put_job(job("10", "Pending"))
    assert not store.put_job(job("9"))  # a late watch event, older than our own write
    assert not store.put_job(job("10", "Pending"))  # the echo of our own write
    assert store.put_job(job("11", "Running"))
    record = store.job(KEY)
    assert record is not None and record.raw["status"]["phase"] == "Running"
    assert record.validated().metadata.name == "demo"


def test_pods_follow_the_newest_version_and_deleted_ones_stay_deleted() -> None:
    store = stored()
    assert store.put_pod(pod("demo-node-0", "5", "p0")) == KEY
    assert store.put_pod(pod("demo-node-0", "4", "p0", "Running")) is None
    assert store.put_pod(pod("demo-node-0", "6", "p0", "Running")) == KEY
    assert [view.phase for view in store.pods(KEY)] == ["Running"]
    store.mark_deleting(KEY, "demo-node-0", "p0")
    assert store.pods(KEY)[0].deleting
    assert store.drop_pod(pod("demo-node-0", "7", "p0")) == KEY
    assert store.pods(KEY) == []
    assert store.put_pod(pod("demo-node-0", "5", "p0")) is None  # a create response arriving late
    assert store.put_pod(pod("demo-node-0", "8", "p1")) == KEY  # the next attempt's pod, same name


def test_a_late_event_of_a_same_named_earlier_pod_does_not_replace_the_new_one() -> None:
    store = stored()
    assert store.put_pod(pod("demo-node-0", "20", "new", "Running")) == KEY  # our create response
    assert store.put_pod(pod("demo-node-0", "12", "old", "Failed")) is None  # a late watch event
    [view] = store.pods(KEY)
    assert view.uid == "new" and view.phase == "Running"


def test_a_new_job_with_an_old_name_does_not_inherit_its_pods() -> None:
    store = Store()
    store.put_job(job("1", uid="old"))
    store.put_pod(pod("demo-node-0", "2", "p0"))
    store.put_job(job("3", uid="new"))
    assert store.pods(KEY) == []
    assert [view.name for view in store.foreign(KEY)] == ["demo-node-0"]  # known, never counted as its own
    assert not store.had_pods(KEY, 0)


def test_pods_are_the_jobs_by_owner_uid_never_by_labels_alone() -> None:
    store = stored(
        pod("demo-node-0", "2", "p0"),
        pod("demo-node-1", "3", "p1", rank=1),
        pod("impostor", "4", "x1", rank=1, owner=None),  # the job's labels, no owner
        pod("other", "5", "x2", rank=0, owner="someone-else"),
        pod("forged", "6", "x3", rank=1, owner="u1"),  # an owner reference anyone may write: not its name
    )
    assert [view.name for view in store.pods(KEY)] == ["demo-node-0", "demo-node-1"]
    assert [view.name for view in store.foreign(KEY)] == ["forged", "impostor", "other"]
    assert store.had_pods(KEY, 0) and not store.had_pods(KEY, 1)
    store.drop_pod(pod("demo-node-0", "7", "p0"))
    store.drop_pod(pod("demo-node-1", "8", "p1", rank=1))
    assert store.pods(KEY) == [] and store.had_pods(KEY, 0)  # the attempt had pods: a gang with none left is broken


def test_a_full_list_drops_what_a_watch_gap_hid_but_keeps_newer_writes() -> None:
    store = Store()
    store.put_job(job("5"))
    other = job("6")
    other["metadata"]["name"] = "other"
    store.put_job(other)
    store.put_pod(pod("demo-node-0", "7", "p0"))
    store.put_pod(pod("demo-node-1", "12", "p1", rank=1))  # created after the lists were taken
    assert store.replace_jobs([([], 10), ([job("5")], 10)]) == []  # two pages of one list
    assert store.job_keys() == [KEY]
    assert store.replace_pods([([], 10)]) == {KEY}
    assert [view.name for view in store.pods(KEY)] == ["demo-node-1"]


def test_a_list_of_unknown_version_drops_nothing() -> None:
    store = Store()
    store.put_job(job("5"))
    assert store.replace_jobs([([], 10), ([], None)]) == []
    assert store.job_keys() == [KEY]


def test_missing_ranks_ignore_other_attempts_and_deleting_pods() -> None:
    pods = [
        PodView("a", "1", rank=0, attempt=1),
        PodView("b", "2", rank=1, attempt=0),
        PodView("c", "3", rank=2, attempt=1, deleting=True),
    ]
    assert missing_ranks(pods, attempt=1, num_nodes=3) == [1, 2]


def test_work_queue_coalesces_and_never_hands_one_key_to_two_workers() -> None:
    queue: WorkQueue[str] = WorkQueue()
    for key in ("a", "b", "a", "a"):
        queue.add(key)
    assert len(queue) == 2
    first = queue.get(0)
    assert first == "a"
    queue.add("a")  # marked while busy: not handed out again until done
    assert queue.get(0) == "b"
    assert queue.get(0) is None
    queue.done("a")
    assert queue.get(0) == "a"


def test_work_queue_close_wakes_workers() -> None:
    queue: WorkQueue[str] = WorkQueue()
    results: list[str | None] = []
    worker = threading.Thread(target=lambda: results.append(queue.get()))
    worker.start()
    queue.close()
    worker.join(5)
    assert results == [None]


def test_creation_waves_put_roles_before_bindings_and_service_accounts_before_pods() -> None:
    job = SFTJob.model_validate(manifest())
    first, second = creation_waves(render.supporting_objects(job) + render.pods(job))
    assert {obj["kind"] for obj in first} == {"ServiceAccount", "Role", "ConfigMap", "Service"}
    assert {obj["kind"] for obj in second} == {"RoleBinding", "Pod"}
    assert creation_waves(render.pods(job)) == [render.pods(job)]


def test_work_queue_delays_keys_and_an_earlier_add_wins() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add_after("slow", 0.2)
    assert queue.get(0.05) is None
    assert queue.get(1.0) == "slow"
    queue.done("slow")
    queue.add_after("x", 30)
    queue.add("x")
    assert queue.get(0) == "x"
