"""The operator at scale (issue 8): kube-sft's operator and Kubeflow's training-operator on one KWOK cluster.

    python -m bench.bench_operator                 # the issue's load: 200 nodes, 500 + 100/min x 5, 50 failures
    python -m bench.bench_operator --quick         # development: 50 nodes, 50 + 50/min x 1, 5 failures
    python -m bench.bench_operator --jobs 200 --steady-minutes 2 --only sft

One real control plane (devcluster: etcd, kube-apiserver, controller-manager, scheduler) plus
KWOK (hack/kwok) simulating fake nodes with 8 `nvidia.com/gpu` each and pod lifecycles (hack/kwok/
stages.yaml: Running at once, Succeeded after --run-seconds, Failed with exit code 137 when the bench
annotates a pod). For each operator in turn (kube-sft's SFTJob, then the peer's PyTorchJob, each in
its own namespace, the other one stopped) the same load runs: --jobs jobs of --nodes-per-job nodes
submitted at once, then --steady-per-minute jobs a minute for --steady-minutes minutes, with
--failures pod failures injected into running jobs spread over that time.

Measured from the bench's own watches (local receive times, so watch latency counts against the
operator): apply -> all pods created, apply -> the job says its pods run, pod failure seen -> the
replacement pods created; each job's final phase and pod count (duplicates); pods whose owner is gone
(orphans) and garbage collection after the jobs are deleted; the operator process's CPU seconds and
peak RSS (/proc: utime+stime, VmHWM); API requests, both cluster-wide (apiserver_request_total
diffed over the run) and the operator's own (the API server's audit log, one user per operator).

Pure helpers (percentiles, parsing, result assembly, goals) are unit-tested in tests/unit/bench/.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes
import urllib3
import yaml
from kubernetes.client.exceptions import ApiException

from devcluster.binaries import cache_dir
from devcluster.controlplane import ControlPlane
from devcluster.procs import ManagedProcess, free_port, wait_until

REPO = Path(__file__).resolve().parents[1]
KWOK_DIR = REPO / "hack" / "kwok"
PEER_DIR = REPO / "hack" / "training-operator"
STAGES_FILE = KWOK_DIR / "stages.yaml"
SFT_CRD = REPO / "crds" / "sftjob.yaml"
RESULTS_FILE = REPO / "bench" / "results" / "operator.json"

FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
FAIL_ANNOTATION = "bench.kube-sft.io/fail"
GPU = "nvidia.com/gpu"
SYSTEM_NAMESPACE = "bench-system"
PEER_CRD_FILE = "kubeflow.org_pytorchjobs.yaml"
PEER_WEBHOOK_SECRET = "training-operator-webhook-cert"
PEER_CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")  # fixed in training-operator's pkg/cert
FINAL_PHASES = frozenset({"Succeeded", "Failed"})
BENCH_IMAGE = "ghcr.io/kube-sft/trainer:0.1.0"  # never pulled: KWOK runs no containers
POD_WRITES = ["create", "delete", "patch", "update"]  # audited with bodies under --trace-pods
Object = dict[str, Any]


# ================================================================================================
# Pure helpers (unit-tested)
# ================================================================================================


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between ranks (numpy's default); None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """Count, p50, p99, max and mean of a latency sample (seconds, rounded to ms)."""

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    return {
        "n": len(values),
        "p50": rounded(percentile(values, 50)),
        "p99": rounded(percentile(values, 99)),
        "max": rounded(max(values) if values else None),
        "mean": rounded(sum(values) / len(values) if values else None),
    }


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines of a versions.env file (comments and blanks skipped)."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            pins[key] = value
    return pins


def parse_labels(text: str) -> dict[str, str]:
    """`a="x",b="y"` -> {"a": "x", "b": "y"} (Prometheus text format, escaped quotes handled)."""
    labels: dict[str, str] = {}
    i = 0
    while i < len(text):
        eq = text.index("=", i)
        key = text[i:eq].strip().lstrip(",").strip()
        j = eq + 2  # skip ="
        value = []
        while text[j] != '"':
            if text[j] == "\\":
                j += 1
            value.append(text[j])
            j += 1
        labels[key] = "".join(value)
        i = j + 1
        while i < len(text) and text[i] in ", ":
            i += 1
    return labels


def counter_samples(metrics_text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of metric `name` in a Prometheus text exposition: (labels, value)."""
    samples = []
    for line in metrics_text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        rest = line[len(name) :]
        if rest.startswith("{"):
            close = rest.rindex("}")
            labels, value = parse_labels(rest[1:close]), rest[close + 1 :].split()[0]
        elif rest.startswith(" "):
            labels, value = {}, rest.split()[0]
        else:
            continue  # a longer metric name sharing the prefix
        samples.append((labels, float(value)))
    return samples


def request_counts(metrics_text: str) -> Counter[str]:
    """apiserver_request_total summed per `VERB resource[/subresource]`."""
    counts: Counter[str] = Counter()
    for labels, value in counter_samples(metrics_text, "apiserver_request_total"):
        resource = labels.get("resource", "")
        if labels.get("subresource"):
            resource += "/" + labels["subresource"]
        counts[f"{labels.get('verb', '?')} {resource}"] += int(value)
    return counts


def counter_diff(after: Counter[str], before: Counter[str]) -> Counter[str]:
    """after - before, keeping only positive differences."""
    return Counter({key: after[key] - before.get(key, 0) for key in after if after[key] - before.get(key, 0) > 0})


def audit_counts(lines: Iterable[str], user: str, since: datetime, until: datetime) -> Counter[str]:
    """The audit log's requests by `user` completed in [since, until], per `verb resource[/sub]`."""
    counts: Counter[str] = Counter()
    for line in lines:
        if user not in line:
            continue
        event = json.loads(line)
        if event.get("user", {}).get("username") != user:
            continue
        stamp = datetime.fromisoformat(event["stageTimestamp"].replace("Z", "+00:00"))
        if not since <= stamp <= until:
            continue
        ref = event.get("objectRef") or {}
        resource = ref.get("resource", event.get("requestURI", "?").split("?")[0])
        if ref.get("subresource"):
            resource += "/" + ref["subresource"]
        counts[f"{event.get('verb', '?')} {resource}"] += 1
    return counts


def pod_writes(lines: Iterable[str]) -> list[Object]:
    """The audit log's pod writes that carry bodies (`--trace-pods`), in the order the API server
    received them (a delete that arrived first may complete last), each as
    {time, agent, verb, subresource, namespace, name, uid, code, phase, annotations, labels}: the pod the write
    landed on (its response body) and the phase the write set (status patches)."""
    writes = []
    for line in lines:
        event = json.loads(line)
        ref = event.get("objectRef") or {}
        if ref.get("resource") != "pods" or event.get("verb") not in POD_WRITES:
            continue
        landed = event.get("responseObject") or {}
        if landed.get("kind") != "Pod":
            landed = {}  # a failed write answers a Status
        meta = landed.get("metadata") or {}
        writes.append(
            {
                "time": event.get("requestReceivedTimestamp") or event["stageTimestamp"],
                "agent": str(event.get("userAgent", "")).split("/")[0],
                "verb": event["verb"],
                "subresource": ref.get("subresource", ""),
                "namespace": ref.get("namespace", ""),
                "name": ref.get("name", meta.get("name", "")),
                "uid": meta.get("uid"),
                "code": (event.get("responseStatus") or {}).get("code"),
                "phase": ((event.get("requestObject") or {}).get("status") or {}).get("phase"),
                "annotations": meta.get("annotations") or {},
                "labels": meta.get("labels") or {},
            }
        )
    return sorted(writes, key=lambda write: write["time"])


