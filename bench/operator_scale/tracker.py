"""Job tracking: pod and job watch events -> per-job timings, then latencies and the correctness check.
A pure state machine (times are the caller's monotonic clock), unit-tested."""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from bench.operator_scale.flavours import FAIL_ANNOTATION, FINAL_PHASES, Flavour, Object


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
