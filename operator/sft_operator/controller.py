"""Apply reconcile decisions: read the job and its pods, decide (status.reconcile), write the result.

The order of writes makes a crash at any point safe: the new status (attempt, restarts) is written
first, then pods are deleted or created, then Events are recorded. A second reconcile — after a
crash, or on the standby replica after fail-over — sees the written status and finishes the work.
"""

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from sft_operator import metrics, render
from sft_operator.api import FINISHED_PHASES, SFTJob, SFTJobStatus
from sft_operator.kube import Kube
from sft_operator.status import Event, Plan, pod_view, reconcile

log = logging.getLogger(__name__)
Object = dict[str, Any]
TRAINER_OWNED = frozenset({"progress", "metrics", "latestCheckpoint", "finalModel"})


@dataclass
class Settings:
    """Operator configuration (command-line flags / chart values)."""

    namespaces: list[str] = field(default_factory=list)
    trainer_image: str = render.DEFAULT_IMAGE
    resync_seconds: float = 5.0
    peering_name: str = "kube-sft"
    peering_lifetime: int = 20
    priority: int = 0
    identity: str = "kube-sft-operator"


def status_patch(stored: Object, old: SFTJobStatus, new: SFTJobStatus) -> Object:
    """The merge patch from the stored status to `new`: changed keys only, removed keys as null.

    Operator-owned keys are compared with what is stored (so defaults such as `restarts: 0` get
    written once). Trainer-owned keys are sent only when the operator itself changed them (the final
    model read from the termination message), so a concurrent trainer patch is never overwritten.
    """
    before, after = old.wire(), new.wire()
    patch: Object = {}
    for key, value in after.items():
        reference = before if key in TRAINER_OWNED else stored
        if reference.get(key) != value:
            patch[key] = value
    patch.update({key: None for key in stored if key not in after and key not in TRAINER_OWNED})
    return patch


FINISHED_RESYNC_WINDOW = timedelta(minutes=5)


def needs_resync(raw: Object, now: datetime) -> bool:
    """Whether the periodic resync should look at this job: active ones always; finished ones only
    while their pods may still need cleaning up, or when a TTL will delete them."""
    status = raw.get("status") or {}
    if status.get("phase") not in FINISHED_PHASES:
        return True
    if ((raw.get("spec") or {}).get("runPolicy") or {}).get("ttlSecondsAfterFinished") is not None:
        return True
    completed = status.get("completionTime")
    if not completed:
        return True
    return now - datetime.fromisoformat(str(completed).replace("Z", "+00:00")) < FINISHED_RESYNC_WINDOW


def is_active(peers: Object | None, identity: str, priority: int, now: datetime) -> bool:
    """kopf's peering rule, for the resync loop: active unless another live peer has >= priority."""
    for peer_id, info in (peers or {}).items():
        if peer_id == identity or not isinstance(info, dict):
            continue
        lastseen = info.get("lastseen")
        if lastseen is None:
            continue
        seen = datetime.fromisoformat(str(lastseen).replace("Z", "+00:00"))
        alive = seen + timedelta(seconds=int(info.get("lifetime", 60))) > now
        if alive and int(info.get("priority", 0)) >= priority:
            return False
    return True