def misdirected_writes(writes: Iterable[Object], agent: str = "kwok") -> list[Object]:
    """Writes by the node agent (KWOK) that landed on a pod they were not meant for, judged by what
    its Stages do: it deletes only pods someone else deleted first (pod-delete) and fails only pods
    the bench annotated (pod-fail). A write by name that hit a newer pod of the same name shows up here.
    """
    deleted_by_others: set[str] = set()
    wrong = []
    for write in writes:
        uid, ok = write["uid"], write["code"] == 200
        if write["agent"] != agent:
            if write["verb"] == "delete" and uid:
                deleted_by_others.add(uid)
            continue
        if ok and write["verb"] == "delete" and uid not in deleted_by_others:
            wrong.append(write | {"why": "deleted a pod nobody had deleted"})
        elif ok and write["phase"] == "Failed" and write["annotations"].get(FAIL_ANNOTATION) != "true":
            wrong.append(write | {"why": "failed a pod the bench never annotated"})
    return wrong


def cpu_seconds(stat_text: str, ticks_per_second: int) -> float:
    """utime + stime of a /proc/<pid>/stat line, in seconds (fields after the `(comm)`)."""
    fields = stat_text[stat_text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / ticks_per_second  # fields 14 and 15 of stat(5)


def peak_rss_bytes(status_text: str) -> int:
    """VmHWM (peak resident set size) of a /proc/<pid>/status text, in bytes."""
    for line in status_text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise ValueError("no VmHWM line")


def injection_times(start: float, duration: float, count: int) -> list[float]:
    """`count` failure times spread evenly over [start, start + duration) (mid-points of equal slices)."""
    if count <= 0:
        return []
    step = duration / count
    return [start + (index + 0.5) * step for index in range(count)]


def steady_times(start: float, per_minute: float, minutes: float) -> list[float]:
    """Submission times of a steady load: per_minute jobs a minute for `minutes` minutes."""
    count = round(per_minute * minutes)
    interval = 60.0 / per_minute if per_minute else 0.0
    return [start + index * interval for index in range(count)]


def load_summary(samples: Sequence[float]) -> dict[str, float | int | None]:
    """Min/mean/max of 1-minute load-average samples."""
    if not samples:
        return {"samples": 0, "min": None, "mean": None, "max": None}
    return {
        "samples": len(samples),
        "min": round(min(samples), 2),
        "mean": round(sum(samples) / len(samples), 2),
        "max": round(max(samples), 2),
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator rounded, or None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


def evaluate_goals(ours: Object | None, peer: Object | None, floor: Object | None = None) -> dict[str, Object]:
    """Issue 8's goals from the run results (any may be None when that run did not happen); the floor's
    burst p99 is shown beside ours: what any operator could reach on this control plane."""

    def get(run: Object | None, *path: str) -> Any:
        value: Any = run
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    p99 = get(ours, "latency", "apply_to_pods_created", "p99")
    burst_p99 = get(ours, "latency_by_wave", "burst", "apply_to_pods_created", "p99")
    steady_p99 = get(ours, "latency_by_wave", "steady", "apply_to_pods_created", "p99")
    peer_p99 = get(peer, "latency", "apply_to_pods_created", "p99")
    rss = get(ours, "process", "peak_rss_mb")
    per_job = get(ours, "api_requests", "operator_per_job")
    peer_per_job = get(peer, "api_requests", "operator_per_job")
    goals: dict[str, Object] = {
        "p99_apply_to_pods_created_under_2s": {"value": p99, "target": 2.0, "met": p99 is not None and p99 < 2.0},
        "p99_apply_to_pods_created_under_peer": {
            "value": p99,
            "peer": peer_p99,
            "met": None if p99 is None or peer_p99 is None else p99 < peer_p99,
        },
        "p99_apply_to_pods_created_burst_under_2s": {
            "value": burst_p99,
            "floor": get(floor, "latency_by_wave", "burst", "apply_to_pods_created", "p99"),
            "peer": get(peer, "latency_by_wave", "burst", "apply_to_pods_created", "p99"),
            "target": 2.0,
            "met": None if burst_p99 is None else burst_p99 < 2.0,
        },
        "p99_apply_to_pods_created_steady_wave_under_2s": {
            "value": steady_p99,
            "peer": get(peer, "latency_by_wave", "steady", "apply_to_pods_created", "p99"),
            "target": 2.0,
            "met": None if steady_p99 is None else steady_p99 < 2.0,
        },
        "peak_rss_under_300mb": {"value": rss, "target": 300, "met": rss is not None and rss < 300},
        "api_requests_per_job_within_1_5x_peer": {
            "value": per_job,
            "peer": peer_per_job,
            "ratio": ratio(per_job, peer_per_job),
            "met": None if per_job is None or not peer_per_job else per_job <= 1.5 * peer_per_job,
        },
    }
    for name, run in (("nothing_lost", ours), ("nothing_lost_peer", peer)):
        check = get(run, "correctness")
        goals[name] = {
            "met": None if check is None else bool(check.get("ok")),
            "detail": None if check is None else {k: v for k, v in check.items() if k != "ok"},
        }
    return goals


# ================================================================================================
# Job tracking: fed by watch events (pure state machine, unit-tested)
# ================================================================================================


@dataclass
class PodRecord:
    """One pod (by uid) as the bench saw it."""

    uid: str
    name: str
    slot: str
    first_seen: float
    running: float | None = None
    failed: float | None = None
    deleted: float | None = None
    injected: bool = False


@dataclass
class JobRecord:
    """One job from submission to its final phase."""

    name: str
    expected_pods: int
    applied: float | None = None
    wave: str = ""  # "burst" or "steady"
    pods: dict[str, PodRecord] = field(default_factory=dict)
    pods_created: float | None = None
    running: float | None = None
    phase: str | None = None
    finished: float | None = None
    uid: str | None = None
    injected: float | None = None
    failure_seen: float | None = None
    recreated: float | None = None

    def slots_seen(self) -> int:
        """Distinct pod slots (ranks / replica indexes) created so far."""
        return len({pod.slot for pod in self.pods.values()})


class Tracker:
    """Turns pod and job watch events into per-job timings (times are the bench's monotonic clock)."""

    def __init__(self, flavour: Flavour, nodes_per_job: int) -> None:
        self.flavour = flavour
        self.nodes_per_job = nodes_per_job
        self.jobs: dict[str, JobRecord] = {}
        self.stray_pods: set[str] = set()
        self.lock = threading.Lock()

    def job(self, name: str) -> JobRecord:
        """The record of job `name`, made on first use."""
        record = self.jobs.get(name)
        if record is None:
            record = self.jobs[name] = JobRecord(name, self.nodes_per_job)
        return record

    def applied(self, name: str, when: float, wave: str = "") -> None:
        """The bench is about to create job `name` (in the burst or the steady wave)."""
        with self.lock:
            record = self.job(name)
            record.applied, record.wave = when, wave

    def on_pod(self, event: str, pod: Object, when: float) -> None:
        """A pod watch event (ADDED, MODIFIED, DELETED)."""
        meta = pod.get("metadata") or {}
        key = self.flavour.pod_key(pod)
        if key is None:
            self.stray_pods.add(str(meta.get("name")))
            return
        job_name, slot = key
        uid = str(meta.get("uid"))
        phase = (pod.get("status") or {}).get("phase")
        with self.lock:
            job = self.job(job_name)
            record = job.pods.get(uid)
            if record is None:
                record = job.pods[uid] = PodRecord(uid, str(meta.get("name")), slot, when)
                if job.pods_created is None and job.slots_seen() >= job.expected_pods:
                    job.pods_created = when
                if job.failure_seen is not None and job.recreated is None:
                    fresh = [p for p in job.pods.values() if p.first_seen > job.failure_seen]
                    if len(fresh) >= self.flavour.replaced_after_failure(job.expected_pods):
                        job.recreated = when
            record.injected = record.injected or (meta.get("annotations") or {}).get(FAIL_ANNOTATION) == "true"
            if phase == "Running" and record.running is None:
                record.running = when
            if phase == "Failed" and record.failed is None:
                record.failed = when
                if record.injected and job.failure_seen is None:
                    job.failure_seen = when
            if event == "DELETED":
                record.deleted = when

    def on_job(self, event: str, obj: Object, when: float) -> None:
        """A job watch event."""
        meta = obj.get("metadata") or {}
        phase = self.flavour.job_phase(obj)
        with self.lock:
            job = self.job(str(meta.get("name")))
            job.uid = meta.get("uid") or job.uid
            if event == "DELETED":
                return
            job.phase = phase
            if phase in self.flavour.running_phases and job.running is None:
                job.running = when
            if phase in FINAL_PHASES and job.finished is None:
                job.finished = when
                if job.running is None:
                    job.running = when  # a job can pass through Running between two watch events

    def mark_injected(self, name: str, when: float) -> None:
        """The bench annotated one of job `name`'s pods to fail."""
        with self.lock:
            self.job(name).injected = when

    def injection_candidate(self, now: float, max_age: float, rng: random.Random) -> tuple[str, str] | None:
        """A (job, pod) to fail: victim slot running for less than max_age seconds, job not injected yet."""
        candidates = []
        with self.lock:
            for job in self.jobs.values():
                if job.injected is not None or job.finished is not None:
                    continue
                for pod in job.pods.values():
                    if (
                        pod.slot == self.flavour.victim_slot
                        and pod.running is not None
                        and pod.deleted is None
                        and pod.failed is None
                        and now - pod.running < max_age
                    ):
                        candidates.append((job.name, pod.name))
        return rng.choice(candidates) if candidates else None

    def without_pods(self) -> list[str]:
        """Submitted jobs whose pods do not all exist yet."""
        with self.lock:
            return [j.name for j in self.jobs.values() if j.applied is not None and j.pods_created is None]

    def unfinished(self) -> list[str]:
        """Submitted jobs not yet Succeeded/Failed."""
        with self.lock:
            return [j.name for j in self.jobs.values() if j.applied is not None and j.finished is None]


def latencies(jobs: Iterable[JobRecord]) -> dict[str, list[float]]:
    """Per-job latencies (seconds) of the jobs that reached each point."""
    result: dict[str, list[float]] = {"apply_to_pods_created": [], "apply_to_running": [], "failure_to_recreated": []}
    for job in jobs:
        if job.applied is None:
            continue
        if job.pods_created is not None:
            result["apply_to_pods_created"].append(job.pods_created - job.applied)
        if job.running is not None:
            result["apply_to_running"].append(job.running - job.applied)
        if job.failure_seen is not None and job.recreated is not None:
            result["failure_to_recreated"].append(job.recreated - job.failure_seen)
    return result


def latencies_by_wave(jobs: Iterable[JobRecord]) -> dict[str, dict[str, list[float]]]:
    """`latencies` of the burst's jobs and of the steady wave's jobs, separately, plus
    `steady_after_burst`: the steady jobs applied after the burst's last job had all its pods (the
    steady load without the burst's backlog ahead of it)."""
    jobs = list(jobs)
    waves: dict[str, list[JobRecord]] = {}
    for job in jobs:
        waves.setdefault(job.wave or "unknown", []).append(job)
    burst_done = [job.pods_created for job in waves.get("burst", []) if job.pods_created is not None]
    if burst_done and "steady" in waves:
        cleared = max(burst_done)
        waves["steady_after_burst"] = [job for job in waves["steady"] if (job.applied or 0) > cleared]
    return {wave: latencies(members) for wave, members in sorted(waves.items())}


def correctness(jobs: Iterable[JobRecord], replaced_after_failure: int, orphans: int, stray: int) -> Object:
    """Every job accounted for: right final phase, expected pod count (no duplicates), no orphans."""
    jobs = [job for job in jobs if job.applied is not None]
    wrong_phase = sorted(job.name for job in jobs if job.phase != "Succeeded")
    extra, missing_recreate = [], []
    for job in jobs:
        expected = job.expected_pods + (replaced_after_failure if job.failure_seen is not None else 0)
        if len(job.pods) > expected:
            extra.append(f"{job.name}: {len(job.pods)} pods, expected {expected}")
        if job.failure_seen is not None and job.recreated is None:
            missing_recreate.append(job.name)
    injected = [job for job in jobs if job.injected is not None]
    return {
        "ok": not wrong_phase and not extra and orphans == 0 and stray == 0,
        "jobs": len(jobs),
        "succeeded": sum(1 for job in jobs if job.phase == "Succeeded"),
        "not_succeeded": wrong_phase[:20],
        "not_succeeded_count": len(wrong_phase),
        "phases": dict(Counter(str(job.phase) for job in jobs)),
        "failures_injected": len(injected),
        "failures_seen": sum(1 for job in jobs if job.failure_seen is not None),
        "failures_recovered": sum(1 for job in jobs if job.recreated is not None),
        # A failure the job outran (rank 0 / the master succeeded before the replacement came) is no loss:
        # both operators then end the job Succeeded. Any job not Succeeded is in not_succeeded.
        "finished_before_recreate": missing_recreate[:20],
        "duplicate_or_extra_pods": extra[:20],
        "duplicate_or_extra_pods_count": len(extra),
        "pods_seen": sum(len(job.pods) for job in jobs),
        "orphans": orphans,
        "pods_without_job_label": stray,
    }


# ================================================================================================
# The two operators under test
# ================================================================================================

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
    group="sft.kube-sft.io",
    version="v1alpha1",
    plural="sftjobs",
    kind="SFTJob",
    job_label="sft.kube-sft.io/job-name",
    slot_labels=("sft.kube-sft.io/node-rank",),
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


# ================================================================================================
# The floor: the least any operator must do per job, as fast as the API server takes it
# ================================================================================================

FLOOR_PARALLELISM = 16  # concurrent creates (kube-sft's --create-parallelism was 16 when the floor was built; now 32)
FLOOR_READY = "floor: watching"


def floor_pod(job: Object, rank: int) -> Object:
    """The one object per node a gang cannot do without: a pod with the job's labels and owner, the
    node's GPUs, the bench's command; no Service, ConfigMap, RBAC, status or Events."""
    meta = job["metadata"]
    spec = job["spec"]
    name = meta["name"]
    container = {
        "name": "trainer",
        "image": BENCH_IMAGE,
        "command": POD_COMMAND,
        "resources": {"limits": {GPU: str(spec["resources"]["gpusPerNode"])}},
    }
    owner = {"apiVersion": job["apiVersion"], "kind": job["kind"], "name": name, "uid": meta["uid"], "controller": True}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{name}-node-{rank}",
            "labels": {SFT.job_label: name, SFT.slot_labels[0]: str(rank)},
            "ownerReferences": [owner],
        },
        "spec": {"containers": [container], "restartPolicy": "Never", "automountServiceAccountToken": False},
    }


