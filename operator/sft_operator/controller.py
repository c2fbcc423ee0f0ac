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

The lifecycle record (lifecycle.LIFECYCLE_ANNOTATION) is written before the status mirror: the trainer
may patch the status, never the record. The gang's children are created by `sft_operator.gang`; a
create the API server refuses (422, Pod Security, quota, a missing PriorityClass or ServiceAccount)
reaches the decision at once: a permanent refusal fails the job, a transient one restarts the gang
after a back-off, and both say why in a condition and a Warning Event; nothing is retried in a loop.
Which replica may act is `sft_operator.leadership`'s to say.
"""

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from sft_operator import access, metrics, render, runtime
from sft_operator.api import FINISHED_PHASES, SFTJob, SFTJobStatus
from sft_operator.api.runtime import ClusterSFTRuntimeSpec
from sft_operator.cache import Key, Store, job_key
from sft_operator.children import Supporting, refusal_of
from sft_operator.gang import HELD_RETRY_SECONDS, Gang
from sft_operator.kube import Kube
from sft_operator.leadership import Leadership, handover_seconds
from sft_operator.lifecycle import LIFECYCLE_ANNOTATION, lifecycle_record, stored_record, trusted_status
from sft_operator.policy import PodView, Refusal
from sft_operator.status import Event, Observed, Plan, reconcile
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
    peering_name: str | None = "kube-sft"
    """kopf's peering record (None: standalone, a single replica that always acts)."""
    peering_lifetime: int = 20
    priority: int = 0
    identity: str = "kube-sft-operator"
    workers: int = 32
    pod_event_delay: float = 0.5
    create_parallelism: int = 32
    relist_seconds: float = 300.0
    default_runtime: str | None = None
    """The ClusterSFTRuntime of jobs without spec.runtimeRef (None: such jobs get no platform defaults)."""


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


EVENT_THREADS = 4  # Events are recorded off the workers, a few at a time: they never delay a gang
STALE_DELETE_SECONDS = 30.0
"""A pod this operator deleted that the store still shows after this long, beyond its grace period,
makes the resync loop re-list: its DELETED event was missed (a delete made at startup, before kopf's
watch began, is never reported by it). A gang's next attempt waits for the old pods to be gone."""
RECORD_RETRY_SECONDS = 60.0  # after a refused lifecycle-record write, the next try
MAX_REPORTED_FOREIGN = 4096


