"""Operator metrics (prometheus-client), served on `--metrics-port`.

The chart's dashboard and alerts may use only names that `exported_names()` lists (a test checks).
"""

import threading
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.metrics_core import Metric

from sft_operator.api import Phase

REGISTRY = CollectorRegistry(auto_describe=True)
PHASES: tuple[Phase, ...] = ("Pending", "Suspended", "Initializing", "Running", "Restarting", "Succeeded", "Failed")

JOBS = Gauge("kube_sft_jobs", "SFTJobs seen by this operator replica, by phase.", ["phase"], registry=REGISTRY)
for _phase in PHASES:
    JOBS.labels(phase=_phase).set(0)  # every phase's series exists from the start
JOBS_CREATED = Counter("kube_sft_jobs_created", "SFTJobs whose first gang was created.", registry=REGISTRY)
JOBS_SUCCEEDED = Counter("kube_sft_jobs_succeeded", "SFTJobs that finished successfully.", registry=REGISTRY)
JOBS_FAILED = Counter("kube_sft_jobs_failed", "SFTJobs that failed, by reason.", ["reason"], registry=REGISTRY)
JOB_RESTARTS = Counter(
    "kube_sft_job_restarts", "Gang restarts after a failure, by failure reason.", ["reason"], registry=REGISTRY
)
RECONCILE_SECONDS = Histogram(
    "kube_sft_reconcile_duration_seconds",
    "Time to reconcile one SFTJob (API reads, decision, writes).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "kube_sft_reconcile_errors", "Reconciles that raised, by exception type.", ["error"], registry=REGISTRY
)
PODS_CREATED = Counter("kube_sft_pods_created", "Trainer pods created.", registry=REGISTRY)
IS_LEADER = Gauge("kube_sft_operator_leader", "1 on the active operator replica, 0 on standbys.", registry=REGISTRY)
ProcessCollector(registry=REGISTRY)  # process_cpu_seconds_total, process_resident_memory_bytes, open fds, start time
WORK_QUEUE_DEPTH = Gauge(
    "kube_sft_workqueue_depth", "Job keys ready and waiting for a reconcile worker.", registry=REGISTRY
)
TIME_TO_RUNNING = Histogram(
    "kube_sft_job_time_to_running_seconds",
    "Seconds from an SFTJob's creation to its first Running phase (scheduling, image pulls, gang start).",
    buckets=(5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600),
    registry=REGISTRY,
)


class PhaseTracker:
    """Remembers each job's phase so `kube_sft_jobs{phase}` counts jobs, not transitions (thread-safe)."""

    def __init__(self) -> None:
        self._phases: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def set(self, namespace: str, name: str, phase: str | None) -> None:
        """Record a job's phase (None forgets the job); only a change touches the gauge."""
        with self._lock:
            old = self._phases.pop((namespace, name), None)
            if phase is not None:
                self._phases[(namespace, name)] = phase
            if old == phase:
                return
            for each, step in ((old, -1), (phase, 1)):
                if each in PHASES:
                    JOBS.labels(phase=each).inc(step)


def record_transition(
    old_phase: str | None,
    new_phase: str | None,
    old_restarts: int,
    new_restarts: int,
    reason: str,
    created_at: datetime | None = None,
    now: datetime | None = None,
) -> None:
    """Count what changed between two statuses of one job (`created_at`: the job's creationTimestamp)."""
    if new_phase == "Running" and old_phase != "Running" and new_restarts == 0 and created_at is not None:
        TIME_TO_RUNNING.observe(max(0.0, ((now or datetime.now(UTC)) - created_at).total_seconds()))
    if old_phase is None and new_phase is not None:
        JOBS_CREATED.inc()
    if new_phase != old_phase and new_phase == "Succeeded":
        JOBS_SUCCEEDED.inc()
    if new_phase != old_phase and new_phase == "Failed":
        JOBS_FAILED.labels(reason=reason).inc()
    if new_restarts > old_restarts:
        JOB_RESTARTS.labels(reason=reason).inc(new_restarts - old_restarts)


def sample_names(metric: Metric) -> set[str]:
    """Names a metric family exposes in the text format (`_total`, `_bucket`, ...)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("_sum", "_count", "_created"),
        "gauge": ("",),
        "info": ("_info",),
    }.get(metric.type, ("",))
    return {metric.name + suffix for suffix in suffixes}


def exported_names(registry: CollectorRegistry) -> set[str]:
    """Every series name a registry can expose, with or without samples yet."""
    names: set[str] = set()
    for metric in registry.collect():
        names |= sample_names(metric)
    return names