def serve_floor(namespace: str) -> None:
    """The floor client (`--serve-floor NAMESPACE`, KUBECONFIG from the environment): watch the SFTJobs
    of `namespace` and create every new job's pods, FLOOR_PARALLELISM at a time; nothing else, ever."""
    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(client_configuration=config)
    config.connection_pool_maxsize = FLOOR_PARALLELISM + 2
    client = kubernetes.client.ApiClient(config)
    core, custom = kubernetes.client.CoreV1Api(client), kubernetes.client.CustomObjectsApi(client)
    pool = ThreadPoolExecutor(FLOOR_PARALLELISM)

    def create(pod: Object, tries: int = 5) -> None:
        for _ in range(tries):
            try:
                response = core.create_namespaced_pod(namespace, pod, _preload_content=False)
                response.drain_conn()  # read to the end: the connection goes back to the pool reusable
                response.release_conn()
                return
            except ApiException as error:
                if error.status == 409:
                    return  # a retry of a create that had worked
                print(f"floor: creating {pod['metadata']['name']}: {error.status} {error.reason}", flush=True)
            except Exception as error:  # a dropped connection: try again, as an operator would
                print(f"floor: creating {pod['metadata']['name']}: {error!r}", flush=True)

    def on_job(event: str, job: Object, when: float) -> None:
        if event == "ADDED":
            for rank in range(job["spec"]["resources"]["numNodes"]):
                pool.submit(create, floor_pod(job, rank))

    f = FLOOR
    watch = Watch(
        "floor",
        lambda **kw: custom.list_namespaced_custom_object(f.group, f.version, namespace, f.plural, **kw),
        on_job,
    )
    watch.start()
    watch.synced.wait()
    print(FLOOR_READY, flush=True)
    watch.join()