class Controller:
    """Reconciles SFTJobs; one per operator process, fed by the kopf handlers and the resync loop."""

    def __init__(self, kube: Kube, settings: Settings, store: Store | None = None) -> None:
        self.kube = kube
        self.settings = settings
        self.store = store or Store()
        self.queue: WorkQueue[Key] = WorkQueue()
        metrics.WORK_QUEUE_DEPTH.set_function(lambda: len(self.queue))
        self.phases = metrics.PhaseTracker()
        self.gang = Gang(kube, self.store, self.queue, settings.trainer_image, settings.create_parallelism)
        self.recorder = ThreadPoolExecutor(EVENT_THREADS, thread_name_prefix="event")
        self._spec_checks: dict[Key, tuple[str, str, Refusal | None]] = {}  # (uid, template hash, refusal)
        self._record_refused_until = 0.0  # monotonic time before which the lifecycle record is not written
        self._reported: dict[str, None] = {}  # foreign pod uids already reported in an Event (ordered, bounded)
        self._leading = False
        handover = handover_seconds(settings.resync_seconds, settings.peering_lifetime)
        self.leadership = Leadership(settings.identity, settings.priority, handover, settings.peering_lifetime)
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
        self.gang.stop()
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
        job = job.model_copy(update={"status": trusted_status(job)})
        if not self.gang.verify(key):
            self.queue.add_after(key, HELD_RETRY_SECONDS)
            return
        pods = self.store.pods(key)
        self._report_foreign(raw, key)
        now, observed = datetime.now(UTC).replace(microsecond=0), self._observed(key, job, pods)
        plan = reconcile(job, pods, now, observed)
        # The platform defaults of the pods about to be created (or none, once the spec dropped its runtime).
        resolved = self._read_runtime(job) if plan.create_pods else runtime.NO_RUNTIME
        if plan.create_pods and (resolved != runtime.NO_RUNTIME or job.status.runtime is not None):
            observed = replace(observed, runtime=resolved)
            plan = reconcile(job, pods, now, observed)
        if plan.create_pods and (denied := self._access_refusal(raw)) is not None:
            plan = reconcile(job, pods, now, replace(observed, access_refusal=denied))
        self.apply(raw, job, plan, resolved.defaults)
        record.release_model()

    def _observed(self, key: Key, job: SFTJob, pods: list[PodView]) -> Observed:
        """What this operator knows about the job beyond its pods (see status.Observed)."""
        taught = self.gang.observed(key, job.metadata.uid, job.status.attempt)
        return replace(
            taught,
            had_pods=self.store.had_pods(key, job.status.attempt),
            spec_refusal=self._spec_refusal(job, pods),
        )

    def _spec_refusal(self, job: SFTJob, pods: list[PodView]) -> Refusal | None:
        """For an edited spec (running pods of another template), whether the API server would refuse
        the new pods (a dry-run create of rank 0, once per spec): then the running gang is kept.
        Quota refusals do not count: the running gang itself holds the quota the new one needs."""
        if job.status.phase in FINISHED_PHASES or job.status.attempt_start_time is None:
            return None
        desired = render.template_hash(job)
        if not any(pod.template_hash and pod.template_hash != desired for pod in pods if not pod.deleting):
            return None
        key = (job.metadata.namespace, job.metadata.name)
        checked = self._spec_checks.get(key)
        if checked is not None and checked[:2] == (job.metadata.uid, desired):
            return checked[2]
        status = job.status.model_copy(update={"attempt": job.status.attempt + 1})
        defaults = self._read_runtime(job).defaults
        candidate = render.pod(job.model_copy(update={"status": status}), 0, self.settings.trainer_image, defaults)
        refusal: Refusal | None = None
        try:
            self.kube.create(candidate, dry_run=True)
        except ApiException as error:
            found = refusal_of(candidate, error, render.Names(job.metadata.name).service_account)
            refusal = found if found.permanent and error.status != 409 else None
        self._spec_checks[key] = (job.metadata.uid, desired, refusal)
        return refusal

    def _read_runtime(self, job: SFTJob) -> runtime.Resolution:
        """The job's platform defaults as stored now (one GET; none without a runtime to apply)."""
        choice = runtime.choose(job.spec, self.settings.default_runtime)
        if choice is None:
            return runtime.NO_RUNTIME
        try:
            return runtime.resolve(choice, self.kube.get_runtime(choice.name))
        except ApiException as error:
            if error.status != 403:
                raise
            return runtime.forbidden(choice, str(error.reason))

    def _access_refusal(self, raw: Object) -> Refusal | None:
        """Before a gang is created (first attempt, every restart): whether the job's recorded creator
        still holds every right the job uses (SubjectAccessReviews; see sft_operator.access). A job
        with no recorded creator (created without the chart's admission policies) is not checked; a
        check the operator may not make holds the gang back (fail closed), it never skips the check."""
        if access.creator_of(raw) is None:
            return None
        try:
            return access.access_refusal(self.kube.authorization, raw)
        except ApiException as error:
            if error.status != 403:
                raise
            return access.pending_refusal(raw, f"the operator may not create subjectaccessreviews: {error.reason}")

    def _report_foreign(self, raw: Object, key: Key) -> None:
        """A Warning Event, once per pod, for pods that carry the job's label but are not its own."""
        fresh = [pod for pod in self.store.foreign(key) if not pod.deleting and pod.uid not in self._reported]
        if not fresh:
            return
        for pod in fresh:
            self._reported[pod.uid] = None
        while len(self._reported) > MAX_REPORTED_FOREIGN:
            self._reported.pop(next(iter(self._reported)))
        events = [
            Event(
                "Warning",
                "ForeignPod",
                f"pod {pod.name} carries this job's {render.LABEL_JOB} label but is not owned by it "
                f"(controller uid {pod.owner or 'none'}): ignored, never counted, restarted or deleted",
            )
            for pod in fresh
        ]
        self.recorder.submit(self._record, raw, events)

    def apply(self, raw: Object, job: SFTJob, plan: Plan, defaults: ClusterSFTRuntimeSpec | None = None) -> None:
        """Write the decision: status first, then pods, then Events (queued, recorded off this thread).
        `defaults`: the platform defaults of the pods to create (the job's runtime, read for this decision).

        A new gang's supporting objects are not tied to an attempt, so they are created while the
        status is written; its pods only once both are done.
        """
        namespace, name = job.metadata.namespace, job.metadata.name
        key = (namespace, name)
        supporting = self.gang.start_supporting(job) if plan.create_pods else Supporting()
        if not self._write_record(key, job, plan):
            return
        patch = status_patch(raw.get("status") or {}, job.status, plan.status)
        if patch:
            written = self.kube.patch_job_status(namespace, name, patch)
            if written is None:
                self.forget(key)  # deleted meanwhile (the supporting objects go with it: owner references)
                return
            self.store.put_job(written)
        for pod in plan.delete_pods:
            self.kube.delete_pod(namespace, pod.name, pod.uid)
            self.store.mark_deleting(key, pod.name, pod.uid, job.spec.pod.termination_grace_period_seconds)
        if plan.create_pods:
            self.gang.create(job.model_copy(update={"status": plan.status}), supporting, defaults)
        if plan.events:
            self.recorder.submit(self._record, raw, plan.events)
        reason = plan.status.last_failure.reason if plan.status.last_failure else (plan.status.reason or "")
        metrics.record_transition(
            job.status.phase,
            plan.status.phase,
            job.status.restarts,
            plan.status.restarts,
            reason,
            created_at=job.metadata.creation_timestamp,
        )
        self.phases.set(namespace, name, plan.status.phase)
        if plan.delete_job:
            self.kube.delete_job(namespace, name, job.metadata.uid)
            self.forget(key)

    def _write_record(self, key: Key, job: SFTJob, plan: Plan) -> bool:
        """Write the lifecycle record when it changed; False when the job is gone.

        Without `patch` on sftjobs (a chart older than this operator, or an API server whose RBAC
        caches are still filling after a restart) the record cannot be kept: the operator says so,
        works from the status alone, and tries again RECORD_RETRY_SECONDS later."""
        record = lifecycle_record(plan.status)
        if time.monotonic() < self._record_refused_until or record == stored_record(job):
            return True
        annotation = json.dumps(record, sort_keys=True, separators=(",", ":"))
        try:
            written = self.kube.patch_job_metadata(*key, {"annotations": {LIFECYCLE_ANNOTATION: annotation}})
        except ApiException as error:
            if error.status != 403:
                raise
            self._record_refused_until = time.monotonic() + RECORD_RETRY_SECONDS
            log.error("no right to patch sftjobs (%s): lifecycle facts are read from the status", error.reason)
            return True
        if written is None:
            self.forget(key)
            return False
        self.store.put_job(written)
        return True

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
        record = {"phase": "Failed", "reason": "InvalidSpec", "message": message}
        annotation = {LIFECYCLE_ANNOTATION: json.dumps(record, sort_keys=True, separators=(",", ":"))}
        try:
            if self.kube.patch_job_metadata(meta["namespace"], meta["name"], {"annotations": annotation}) is None:
                return
        except ApiException as error:
            if error.status != 403:
                raise
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
        self._spec_checks.pop(key, None)
        self.gang.forget(key)

    # --- the resync loop --------------------------------------------------------------------------

    def leads(self) -> bool:
        """Whether this replica may act now (kopf's peering record decides who is active, and a replica
        that became active waits `leadership.handover_seconds`); a standalone replica always may."""
        if self.settings.peering_name is None:
            return True
        namespace = None if not self.settings.namespaces else self.settings.namespaces[0]
        peers = self.kube.peering_status(self.settings.peering_name, namespace)
        return self.leadership.leads(peers, datetime.now(UTC), time.monotonic())

    def relist(self, startup: bool = False) -> None:
        """Re-read every job, then every pod (paginated lists), correct the store, mark what changed dirty.

        Runs at startup before kopf's watches start and on becoming the active replica: until then
        the workers wait, since a job whose pods are not in the store yet would look like a gang
        with missing ranks. After the startup list the first resync lists once more: what the
        workers changed before kopf's watches began (a pod deleted then) no watch ever reports.
        A replica that does not lead at startup leaves its workers waiting for the resync loop.
        """
        changed = set(self.store.replace_jobs(self.kube.list_jobs(self.settings.namespaces)))
        changed |= self.store.replace_pods(self.kube.list_pods(self.settings.namespaces))
        for key in changed:
            self.queue.add(key)
        self._relisted = time.monotonic()
        self._leading = not startup
        if startup and not self.leads():
            metrics.IS_LEADER.set(0)
            return
        self.synced.set()

    def resync(self) -> None:
        """Mark every live job dirty (time-based decisions: backoff, deadlines, stalls, TTL).

        On becoming the leader, and every `relist_seconds`, re-list first: a standby's store may be
        stale, and a watch that expired and re-listed sends no DELETED events for what went meanwhile.
        """
        leading = self.leads()
        metrics.IS_LEADER.set(1 if leading else 0)
        self.last_resync = time.monotonic()
        if not leading:
            self._leading = False
            self.synced.clear()  # paused: the store goes stale until the next relist
            return
        since = time.monotonic() - self._relisted
        if (
            not self._leading
            or since >= self.settings.relist_seconds
            or (since >= STALE_DELETE_SECONDS and self.store.deleting_longer_than(STALE_DELETE_SECONDS))
        ):
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