class Controller:
    """Reconciles SFTJobs; one instance per operator process, shared by kopf handlers and the resync loop."""

    def __init__(self, kube: Kube, settings: Settings) -> None:
        self.kube = kube
        self.settings = settings
        self.phases = metrics.PhaseTracker()
        self._locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
        self._locks_guard = threading.Lock()
        self.last_resync = time.monotonic()

    def _lock(self, namespace: str, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks[(namespace, name)]

    def reconcile(self, namespace: str, name: str) -> None:
        """Bring one job closer to its desired state (serialised per job)."""
        with self._lock(namespace, name), metrics.RECONCILE_SECONDS.time():
            try:
                self._reconcile(namespace, name)
            except Exception as error:
                metrics.RECONCILE_ERRORS.labels(error=type(error).__name__).inc()
                raise

    def _reconcile(self, namespace: str, name: str) -> None:
        raw = self.kube.get_job(namespace, name)
        if raw is None:
            self.forget(namespace, name)
            return
        if raw["metadata"].get("deletionTimestamp"):
            return  # garbage collection removes the children
        try:
            job = SFTJob.model_validate(raw)
        except ValidationError as error:
            self._refuse(raw, error)
            return
        pods = [pod_view(pod) for pod in self.kube.list_pods(namespace, name)]
        plan = reconcile(job, pods, datetime.now(UTC).replace(microsecond=0))
        self.apply(raw, job, plan)

    def apply(self, raw: Object, job: SFTJob, plan: Plan) -> None:
        """Write the decision: status first, then pods, then Events."""
        namespace, name = job.metadata.namespace, job.metadata.name
        patch = status_patch(raw.get("status") or {}, job.status, plan.status)
        if patch:
            self.kube.patch_job_status(namespace, name, patch)
        for pod in plan.delete_pods:
            self.kube.delete_pod(namespace, pod.name, pod.uid)
        if plan.create_pods:
            self._create_gang(job.model_copy(update={"status": plan.status}))
        for event in plan.events:
            self.kube.record_event(raw, event)
        reason = plan.status.last_failure.reason if plan.status.last_failure else (plan.status.reason or "")
        metrics.record_transition(
            job.status.phase, plan.status.phase, job.status.restarts, plan.status.restarts, reason
        )
        self.phases.set(namespace, name, plan.status.phase)
        if plan.delete_job:
            self.kube.delete_job(namespace, name, job.metadata.uid)
            self.forget(namespace, name)

    def _create_gang(self, job: SFTJob) -> None:
        for obj in render.supporting_objects(job):
            self.kube.create(obj)
        for pod in render.pods(job, self.settings.trainer_image):
            if self.kube.create(pod):
                metrics.PODS_CREATED.inc()

    def _refuse(self, raw: Object, error: ValidationError) -> None:
        """A spec the CRD let through but the models refuse: fail it once, with the reason."""
        status = raw.get("status") or {}
        if status.get("phase") in FINISHED_PHASES:
            return
        message = "; ".join(f"{'.'.join(map(str, item['loc']))}: {item['msg']}" for item in error.errors())[:4000]
        meta = raw["metadata"]
        self.kube.patch_job_status(
            meta["namespace"],
            meta["name"],
            {
                "phase": "Failed",
                "reason": "InvalidSpec",
                "message": message,
                "observedGeneration": meta.get("generation"),
            },
        )
        self.kube.record_event(raw, Event("Warning", "InvalidSpec", message))
        metrics.JOBS_FAILED.labels(reason="InvalidSpec").inc()

    def forget(self, namespace: str, name: str) -> None:
        """Drop in-memory state of a deleted job."""
        self.phases.set(namespace, name, None)
        with self._locks_guard:
            self._locks.pop((namespace, name), None)

    def active(self) -> bool:
        """Whether this replica leads (kopf's peering record decides)."""
        namespace = None if not self.settings.namespaces else self.settings.namespaces[0]
        peers = self.kube.peering_status(self.settings.peering_name, namespace)
        return is_active(peers, self.settings.identity, self.settings.priority, datetime.now(UTC))

    def resync(self) -> None:
        """Reconcile every job once (time-based decisions: backoff, deadlines, stalls, TTL)."""
        leading = self.active()
        metrics.IS_LEADER.set(1 if leading else 0)
        self.last_resync = time.monotonic()
        if not leading:
            return
        now = datetime.now(UTC)
        for raw in self.kube.list_jobs(self.settings.namespaces):
            if not needs_resync(raw, now):
                continue
            meta = raw["metadata"]
            try:
                self.reconcile(meta["namespace"], meta["name"])
            except Exception:
                log.exception("reconcile of %s/%s failed", meta["namespace"], meta["name"])

    def resync_forever(self, stop: threading.Event) -> None:
        """The resync loop (a daemon thread started by the kopf startup handler)."""
        while not stop.wait(self.settings.resync_seconds):
            try:
                self.resync()
            except Exception:
                log.exception("resync failed")