# ================================================================================================
# Cluster side: audited control plane, KWOK, operators, watches
# ================================================================================================


def service_account_user(name: str) -> str:
    """The API server's user name of ServiceAccount bench-system/name."""
    return f"system:serviceaccount:{SYSTEM_NAMESPACE}:{name}"


OPERATOR_ACCOUNTS = {"kube-sft": "sft-operator", "floor": "floor-client", "training-operator": "training-operator"}


def audit_policy(trace_pods: bool = False) -> Object:
    """The API server's audit policy: the operators' requests (Metadata), nothing else.

    With `trace_pods`, every user's pod writes (create, delete, status patches: the operator's, the
    scheduler's, KWOK's) are logged first with their request and response bodies, so that who wrote
    what to which pod uid can be read back (`pod_writes`).
    """
    rules: list[Object] = []
    if trace_pods:
        pods = [{"group": "", "resources": ["pods", "pods/status"]}]
        rules.append({"level": "RequestResponse", "verbs": POD_WRITES, "resources": pods})
    rules.append({"level": "Metadata", "users": [service_account_user(a) for a in OPERATOR_ACCOUNTS.values()]})
    rules.append({"level": "None"})
    return {
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "omitStages": ["RequestReceived", "ResponseStarted"],
        "rules": rules,
    }


class AuditedControlPlane(ControlPlane):
    """devcluster's ControlPlane, with the API server's audit log on for the operators' users only."""

    trace_pods = False  # TracedControlPlane: every pod write too

    def _spawn(self, name: str, argv: Sequence[str | Path]) -> ManagedProcess:
        if name == "kube-apiserver":
            path = self.workdir / "audit-policy.yaml"
            path.write_text(yaml.safe_dump(audit_policy(self.trace_pods)))
            argv = [
                *argv,
                f"--audit-policy-file={path}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-mode=batch",
                "--audit-log-maxsize=0",
            ]
        return super()._spawn(name, argv)

    @property
    def audit_log(self) -> Path:
        """The API server's audit log (JSON lines)."""
        return self.workdir / "logs" / "audit.log"

    def metrics_text(self) -> str:
        """The API server's /metrics (admin client certificate)."""
        pool = urllib3.PoolManager(
            ca_certs=str(self.pki.ca.cert),
            cert_file=str(self.pki.admin.cert),
            key_file=str(self.pki.admin.key),
            timeout=urllib3.Timeout(total=30.0),
        )
        response = pool.request("GET", f"{self.server}/metrics")
        if response.status != 200:
            raise RuntimeError(f"/metrics answered {response.status}")
        return str(response.data.decode())


class TracedControlPlane(AuditedControlPlane):
    """An AuditedControlPlane that also logs every pod write with its bodies (`--trace-pods`)."""

    trace_pods = True


class MissingToolError(RuntimeError):
    """kwok or training-operator is not built yet."""


def kwok_binary() -> Path:
    """The cached kwok binary (hack/kwok/build.sh builds it); raises MissingToolError naming the fix."""
    version = read_env_file(KWOK_DIR / "versions.env")["KWOK_VERSION"]
    path = cache_dir() / "bin" / f"kwok-{version}" / "kwok"
    if not os.access(path, os.X_OK):
        raise MissingToolError(f"{path} not found: run hack/kwok/build.sh (or `make cluster-bins`) to build kwok")
    return path


def peer_directory() -> Path:
    """The cached training-operator binary's directory (hack/training-operator/build.sh)."""
    version = read_env_file(PEER_DIR / "versions.env")["TRAINING_OPERATOR_VERSION"]
    path = cache_dir() / "bin" / f"training-operator-{version}"
    if not os.access(path / "training-operator", os.X_OK):
        raise MissingToolError(f"{path}/training-operator not found: run hack/training-operator/build.sh")
    return path


