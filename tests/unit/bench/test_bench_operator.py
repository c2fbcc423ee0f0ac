"""Pure parts of the operator benchmark (bench/operator_scale/, bench/bench_operator.py): percentiles, parsing, the job tracker, result assembly, goals."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.bench_operator import floor_scale, parse_args, scale_from
from bench.operator_scale.cluster import STAGES_FILE, audit_policy, fake_node, node_ready, write_stages
from bench.operator_scale.flavours import FAIL_ANNOTATION, FLOOR, PEER, SFT
from bench.operator_scale.floor import floor_pod
from bench.operator_scale.goals import evaluate_goals
from bench.operator_scale.readings import (
    audit_counts,
    counter_diff,
    counter_samples,
    cpu_seconds,
    misdirected_writes,
    parse_labels,
    peak_rss_bytes,
    pod_writes,
    request_counts,
)
from bench.operator_scale.run import QUICK, Scale
from bench.operator_scale.stats import injection_times, load_summary, percentile, ratio, steady_times, summarize
from bench.operator_scale.tracker import Tracker, correctness, latencies

# ----- statistics --------------------------------------------------------------------------------


def test_percentile_interpolates_like_numpy() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 50) == 2.5
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile([5.0], 99) == 5.0
    assert percentile([], 50) is None


def test_percentile_ignores_input_order() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0


def test_summarize() -> None:
    assert summarize([1.0, 2.0, 3.0]) == {"n": 3, "p50": 2.0, "p99": 2.98, "max": 3.0, "mean": 2.0}
    assert summarize([]) == {"n": 0, "p50": None, "p99": None, "max": None, "mean": None}


def test_ratio_and_load_summary() -> None:
    assert ratio(3, 2) == 1.5
    assert ratio(None, 2) is None
    assert ratio(3, 0) is None
    assert load_summary([1.0, 3.0]) == {"samples": 2, "min": 1.0, "mean": 2.0, "max": 3.0}
    assert load_summary([])["mean"] is None


# ----- load shape ---------------------------------------------------------------------------------


def test_steady_times_and_injection_times() -> None:
    assert steady_times(10.0, 100, 5)[:3] == [10.0, 10.6, 11.2]
    assert len(steady_times(0.0, 100, 5)) == 500
    assert injection_times(0.0, 300.0, 50)[0] == 3.0
    assert injection_times(0.0, 300.0, 50)[-1] == 297.0
    assert injection_times(0.0, 60.0, 0) == []


def test_scale_presets_and_flags() -> None:
    assert scale_from(parse_args([])) == Scale()
    assert Scale().jobs == 500 and Scale().steady_per_minute == 100 and Scale().steady_minutes == 5
    assert Scale().nodes == 200 and Scale().failures == 50 and Scale().nodes_per_job == 2
    assert scale_from(parse_args(["--quick"])) == QUICK
    custom = scale_from(parse_args(["--quick", "--jobs", "7", "--steady-minutes", "2"]))
    assert (custom.jobs, custom.steady_minutes, custom.nodes) == (7, 2, QUICK.nodes)
    assert parse_args(["--only", "sft,floor"]).only == ["sft", "floor"]
    burst = floor_scale(Scale())
    assert (burst.jobs, burst.steady_minutes, burst.failures, burst.nodes) == (500, 0, 0, 200)


# ----- parsing ------------------------------------------------------------------------------------

METRICS = """# HELP apiserver_request_total [STABLE] Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="201",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="",verb="POST",version="v1"} 10
apiserver_request_total{code="201",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="binding",verb="POST",version="v1"} 4
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="pods",scope="namespace",subresource="",verb="LIST",version="v1"} 2
apiserver_request_total{code="409",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="",verb="POST",version="v1"} 1
apiserver_request_total_other 99
apiserver_request_duration_seconds_count{verb="GET"} 5
"""


def test_parse_labels_handles_escapes() -> None:
    assert parse_labels('a="x",b="say \\"hi\\"", c=""') == {"a": "x", "b": 'say "hi"', "c": ""}


def test_counter_samples_and_request_counts() -> None:
    assert len(counter_samples(METRICS, "apiserver_request_total")) == 4
    counts = request_counts(METRICS)
    assert counts == {"POST pods": 11, "POST pods/binding": 4, "LIST pods": 2}


def test_counter_diff_keeps_increases() -> None:
    before = request_counts(METRICS)
    after = request_counts(METRICS.replace("} 10\n", "} 15\n"))
    assert counter_diff(after, before) == {"POST pods": 5}


def audit_line(user: str, verb: str, resource: str, stamp: datetime, subresource: str = "") -> str:
    ref = {"resource": resource, **({"subresource": subresource} if subresource else {})}
    return json.dumps(
        {
            "user": {"username": user},
            "verb": verb,
            "objectRef": ref,
            "stageTimestamp": stamp.isoformat().replace("+00:00", "Z"),
            "requestURI": f"/api/v1/{resource}",
        }
    )


def test_audit_counts_filters_user_and_window() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    lines = [
        audit_line("op", "create", "pods", t0 + timedelta(seconds=1)),
        audit_line("op", "patch", "sftjobs", t0 + timedelta(seconds=2), "status"),
        audit_line("op", "create", "pods", t0 + timedelta(seconds=99)),  # after the window
        audit_line("other", "create", "pods", t0 + timedelta(seconds=1)),
        audit_line("op-not-really", "create", "pods", t0 + timedelta(seconds=1)),
    ]
    counts = audit_counts(lines, "op", t0, t0 + timedelta(seconds=10))
    assert counts == {"create pods": 1, "patch sftjobs/status": 1}


def test_audit_policy_traces_pod_writes_only_when_asked() -> None:
    plain, traced = audit_policy(), audit_policy(trace_pods=True)
    assert [rule["level"] for rule in plain["rules"]] == ["Metadata", "None"]
    assert [rule["level"] for rule in traced["rules"]] == ["RequestResponse", "Metadata", "None"]
    assert traced["rules"][0]["resources"] == [{"group": "", "resources": ["pods", "pods/status"]}]


def pod_write(agent: str, verb: str, name: str, uid: str | None, code: int = 200, **extra: Any) -> str:
    """An audit line of a pod write with bodies (--trace-pods); `phase` goes into a status patch."""
    phase, annotations = extra.get("phase"), extra.get("annotations", {})
    landed = {"kind": "Pod", "metadata": {"name": name, "uid": uid, "annotations": annotations}} if uid else {}
    return json.dumps(
        {
            "verb": verb,
            "userAgent": f"{agent}/v1 (linux/amd64)",
            "objectRef": {"resource": "pods", "namespace": "ns", "name": name, "subresource": extra.get("sub", "")},
            "requestReceivedTimestamp": extra["at"],
            "stageTimestamp": "t99",  # completion order is not request order
            "responseStatus": {"code": code},
            "requestObject": {"status": {"phase": phase}} if phase else {},
            "responseObject": landed,
        }
    )


def test_misdirected_node_agent_writes_are_the_ones_that_hit_a_newer_same_named_pod() -> None:
    """The issue 8 trace: the operator deletes rank 0 (old), KWOK deletes it, the new attempt's pod
    of the same name appears, and a stale KWOK delete by name removes it (new-1)."""
    lines = [
        pod_write("kwok", "patch", "j-node-1", "b", phase="Failed", annotations={FAIL_ANNOTATION: "true"}, at="t01"),
        pod_write("OpenAPI-Generator", "delete", "j-node-0", "old", at="t02"),
        pod_write("kwok", "delete", "j-node-0", "old", at="t03"),
        pod_write("kwok", "delete", "j-node-1", None, code=404, at="t04"),
        pod_write("OpenAPI-Generator", "create", "j-node-0", "new-1", code=201, at="t05"),
        pod_write("kwok", "delete", "j-node-0", "new-1", at="t06"),
        pod_write("kwok", "patch", "j-node-0", "new-2", phase="Failed", sub="status", at="t07"),
    ]
    writes = pod_writes(reversed(lines))  # in time order, whatever the log's order
    assert [write["time"] for write in writes] == [f"t0{n}" for n in range(1, 8)]
    assert writes[3]["uid"] is None and writes[3]["code"] == 404  # a write to a missing pod: harmless
    wrong = misdirected_writes(writes)
    assert [(write["uid"], write["why"]) for write in wrong] == [
        ("new-1", "deleted a pod nobody had deleted"),
        ("new-2", "failed a pod the bench never annotated"),
    ]


def test_floor_pod_is_the_bare_gang_member() -> None:
    job = SFT.manifest("flr-00001", "bench-floor", 2)
    job["metadata"]["uid"] = "u1"
    pod = floor_pod(job, 1)
    assert pod["metadata"]["name"] == "flr-00001-node-1"
    assert FLOOR.pod_key(pod) == ("flr-00001", "1")  # the bench tracks it like kube-sft's
    assert pod["metadata"]["ownerReferences"][0]["uid"] == "u1"
    assert pod["spec"]["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": "8"}}
    assert FLOOR.floor and not SFT.floor and FLOOR.short != SFT.short


def test_proc_parsing() -> None:
    stat = "1234 (python -m x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1 2 3"
    assert cpu_seconds(stat, 100) == 3.0
    assert peak_rss_bytes("Name:\tpython\nVmPeak:\t 9 kB\nVmHWM:\t  2048 kB\nVmRSS:\t 10 kB\n") == 2 * 1024 * 1024
    with pytest.raises(ValueError):
        peak_rss_bytes("Name: x\n")


# ----- KWOK objects -------------------------------------------------------------------------------


def test_fake_node_has_gpus_and_kwok_annotation() -> None:
    node = fake_node("n1")
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"


def test_node_ready_needs_condition_and_no_taints() -> None:
    ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}, "spec": {}}
    assert node_ready(ready)
    tainted = {**ready, "spec": {"taints": [{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}]}}
    assert not node_ready(tainted)
    assert not node_ready({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})


def test_write_stages_sets_the_run_time(tmp_path: Path) -> None:
    documents = list(yaml.safe_load_all(write_stages(tmp_path / "kwok.yaml", 12.5).read_text()))
    stages = {doc["metadata"]["name"]: doc for doc in documents}
    assert stages["pod-complete"]["spec"]["delay"] == {"durationMilliseconds": 12500}
    assert {"node-initialize", "pod-ready", "pod-fail", "pod-complete", "pod-delete"} <= stages.keys()
    assert len(list(yaml.safe_load_all(STAGES_FILE.read_text()))) == len(documents)


# ----- flavours -----------------------------------------------------------------------------------


def sft_pod(job: str, rank: int, attempt: int, uid: str, phase: str = "Pending", fail: bool = False) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"{job}-node-{rank}",
            "uid": uid,
            "labels": {
                SFT.job_label: job,
                "sft.kube-sft.io/node-rank": str(rank),
                "sft.kube-sft.io/attempt": str(attempt),
            },
            "annotations": {FAIL_ANNOTATION: "true"} if fail else {},
        },
        "status": {"phase": phase},
    }


def test_flavour_manifests() -> None:
    sft = SFT.manifest("a", "ns", 2)
    assert sft["spec"]["resources"] == {"numNodes": 2, "gpusPerNode": 8}
    assert sft["spec"]["runPolicy"]["backoffSeconds"] == 0
    peer = PEER.manifest("b", "ns", 2)
    replicas = peer["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 1
    limits = replicas["Worker"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"nvidia.com/gpu": "8"}
    assert replicas["Master"]["restartPolicy"] == "ExitCode"


def test_flavour_phases_and_keys() -> None:
    assert SFT.job_phase({"status": {"phase": "Initializing"}}) == "Initializing"
    conditions = [
        {"type": "Created", "status": "True"},
        {"type": "Running", "status": "False"},
        {"type": "Succeeded", "status": "True"},
    ]
    assert PEER.job_phase({"status": {"conditions": conditions}}) == "Succeeded"
    assert PEER.job_phase({}) is None
    assert SFT.pod_key(sft_pod("j", 1, 0, "u")) == ("j", "1")
    peer_pod = {
        "metadata": {
            "labels": {
                PEER.job_label: "p",
                "training.kubeflow.org/replica-type": "worker",
                "training.kubeflow.org/replica-index": "0",
            }
        }
    }
    assert PEER.pod_key(peer_pod) == ("p", "worker/0")
    assert SFT.pod_key({"metadata": {"labels": {}}}) is None
    assert SFT.replaced_after_failure(2) == 2 and PEER.replaced_after_failure(2) == 1


# ----- tracker ------------------------------------------------------------------------------------


def test_tracker_times_a_job_through_a_failure_and_restart() -> None:
    tracker = Tracker(SFT, 2)
    tracker.applied("j", 0.0)
    tracker.on_job("ADDED", {"metadata": {"name": "j", "uid": "J"}, "status": {}}, 0.1)
    tracker.on_pod("ADDED", sft_pod("j", 0, 0, "a"), 0.5)
    tracker.on_pod("ADDED", sft_pod("j", 1, 0, "b"), 0.7)
    tracker.on_pod("MODIFIED", sft_pod("j", 0, 0, "a", "Running"), 1.0)
    tracker.on_pod("MODIFIED", sft_pod("j", 1, 0, "b", "Running"), 1.1)
    tracker.on_job("MODIFIED", {"metadata": {"name": "j"}, "status": {"phase": "Initializing"}}, 1.2)
    assert tracker.injection_candidate(2.0, 5.0, random.Random(0)) == ("j", "j-node-1")
    assert tracker.injection_candidate(9.0, 5.0, random.Random(0)) is None  # too old: it might finish first
    tracker.mark_injected("j", 2.0)
    assert tracker.injection_candidate(2.0, 5.0, random.Random(0)) is None  # one failure per job
    tracker.on_pod("MODIFIED", sft_pod("j", 1, 0, "b", "Failed", fail=True), 2.5)
    tracker.on_pod("DELETED", sft_pod("j", 0, 0, "a", "Running"), 2.8)
    tracker.on_pod("DELETED", sft_pod("j", 1, 0, "b", "Failed", fail=True), 2.9)
    tracker.on_pod("ADDED", sft_pod("j", 0, 1, "c"), 3.0)
    assert tracker.jobs["j"].recreated is None  # half the gang
    tracker.on_pod("ADDED", sft_pod("j", 1, 1, "d"), 3.5)
    tracker.on_job("MODIFIED", {"metadata": {"name": "j"}, "status": {"phase": "Succeeded"}}, 9.0)
    job = tracker.jobs["j"]
    assert (job.pods_created, job.running, job.failure_seen, job.recreated, job.finished) == (0.7, 1.2, 2.5, 3.5, 9.0)
    assert tracker.unfinished() == []
    assert latencies([job]) == {
        "apply_to_pods_created": [0.7],
        "apply_to_running": [1.2],
        "failure_to_recreated": [1.0],
    }
    check = correctness([job], SFT.replaced_after_failure(2), orphans=0, stray=0)
    assert check["ok"] and check["pods_seen"] == 4 and check["failures_recovered"] == 1


def test_tracker_a_job_seen_only_finished_counts_as_running() -> None:
    tracker = Tracker(SFT, 2)
    tracker.applied("j", 0.0)
    tracker.on_job("MODIFIED", {"metadata": {"name": "j"}, "status": {"phase": "Succeeded"}}, 4.0)
    assert tracker.jobs["j"].running == 4.0


def test_tracker_ignores_pods_of_no_job() -> None:
    tracker = Tracker(SFT, 2)
    tracker.on_pod("ADDED", {"metadata": {"name": "x", "labels": {}}}, 1.0)
    assert tracker.jobs == {} and tracker.stray_pods == {"x"}


def test_correctness_flags_wrong_phase_duplicates_and_orphans() -> None:
    tracker = Tracker(SFT, 2)
    tracker.applied("ok", 0.0)
    tracker.applied("dup", 0.0)
    tracker.applied("lost", 0.0)
    for uid, rank in (("1", 0), ("2", 1)):
        tracker.on_pod("ADDED", sft_pod("ok", rank, 0, uid), 1.0)
    for uid, rank in (("3", 0), ("4", 1), ("5", 1)):
        tracker.on_pod("ADDED", sft_pod("dup", rank, 0, uid), 1.0)
    for name in ("ok", "dup"):
        tracker.on_job("MODIFIED", {"metadata": {"name": name}, "status": {"phase": "Succeeded"}}, 2.0)
    check = correctness(tracker.jobs.values(), 2, orphans=1, stray=0)
    assert not check["ok"]
    assert check["not_succeeded"] == ["lost"]
    assert check["duplicate_or_extra_pods"] == ["dup: 3 pods, expected 2"]
    assert check["orphans"] == 1 and check["phases"] == {"Succeeded": 2, "None": 1}


# ----- goals --------------------------------------------------------------------------------------


def run_result(p99: float, rss: float, per_job: float, ok: bool = True) -> dict[str, Any]:
    return {
        "latency": {"apply_to_pods_created": {"p99": p99}},
        "process": {"peak_rss_mb": rss},
        "api_requests": {"operator_per_job": per_job},
        "correctness": {"ok": ok, "jobs": 3},
    }


def test_goals_met_and_missed() -> None:
    goals = evaluate_goals(run_result(1.5, 120, 30), run_result(4.0, 50, 25))
    assert goals["p99_apply_to_pods_created_under_2s"]["met"] is True
    assert goals["p99_apply_to_pods_created_under_peer"]["met"] is True
    assert goals["peak_rss_under_300mb"]["met"] is True
    assert goals["api_requests_per_job_within_1_5x_peer"] == {"value": 30, "peer": 25, "ratio": 1.2, "met": True}
    assert goals["nothing_lost"] == {"met": True, "detail": {"jobs": 3}}
    missed = evaluate_goals(run_result(2.5, 400, 60, ok=False), run_result(2.0, 50, 25))
    assert not any(missed[name]["met"] for name in missed if name != "nothing_lost_peer")


def test_goals_show_the_floor_beside_the_burst() -> None:
    ours, floor = run_result(9.0, 100, 10), run_result(5.0, 50, 2)
    ours["latency_by_wave"] = {"burst": {"apply_to_pods_created": {"p99": 9.0}}}
    floor["latency_by_wave"] = {"burst": {"apply_to_pods_created": {"p99": 5.0}}}
    burst = evaluate_goals(ours, None, floor)["p99_apply_to_pods_created_burst_under_2s"]
    assert burst == {"value": 9.0, "floor": 5.0, "peer": None, "target": 2.0, "met": False}


def test_goals_without_the_peer() -> None:
    goals = evaluate_goals(run_result(1.0, 100, 10), None)
    assert goals["p99_apply_to_pods_created_under_peer"]["met"] is None
    assert goals["api_requests_per_job_within_1_5x_peer"]["met"] is None
    assert goals["nothing_lost_peer"]["met"] is None
