"""Apply reconcile decisions: take the job and its pods from the store, decide (status.reconcile), write.

Watch events (kopf) only update the store (`cache.Store`) and mark the job dirty in a work queue;
`--workers` threads drain it, one job at a time per job, so a burst of events for one job costs one
reconcile and no API reads. The resync loop marks every live job dirty every `--resync-seconds`
(time-based decisions) and re-lists jobs and pods every `--relist-seconds` (what a watch gap hid).

The order of writes makes a crash at any point safe: the new status (attempt, restarts) is written
first, then pods are deleted or created, then Events are recorded. A second reconcile — after a
crash, or on the standby replica after fail-over — sees the written status and finishes the work.
What a write returns goes into the store at once, so the next reconcile never decides from a state
older than this operator's own last write.
"""

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from sft_operator import metrics, render
from sft_operator.api import FINISHED_PHASES, SFTJob, SFTJobStatus
from sft_operator.cache import Key, Store, job_key
from sft_operator.kube import Kube
from sft_operator.status import Event, Plan, missing_ranks, reconcile
from sft_operator.workqueue import WorkQueue

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
    workers: int = 32
    pod_event_delay: float = 0.5
    create_parallelism: int = 32
    relist_seconds: float = 300.0


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


SECOND_WAVE_KINDS = frozenset({"RoleBinding", "Pod"})
EVENT_THREADS = 4  # Events are recorded off the workers, a few at a time: they never delay a gang


def creation_waves(objects: list[Object]) -> list[list[Object]]:
    """Objects in two waves of concurrent creates: a RoleBinding needs its Role to exist (the API
    server checks the binder holds the Role's rights), a Pod its ServiceAccount (admission)."""
    first = [obj for obj in objects if obj["kind"] not in SECOND_WAVE_KINDS]
    second = [obj for obj in objects if obj["kind"] in SECOND_WAVE_KINDS]
    return [wave for wave in (first, second) if wave]


def pod_waves(with_pods: list[Object], pods: list[Object], attempt: int) -> list[list[Object]]:
    """The gang's creates, in waves of concurrent calls: one wave, except in a restarted gang, whose
    rank 0 goes first: its pod name is no longer its hostname, so a worker must not start before the
    pod that answers for `<job>-node-0` exists (a resolver that looks the hostname up once, at the
    worker's start, would find nothing, or the previous attempt's rank 0)."""
    rank0 = [pod for pod in pods if attempt > 0 and pod["metadata"]["labels"][render.LABEL_RANK] == "0"]
    rest = [pod for pod in pods if pod not in rank0]
    return [wave for wave in (with_pods + rank0, rest) if wave]


@dataclass
class Supporting:
    """A new job's supporting objects on their way: the first wave in flight, what goes with the pods."""

    started: list[Future[Object | None]] = field(default_factory=list)
    with_pods: list[Object] = field(default_factory=list)