def write_stages(path: Path, run_seconds: float) -> Path:
    """hack/kwok/stages.yaml with pod-complete's delay set to run_seconds."""
    documents = list(yaml.safe_load_all(STAGES_FILE.read_text()))
    for document in documents:
        if document.get("kind") == "Stage" and document["metadata"]["name"] == "pod-complete":
            document["spec"]["delay"] = {"durationMilliseconds": int(run_seconds * 1000)}
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return path


def start_kwok(cluster: ControlPlane, run_seconds: float) -> ManagedProcess:
    """Start KWOK managing the nodes annotated kwok.x-k8s.io/node=fake, with the bench's Stages."""
    config = write_stages(cluster.workdir / "kwok.yaml", run_seconds)
    process = ManagedProcess(
        "kwok",
        [
            str(kwok_binary()),
            f"--kubeconfig={cluster.kubeconfig}",
            f"--config={config}",
            f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION}=fake",
            "--node-lease-duration-seconds=40",
            f"--server-address=127.0.0.1:{free_port()}",
            "--cidr=10.64.0.0/12",
            "--node-ip=10.63.0.1",
            "--v=WARN",
        ],
        cluster.workdir / "logs",
    )
    cluster.processes.append(process)  # stopped with the cluster
    return process


def fake_node(name: str, gpus: int = 8) -> Object:
    """A KWOK-managed node with `gpus` nvidia.com/gpu (and room for everything else)."""
    capacity = {"cpu": "96", "memory": "1Ti", "pods": "110", GPU: str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {FAKE_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "type": "kwok"},
        },
        "spec": {},
        "status": {"allocatable": capacity, "capacity": capacity},
    }


def node_ready(node: Object) -> bool:
    """Ready=True and no NoSchedule/NoExecute taint."""
    conditions = (node.get("status") or {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    taints = [t for t in (node.get("spec") or {}).get("taints") or [] if t.get("effect") != "PreferNoSchedule"]
    return ready and not taints


def create_nodes(client: kubernetes.client.ApiClient, count: int, timeout: float = 180) -> float:
    """Create `count` fake GPU nodes and wait until every one is Ready and untainted; returns seconds."""
    t0 = time.monotonic()
    v1 = kubernetes.client.CoreV1Api(client)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: v1.create_node(fake_node(f"kwok-gpu-{i:03d}")), range(count)))

    def all_ready() -> bool:
        nodes = json.loads(v1.list_node(_preload_content=False).data)["items"]
        return (
            sum(1 for node in nodes if node_ready(node) and node["metadata"]["name"].startswith("kwok-gpu-")) >= count
        )

    wait_until(all_ready, timeout, f"{count} KWOK nodes Ready and untainted", interval=1.0)
    return time.monotonic() - t0


def admin_client(cluster: ControlPlane, pool: int = 16) -> kubernetes.client.ApiClient:
    """An admin ApiClient with a connection pool big enough for the bench's threads."""
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=configuration)
    configuration.connection_pool_maxsize = pool
    return kubernetes.client.ApiClient(configuration)


def setup_accounts(cluster: ControlPlane, client: kubernetes.client.ApiClient) -> dict[str, Path]:
    """bench-system with one cluster-admin ServiceAccount per operator (own audit user); their kubeconfigs."""
    v1 = kubernetes.client.CoreV1Api(client)
    rbac = kubernetes.client.RbacAuthorizationV1Api(client)
    v1.create_namespace({"metadata": {"name": SYSTEM_NAMESPACE}})
    wait_until(lambda: v1.read_namespaced_service_account("default", SYSTEM_NAMESPACE), 60, "bench-system SA")
    kubeconfigs = {}
    for operator, account in OPERATOR_ACCOUNTS.items():
        v1.create_namespaced_service_account(SYSTEM_NAMESPACE, {"metadata": {"name": account}})
        rbac.create_cluster_role_binding(
            {
                "metadata": {"name": f"bench-{account}"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": SYSTEM_NAMESPACE}],
            }
        )
        kubeconfigs[operator] = cluster.service_account_kubeconfig(SYSTEM_NAMESPACE, account)
    return kubeconfigs


def install_crds(cluster: ControlPlane, peer: bool) -> None:
    """The SFTJob CRD (crds/) and, for the peer, the PyTorchJob CRD of the same training-operator version."""
    paths = [SFT_CRD] + ([peer_directory() / PEER_CRD_FILE] if peer else [])
    for path in paths:
        cluster.kubectl("apply", "--server-side", "-f", str(path))
    ext = kubernetes.client.ApiextensionsV1Api(cluster.client)
    names = ["sftjobs.sft.kube-sft.io"] + (["pytorchjobs.kubeflow.org"] if peer else [])

    def established() -> bool:
        for name in names:
            crd = ext.read_custom_resource_definition(name)
            if not any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or []):
                return False
        return True

    wait_until(established, 60, "CRDs Established", interval=0.5)


def peer_webhook_objects(client: kubernetes.client.ApiClient) -> None:
    """What training-operator's cert rotator expects: its Secret, and a webhook configuration with no webhooks
    (so the API server never calls a webhook the bench does not serve)."""
    v1 = kubernetes.client.CoreV1Api(client)
    v1.create_namespaced_secret(SYSTEM_NAMESPACE, {"metadata": {"name": PEER_WEBHOOK_SECRET}})
    kubernetes.client.AdmissionregistrationV1Api(client).create_validating_webhook_configuration(
        {"metadata": {"name": "validator.training-operator.kubeflow.org"}, "webhooks": []}
    )


def mount_peer_certs(client: kubernetes.client.ApiClient) -> bool:
    """Do the kubelet's part for training-operator: write its webhook Secret's files where it looks for them
    (its cert rotator fills the Secret, then waits for the files, as mounted in its Deployment)."""
    if (PEER_CERT_DIR / "tls.crt").exists():
        return True
    secret = kubernetes.client.CoreV1Api(client).read_namespaced_secret(PEER_WEBHOOK_SECRET, SYSTEM_NAMESPACE)
    data = secret.data or {}
    if not {"tls.crt", "tls.key", "ca.crt"} <= data.keys():
        return False
    PEER_CERT_DIR.mkdir(parents=True, exist_ok=True)
    for name in ("ca.crt", "tls.key", "tls.crt"):  # tls.crt last: its presence means "mounted"
        (PEER_CERT_DIR / name).write_bytes(base64.b64decode(data[name]))
    return True


def http_ok(url: str) -> bool:
    """GET url answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def start_operator(flavour: Flavour, cluster: ControlPlane, kubeconfig: Path, namespace: str) -> ManagedProcess:
    """Start one operator watching `namespace` and wait until it serves; its process is what gets measured."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    metrics_port, probe_port = free_port(), free_port()
    if flavour.floor:
        argv = [sys.executable, "-m", "bench.bench_operator", "--serve-floor", namespace]
        ready_url = ""
    elif flavour is SFT:
        argv = [sys.executable, "-m", "sft_operator", "--namespace", namespace, "--standalone"]
        argv += ["--metrics-port", str(metrics_port), "--liveness-port", str(probe_port)]
        ready_url = f"http://127.0.0.1:{metrics_port}/metrics"
    else:
        env["MY_POD_NAMESPACE"] = SYSTEM_NAMESPACE
        argv = [str(peer_directory() / "training-operator"), f"--kubeconfig={kubeconfig}"]
        argv += ["--enable-scheme=pytorchjob", f"--namespace={namespace}", "--leader-elect=false"]
        argv += [f"--metrics-bind-address=127.0.0.1:{metrics_port}"]
        argv += [f"--health-probe-bind-address=127.0.0.1:{probe_port}", f"--webhook-server-port={free_port()}"]
        ready_url = f"http://127.0.0.1:{probe_port}/readyz"
        shutil.rmtree(PEER_CERT_DIR, ignore_errors=True)
    process = ManagedProcess(flavour.name, argv, cluster.workdir / "logs", env=env)

    def ready() -> bool:
        process.check_alive()
        if flavour.floor:
            return FLOOR_READY in process.log_path.read_text()
        if flavour is PEER:
            mount_peer_certs(cluster.client)
        return http_ok(ready_url)

    wait_until(ready, 120, f"{flavour.name} to serve {ready_url or 'its watch'}", interval=0.5)
    return process