class Controller:
    """Reconciles SFTJobs; one per operator process, fed by the kopf handlers and the resync loop."""

    def __init__(self, kube: Kube, settings: Settings, store: Store | None = None) -> None:
        self.kube = kube
        self.settings = settings
        self.store = store or Store()
        self.queue: WorkQueue[Key] = WorkQueue()
        self.phases = metrics.PhaseTracker()
        self.creator = ThreadPoolExecutor(settings.create_parallelism, thread_name_prefix="create")
        self.recorder = ThreadPoolExecutor(EVENT_THREADS, thread_name_prefix="event")
        self._supported: dict[Key, str] = {}  # job -> uid whose Service, ConfigMap, RBAC exist
        self._leading = False
        self._relisted = float("-inf")
        self.synced = threading.Event()  # the store holds a full list: workers may decide from it
        self.last_resync = time.monotonic()

    # --- what the watches say -------------------------------------------------------------------

    def job_event(self, kind: str | None, raw: dict[str, Any]) -> None:
        """An SFTJob watch event: store it and mark it dirty (a DELETED job is forgotten)."""
        key = job_key(raw)
        if kind == "DELETED":
            self.forget(key)
        elif self.store.put_job(raw):
            self.queue.add(key)

    def pod_event(self, kind: str | None, raw: dict[str, Any]) -> None:
        """A trainer pod watch event: store it and mark its job dirty."""
        key = self.store.drop_pod(raw) if kind == "DELETED" else self.store.put_pod(raw)
        if key is not None:
            self.queue.add_after(key, self.settings.pod_event_delay)

    # --- the workers ------------------------------------------------------------------------------

    def work(self) -> None:
        """A worker: reconcile dirty jobs until the queue is closed."""
        while (key := self.queue.get()) is not None:
            try:
                self.synced.wait()  # never decide "pods missing" from a store still filling up
                self.reconcile(key)
            except Exception:
                log.exception("reconcile of %s/%s failed", *key)
            finally:
                self.queue.done(key)

    def start(self) -> None:
        """Start the workers and the resync loop (daemon threads)."""
        for index in range(self.settings.workers):
            threading.Thread(target=self.work, name=f"reconcile-{index}", daemon=True).start()

    def stop(self) -> None:
        """Let the workers finish their current job and exit."""
        self.queue.close()
        self.creator.shutdown(wait=False, cancel_futures=True)
        self.recorder.shutdown(wait=False)

    def reconcile(self, key: Key) -> None:
        """Bring one job closer to its desired state (the work queue serialises it per job)."""
        with metrics.RECONCILE_SECONDS.time():
            try:
                self._reconcile(key)
            except Exception as error:
                metrics.RECONCILE_ERRORS.labels(error=type(error).__name__).inc()
                raise

    def _reconcile(self, key: Key) -> None:
        record = self.store.job(key)
        if record is None:
            return  # not seen yet, or deleted: its events bring it back
        raw = record.raw
        if raw["metadata"].get("deletionTimestamp"):
            return  # garbage collection removes the children
        try:
            job = record.validated()
        except ValidationError as error:
            self._refuse(raw, error)
            return
        plan = reconcile(job, self.store.pods(key), datetime.now(UTC).replace(microsecond=0))
        self.apply(raw, job, plan)
        record.release_model()

    def apply(self, raw: Object, job: SFTJob, plan: Plan) -> None:
        """Write the decision: status first, then pods, then Events (queued, recorded off this thread).

        A new gang's supporting objects are not tied to an attempt, so they are created while the
        status is written; its pods only once both are done.
        """
        namespace, name = job.metadata.namespace, job.metadata.name
        key = (namespace, name)
        supporting = self._create_supporting(job) if plan.create_pods else Supporting()
        patch = status_patch(raw.get("status") or {}, job.status, plan.status)
        if patch:
            written = self.kube.patch_job_status(namespace, name, patch)
            if written is None:
                self.forget(key)  # deleted meanwhile (the supporting objects go with it: owner references)
                return
            self.store.put_job(written)
        for pod in plan.delete_pods:
            self.kube.delete_pod(namespace, pod.name, pod.uid)
            self.store.mark_deleting(key, pod.name, pod.uid)
        if plan.create_pods:
            self._create_gang(job.model_copy(update={"status": plan.status}), supporting)
        if plan.events:
            self.recorder.submit(self._record, raw, plan.events)
        reason = plan.status.last_failure.reason if plan.status.last_failure else (plan.status.reason or "")
        metrics.record_transition(
            job.status.phase, plan.status.phase, job.status.restarts, plan.status.restarts, reason
        )
        self.phases.set(namespace, name, plan.status.phase)
        if plan.delete_job:
            self.kube.delete_job(namespace, name, job.metadata.uid)
            self.forget(key)

    def _create_supporting(self, job: SFTJob) -> Supporting:
        """Start creating a new job's supporting objects (once per job): the first wave now, in the
        background; the RoleBinding goes with the pods."""
        key = (job.metadata.namespace, job.metadata.name)
        if self._supported.get(key) == job.metadata.uid:
            return Supporting()
        first, second = creation_waves(render.supporting_objects(job))
        return Supporting([self.creator.submit(self.kube.create, obj) for obj in first], second)

    def _create_gang(self, job: SFTJob, supporting: Supporting) -> None:
        """Create what the gang lacks, concurrently: once the supporting objects' first wave is done,
        the rest of them and the missing ranks' pods. Objects that exist already (409) count as created."""
        key = (job.metadata.namespace, job.metadata.name)
        for future in supporting.started:
            future.result()
        ranks = missing_ranks(self.store.pods(key), job.status.attempt, job.spec.resources.num_nodes)
        pods = [render.pod(job, rank, self.settings.trainer_image) for rank in ranks]
        for wave in pod_waves(supporting.with_pods, pods, job.status.attempt):
            for obj, created in zip(wave, self.creator.map(self.kube.create, wave), strict=True):
                if obj["kind"] == "Pod" and created is not None:
                    self.store.put_pod(created)
                    metrics.PODS_CREATED.inc()
        self._supported[key] = job.metadata.uid

    def _record(self, raw: Object, events: list[Event]) -> None:
        """Record one decision's Events, in order (on the recorder's threads; failures are logged)."""
        try:
            for event in events:
                self.kube.record_event(raw, event)
        except Exception:
            log.exception("recording events of %s failed", raw["metadata"].get("name"))

    def _refuse(self, raw: Object, error: ValidationError) -> None:
        """A spec the CRD let through but the models refuse: fail it once, with the reason."""
        status = raw.get("status") or {}
        if status.get("phase") in FINISHED_PHASES:
            return
        message = "; ".join(f"{'.'.join(map(str, item['loc']))}: {item['msg']}" for item in error.errors())[:4000]
        meta = raw["metadata"]
        written = self.kube.patch_job_status(
            meta["namespace"],
            meta["name"],
            {
                "phase": "Failed",
                "reason": "InvalidSpec",
                "message": message,
                "observedGeneration": meta.get("generation"),
            },
        )
        if written is not None:
            self.store.put_job(written)
        self.kube.record_event(raw, Event("Warning", "InvalidSpec", message))
        metrics.JOBS_FAILED.labels(reason="InvalidSpec").inc()

    def forget(self, key: Key) -> None:
        """Drop everything held about a deleted job."""
        self.store.drop_job(key)
        self.phases.set(*key, None)
        self._supported.pop(key, None)

    # --- the resync loop --------------------------------------------------------------------------

    def active(self) -> bool:
        """Whether this replica leads (kopf's peering record decides)."""
        namespace = None if not self.settings.namespaces else self.settings.namespaces[0]
        peers = self.kube.peering_status(self.settings.peering_name, namespace)
        return is_active(peers, self.settings.identity, self.settings.priority, datetime.now(UTC))

    def relist(self) -> None:
        """Re-read every job, then every pod (paginated lists), correct the store, mark what changed dirty.

        Runs at startup before kopf's watches start and on becoming the active replica: until then
        the workers wait, since a job whose pods are not in the store yet would look like a gang
        with missing ranks.
        """
        changed = set(self.store.replace_jobs(self.kube.list_jobs(self.settings.namespaces)))
        changed |= self.store.replace_pods(self.kube.list_pods(self.settings.namespaces))
        for key in changed:
            self.queue.add(key)
        self._relisted = time.monotonic()
        self._leading = True
        self.synced.set()

    def resync(self) -> None:
        """Mark every live job dirty (time-based decisions: backoff, deadlines, stalls, TTL).

        On becoming the leader, and every `relist_seconds`, re-list first: a standby's store may be
        stale, and a watch that expired and re-listed sends no DELETED events for what went meanwhile.
        """
        leading = self.active()
        metrics.IS_LEADER.set(1 if leading else 0)
        self.last_resync = time.monotonic()
        if not leading:
            self._leading = False
            self.synced.clear()  # paused: the store goes stale until the next relist
            return
        if not self._leading or time.monotonic() - self._relisted >= self.settings.relist_seconds:
            self.relist()
        now = datetime.now(UTC)
        for record in self.store.jobs():
            if needs_resync(record.raw, now):
                self.queue.add(job_key(record.raw))

    def resync_forever(self, stop: threading.Event) -> None:
        """The resync loop (a daemon thread started by the kopf startup handler)."""
        while not stop.wait(self.settings.resync_seconds):
            try:
                self.resync()
            except Exception:
                log.exception("resync failed")