def start_profiler(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """py-spy (dev extra) sampling `pid` at 50 Hz into collapsed stacks (`--format raw`), GIL-holding and idle
    threads both, so waiting on the API server shows up too."""
    py_spy = Path(sys.executable).with_name("py-spy")
    argv = [str(py_spy), "record", "--pid", str(pid), "--rate", "50", "--format", "raw", "--idle", "--nonblocking"]
    argv += ["-o", str(output)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class ProcessMeter:
    """CPU seconds and peak RSS of one process, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.cpu_start = self.cpu()

    def cpu(self) -> float:
        """utime + stime so far."""
        return cpu_seconds(Path(f"/proc/{self.pid}/stat").read_text(), self.ticks)

    def peak_rss(self) -> int:
        """VmHWM in bytes."""
        return peak_rss_bytes(Path(f"/proc/{self.pid}/status").read_text())


class Watch(threading.Thread):
    """List then watch one collection, handing (type, object, receive time) to `handler`; raw JSON, no models."""

    def __init__(self, name: str, list_call: Callable[..., Any], handler: Callable[[str, Object, float], None]) -> None:
        super().__init__(name=name, daemon=True)
        self.list_call = list_call
        self.handler = handler
        self.stop_event = threading.Event()
        self.synced = threading.Event()
        self.errors = 0

    def run(self) -> None:
        resource_version = ""
        while not self.stop_event.is_set():
            try:
                if not resource_version:
                    listing = json.loads(self.list_call(_preload_content=False).data)
                    now = time.monotonic()
                    for item in listing["items"]:
                        self.handler("ADDED", item, now)
                    resource_version = listing["metadata"]["resourceVersion"]
                    self.synced.set()
                response = self.list_call(
                    watch=True,
                    resource_version=resource_version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=60,
                    _preload_content=False,
                )
                for line in response:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event["type"] == "ERROR":
                        resource_version = ""  # 410 Gone: list again
                        break
                    obj = event["object"]
                    resource_version = obj["metadata"].get("resourceVersion", resource_version)
                    if event["type"] != "BOOKMARK":
                        self.handler(event["type"], obj, time.monotonic())
                    if self.stop_event.is_set():
                        break
                response.release_conn()
            except Exception:
                self.errors += 1
                time.sleep(0.5)

    def stop(self) -> None:
        """Ask the thread to end (at the next event or watch timeout)."""
        self.stop_event.set()


class LoadSampler(threading.Thread):
    """Samples the 1-minute load average every few seconds."""

    def __init__(self, interval: float = 5.0) -> None:
        super().__init__(name="load", daemon=True)
        self.interval = interval
        self.samples: list[float] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.samples.append(os.getloadavg()[0])


# ================================================================================================
# One run: one operator, the whole load
# ================================================================================================


@dataclass(frozen=True)
class Scale:
    """The load shape."""

    nodes: int = 200
    gpus_per_node: int = 8
    nodes_per_job: int = 2
    jobs: int = 500
    steady_per_minute: float = 100
    steady_minutes: float = 5
    failures: int = 50
    run_seconds: float = 30
    settle_timeout: float = 900
    gc_timeout: float = 900  # deleting 1000 jobs leaves ~7,000 children for the controller-manager (~12/s here)
    submit_threads: int = 4


QUICK = Scale(nodes=50, jobs=50, steady_per_minute=50, steady_minutes=1, failures=5, run_seconds=15, settle_timeout=300)


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"[bench-operator {datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


class Run:
    """One operator under the whole load, in its own namespace."""

    def __init__(self, flavour: Flavour, cluster: AuditedControlPlane, client: kubernetes.client.ApiClient) -> None:
        self.flavour = flavour
        self.cluster = cluster
        self.client = client
        self.namespace = f"bench-{flavour.short}"
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.core = kubernetes.client.CoreV1Api(client)

    def create_job(self, tracker: Tracker, name: str, nodes: int, wave: str) -> None:
        """Record the apply time, then create the job."""
        body = self.flavour.manifest(name, self.namespace, nodes)
        tracker.applied(name, time.monotonic(), wave)
        f = self.flavour
        self.custom.create_namespaced_custom_object(f.group, f.version, self.namespace, f.plural, body)

    def inject(self, tracker: Tracker, scale: Scale, rng: random.Random) -> bool:
        """Annotate one young victim pod to fail; False when no job is in the right state."""
        picked = tracker.injection_candidate(time.monotonic(), scale.run_seconds / 3, rng)
        if picked is None:
            return False
        job, pod = picked
        tracker.mark_injected(job, time.monotonic())
        try:
            self.core.patch_namespaced_pod(
                pod, self.namespace, {"metadata": {"annotations": {FAIL_ANNOTATION: "true"}}}
            )
        except ApiException as error:
            log(f"injecting into {pod} failed: {error.status}")
        return True

    def execute(
        self, scale: Scale, kubeconfig: Path, profile: Path | None = None, seed: int = 8, cleanup: bool = True
    ) -> Object:
        """Start the operator, run the load, check the outcome, clean up (unless `cleanup` is False:
        no garbage-collection check, the namespace stays); returns the run's result."""
        f, rng = self.flavour, random.Random(seed)
        self.core.create_namespace({"metadata": {"name": self.namespace}})
        wait_until(lambda: self.core.read_namespaced_service_account("default", self.namespace), 60, "namespace SA")
        tracker = Tracker(f, scale.nodes_per_job)
        operator = start_operator(f, self.cluster, kubeconfig, self.namespace)
        meter = ProcessMeter(operator.proc.pid)
        profiler = start_profiler(operator.proc.pid, profile) if profile and self.flavour is SFT else None
        pod_watch = Watch("pods", lambda **kw: self.core.list_namespaced_pod(self.namespace, **kw), tracker.on_pod)
        job_watch = Watch(
            "jobs",
            lambda **kw: self.custom.list_namespaced_custom_object(f.group, f.version, self.namespace, f.plural, **kw),
            tracker.on_job,
        )
        for watch in (pod_watch, job_watch):
            watch.start()
            watch.synced.wait(30)
        load = LoadSampler()
        load.start()
        since = datetime.now(UTC)
        before = request_counts(self.cluster.metrics_text())
        cpu_before = meter.cpu()
        t_start = time.monotonic()
        names = iter(f"{f.prefix}-{index:05d}" for index in range(1_000_000))

        # 1. the burst
        log(f"{f.name}: submitting {scale.jobs} jobs at once")
        with ThreadPoolExecutor(scale.submit_threads) as pool:
            burst = [next(names) for _ in range(scale.jobs)]
            list(pool.map(lambda n: self.create_job(tracker, n, scale.nodes_per_job, "burst"), burst))
        burst_seconds = time.monotonic() - t_start

        # 2. the steady load, with failures spread over it
        steady_start = time.monotonic()
        steady_seconds = scale.steady_minutes * 60
        submits = steady_times(steady_start, scale.steady_per_minute, scale.steady_minutes)
        failures = injection_times(steady_start, steady_seconds, scale.failures)
        log(f"{f.name}: steady {scale.steady_per_minute}/min for {scale.steady_minutes} min, {scale.failures} failures")
        late_submits = 0
        with ThreadPoolExecutor(scale.submit_threads) as pool:
            while submits or failures:
                now = time.monotonic()
                while submits and submits[0] <= now:
                    if now - submits.pop(0) > 1.0:
                        late_submits += 1
                    pool.submit(self.create_job, tracker, next(names), scale.nodes_per_job, "steady")
                if failures and failures[0] <= now and self.inject(tracker, scale, rng):
                    failures.pop(0)
                if failures and now > steady_start + steady_seconds + 2 * scale.run_seconds:
                    log(f"{f.name}: {len(failures)} failures could not be injected (no young running job)")
                    failures.clear()
                time.sleep(0.05)
        submitted = time.monotonic()

        # 3. wait for every job to finish (the floor's jobs never do: for every job's pods)
        def settled() -> bool:
            return not (tracker.without_pods() if f.floor else tracker.unfinished())

        try:
            wait_until(settled, scale.settle_timeout, "every job to finish", interval=1.0)
        except TimeoutError:
            log(f"{f.name}: {len(tracker.unfinished())} jobs unfinished after {scale.settle_timeout}s")
        t_end = time.monotonic()
        cpu = meter.cpu() - cpu_before
        peak = meter.peak_rss()
        after = request_counts(self.cluster.metrics_text())
        until = datetime.now(UTC)
        load.stop_event.set()

        # 4. orphans while the jobs exist, then garbage collection once they are deleted
        job_uids = {job.uid for job in tracker.jobs.values() if job.uid}
        pods = json.loads(self.core.list_namespaced_pod(self.namespace, _preload_content=False).data)["items"]
        orphans = [
            pod["metadata"]["name"]
            for pod in pods
            if not any(ref.get("uid") in job_uids for ref in pod["metadata"].get("ownerReferences") or [])
        ]
        time.sleep(2)  # let the batch audit backend flush
        audit_lines = self.cluster.audit_log.read_text().splitlines()
        audit = audit_counts(audit_lines, service_account_user(OPERATOR_ACCOUNTS[f.name]), since, until)
        traced = self.node_agent_trace(audit_lines) if self.cluster.trace_pods else {}
        gc = self.collect_garbage(scale.gc_timeout) if cleanup and not f.floor else None
        if profiler is not None:
            profiler.send_signal(2)  # SIGINT: py-spy writes its output and exits
            profiler.wait(60)
        operator.stop()
        for watch in (pod_watch, job_watch):
            watch.stop()
        if cleanup:
            self.drop_namespace()

        jobs = [job for job in tracker.jobs.values() if job.applied is not None]
        lat = latencies(jobs)
        burst_done = [job.pods_created for job in jobs if job.wave == "burst" and job.pods_created is not None]
        cluster_requests = counter_diff(after, before)
        total_jobs = len(jobs)
        return {
            "operator": f.name,
            "kind": f.kind,
            "namespace": self.namespace,
            "jobs": total_jobs,
            "timing": {
                "burst_submit_seconds": round(burst_seconds, 2),
                "burst_all_pods_created_after_seconds": round(max(burst_done) - t_start, 1) if burst_done else None,
                "steady_late_submits": late_submits,
                "submitted_after_seconds": round(submitted - t_start, 1),
                "all_finished_after_seconds": round(t_end - t_start, 1),
            },
            "latency": {key: summarize(values) for key, values in lat.items()},
            "latency_by_wave": {
                wave: {key: summarize(values) for key, values in wave_lat.items()}
                for wave, wave_lat in latencies_by_wave(jobs).items()
            },
            "process": {
                "pid": operator.proc.pid,
                "cpu_seconds": round(cpu, 2),
                "cpu_seconds_per_job": ratio(cpu, total_jobs),
                "peak_rss_mb": round(peak / 2**20, 1),
            },
            "api_requests": {
                "operator_total": sum(audit.values()),
                "operator_per_job": ratio(sum(audit.values()), total_jobs),
                "operator_by_verb_resource": dict(audit.most_common()),
                "cluster_total": sum(cluster_requests.values()),
                "cluster_per_job": ratio(sum(cluster_requests.values()), total_jobs),
                "cluster_by_verb_resource": dict(cluster_requests.most_common(25)),
            },
            "correctness": correctness(jobs, f.replaced_after_failure(scale.nodes_per_job), len(orphans), 0)
            | {"orphan_names": orphans[:20]}
            | traced,
            "garbage_collection": gc,
            "watch_errors": pod_watch.errors + job_watch.errors,
            "load_average_1m": load_summary(load.samples),
        }

    def node_agent_trace(self, audit_lines: Iterable[str]) -> Object:
        """`--trace-pods`: KWOK's writes in this run's namespace that hit a pod they were not meant for."""
        writes = [write for write in pod_writes(audit_lines) if write["namespace"] == self.namespace]
        wrong = misdirected_writes(writes)
        keys = ("time", "verb", "subresource", "name", "uid", "why")
        return {
            "node_agent_misdirected_writes": len(wrong),
            "node_agent_misdirected_examples": [{key: write[key] for key in keys} for write in wrong[:20]],
            "node_agent_writes_to_missing_pods": sum(1 for w in writes if w["agent"] == "kwok" and w["code"] == 404),
        }

    def collect_garbage(self, timeout: float = 300) -> Object:
        """Delete every job (background propagation) and wait for their children to go; what is left."""
        f = self.flavour
        t0 = time.monotonic()
        self.custom.delete_collection_namespaced_custom_object(
            f.group, f.version, self.namespace, f.plural, propagation_policy="Background"
        )

        def leftovers() -> dict[str, int]:
            found = {}
            for kind, call in (
                ("pods", self.core.list_namespaced_pod),
                ("services", self.core.list_namespaced_service),
                ("configmaps", self.core.list_namespaced_config_map),
                ("serviceaccounts", self.core.list_namespaced_service_account),
            ):
                items = json.loads(call(self.namespace, _preload_content=False).data)["items"]
                skip = {"kube-root-ca.crt", "default"}
                found[kind] = sum(1 for item in items if item["metadata"]["name"] not in skip)
            return found

        left = leftovers()
        while sum(left.values()) and time.monotonic() - t0 < timeout:
            time.sleep(2)
            left = leftovers()
        return {"seconds": round(time.monotonic() - t0, 1), "left_after": left, "timeout": timeout}

    def drop_namespace(self, timeout: float = 600) -> None:
        """Delete the run's namespace and wait until it is gone, so that no garbage collection of this run
        overlaps the next operator's run."""
        self.core.delete_namespace(self.namespace)

        def gone() -> bool:
            try:
                self.core.read_namespace(self.namespace)
            except ApiException as error:
                return error.status == 404
            return False

        try:
            wait_until(gone, timeout, f"namespace {self.namespace} deleted", interval=2.0)
        except TimeoutError:
            log(f"namespace {self.namespace} still terminating after {timeout}s")


# ================================================================================================
# Entry point
# ================================================================================================


def machine() -> Object:
    """Where the numbers come from."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def versions() -> Object:
    """Pinned versions of everything under test."""
    return {
        **read_env_file(REPO / "hack" / "controlplane" / "versions.env"),
        **read_env_file(KWOK_DIR / "versions.env"),
        **read_env_file(PEER_DIR / "versions.env"),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags; defaults are issue 8's load."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_operator", description=__doc__.splitlines()[0])
    default = Scale()
    parser.add_argument("--quick", action="store_true", help="development load: 50 nodes, 50 + 50/min x 1 min")
    parser.add_argument("--nodes", type=int, help=f"fake GPU nodes (default {default.nodes})")
    parser.add_argument("--jobs", type=int, help=f"jobs submitted at once (default {default.jobs})")
    parser.add_argument("--steady-per-minute", type=float, help=f"default {default.steady_per_minute}")
    parser.add_argument("--steady-minutes", type=float, help=f"default {default.steady_minutes}")
    parser.add_argument("--failures", type=int, help=f"injected pod failures (default {default.failures})")
    parser.add_argument("--nodes-per-job", type=int, help=f"default {default.nodes_per_job}")
    parser.add_argument("--run-seconds", type=float, help=f"pod Running -> Succeeded (default {default.run_seconds})")
    parser.add_argument("--settle-timeout", type=float, help=f"default {default.settle_timeout}")
    parser.add_argument(
        "--gc-timeout",
        type=float,
        help=f"wait for garbage collection after deleting the jobs (default {default.gc_timeout})",
    )
    parser.add_argument(
        "--only", type=lambda text: text.split(","), help="comma-separated runs out of sft,floor,peer (default: all)"
    )
    parser.add_argument("--serve-floor", metavar="NAMESPACE", help=argparse.SUPPRESS)  # the floor client's process
    parser.add_argument("--output", type=Path, default=RESULTS_FILE)
    parser.add_argument("--profile", type=Path, help="py-spy record kube-sft's operator into this file (raw stacks)")
    parser.add_argument("--keep", action="store_true", help="keep the cluster's work dir (logs, audit log)")
    parser.add_argument(
        "--no-cleanup",
        action="store_true",
        help="development: no garbage-collection check, namespaces kept (runs after the first then overlap its leftovers)",
    )
    parser.add_argument(
        "--trace-pods",
        action="store_true",
        help="audit-log every pod write with its bodies (with --keep: who wrote what)",
    )
    return parser.parse_args(argv)


def floor_scale(scale: Scale) -> Scale:
    """The floor's load: the burst only (its jobs never finish, so a steady wave would only queue)."""
    return replace(scale, steady_minutes=0, failures=0)


def scale_from(args: argparse.Namespace) -> Scale:
    """The preset (--quick or the issue's) with any explicit flag applied."""
    scale = QUICK if args.quick else Scale()
    overrides = {
        key: getattr(args, key)
        for key in (
            "nodes",
            "jobs",
            "steady_per_minute",
            "steady_minutes",
            "failures",
            "nodes_per_job",
            "run_seconds",
            "settle_timeout",
            "gc_timeout",
        )
        if getattr(args, key) is not None
    }
    return replace(scale, **overrides)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the results JSON."""
    args = parse_args(argv)
    if args.serve_floor:
        serve_floor(args.serve_floor)
        return 0
    scale = scale_from(args)
    flavours = [flavour for flavour in (SFT, FLOOR, PEER) if flavour.short in (args.only or [flavour.short])]
    kwok_binary()
    if PEER in flavours:
        peer_directory()
    result: Object = {
        "benchmark": "operator-scale (issue 8)",
        "command": "python -m bench.bench_operator " + " ".join(sys.argv[1:] if argv is None else argv),
        "mode": "quick" if args.quick else "custom" if scale != Scale() else "full",
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "scale": asdict(scale),
        "runs": {},
    }
    if args.keep:
        os.environ["KUBE_SFT_KEEP_CLUSTER_DIR"] = "1"
    workdir = Path(tempfile.mkdtemp(prefix="kube-sft-bench-operator-"))
    log(f"starting the control plane in {workdir}")
    plane = TracedControlPlane if args.trace_pods else AuditedControlPlane
    cluster = plane.start(workdir=workdir)
    assert isinstance(cluster, AuditedControlPlane)  # start() is a classmethod typed as ControlPlane
    try:
        client = admin_client(cluster)
        install_crds(cluster, PEER in flavours)
        kubeconfigs = setup_accounts(cluster, client)
        if PEER in flavours:
            peer_webhook_objects(client)
        start_kwok(cluster, scale.run_seconds)
        seconds = create_nodes(client, scale.nodes)
        log(f"{scale.nodes} KWOK nodes Ready in {seconds:.1f}s")
        result["setup"] = {
            "control_plane_seconds": round(cluster.started_in, 1),
            "nodes_ready_seconds": round(seconds, 1),
        }
        for flavour in flavours:
            run = Run(flavour, cluster, client)
            load = floor_scale(scale) if flavour.floor else scale
            result["runs"][flavour.name] = run.execute(
                load, kubeconfigs[flavour.name], args.profile, cleanup=not args.no_cleanup
            )
            summary = result["runs"][flavour.name]
            log(f"{flavour.name}: {json.dumps(summary['latency'])} {json.dumps(summary['process'])}")
    finally:
        cluster.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    result["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    runs = result["runs"]
    result["goals"] = evaluate_goals(runs.get(SFT.name), runs.get(PEER.name), runs.get(FLOOR.name))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    log(f"results -> {args.output}")
    print(json.dumps(result["goals"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
