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

The lifecycle record (status.LIFECYCLE_ANNOTATION) is written before the status mirror: the trainer
may patch the status, never the record. Children are the job's only by controller owner-reference uid:
a create answered "already exists" by another owner's object is never taken as the job's own; the
gang waits (and retries) until garbage collection removes it. A create the API server refuses (422,
Pod Security, quota, a missing PriorityClass or ServiceAccount) reaches the decision at once: a
permanent refusal fails the job, a transient one restarts the gang after a back-off, and both say why
in a condition and a Warning Event; nothing is retried in a loop.
"""

import json
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from sft_operator import access, metrics, render, runtime
from sft_operator.api import FINISHED_PHASES, SFTJob, SFTJobStatus
from sft_operator.api.runtime import ClusterSFTRuntimeSpec
from sft_operator.cache import Key, Store, job_key
from sft_operator.kube import Kube
from sft_operator.policy import PodView, Refusal, classify_refusal
from sft_operator.status import (
    LIFECYCLE_ANNOTATION,
    Event,
    Observed,
    Plan,
    lifecycle_record,
    missing_ranks,
    reconcile,
    stored_record,
    trusted_status,
)
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


def live_peer_priorities(peers: Object | None, identity: str, now: datetime) -> list[int]:
    """The priorities of the other replicas whose peering record is alive (seen within its lifetime)."""
    priorities = []
    for peer_id, info in (peers or {}).items():
        if peer_id == identity or not isinstance(info, dict) or info.get("lastseen") is None:
            continue
        seen = datetime.fromisoformat(str(info["lastseen"]).replace("Z", "+00:00"))
        if seen + timedelta(seconds=int(info.get("lifetime", 60))) > now:
            priorities.append(int(info.get("priority", 0)))
    return priorities


def is_active(peers: Object | None, identity: str, priority: int, now: datetime) -> bool:
    """kopf's peering rule, for the resync loop: active unless another live peer has >= priority."""
    return all(other < priority for other in live_peer_priorities(peers, identity, now))


def may_lead(active_since: float | None, now: float, handover_seconds: float) -> bool:
    """Whether a replica active by the peering rule since `active_since` (monotonic; -inf when no
    other replica was alive then) may act at `now`. A replica that takes over from a live one waits
    `handover_seconds`, longer than the other's resync period: by then it has seen the change and
    paused, so two replicas never decide at once. One that found no live replica acts at once."""
    return active_since is not None and now - active_since >= handover_seconds


SECOND_WAVE_KINDS = frozenset({"RoleBinding", "Pod"})
EVENT_THREADS = 4  # Events are recorded off the workers, a few at a time: they never delay a gang
HELD_RETRY_SECONDS = 1.0  # a child's name held by another owner: look again this soon
HANDOVER_MARGIN_SECONDS = 1.0  # beyond the resync period: a hand-over waits it out (may_lead)
STALE_DELETE_SECONDS = 30.0
"""A pod this operator deleted that the store still shows after this long, beyond its grace period,
makes the resync loop re-list: its DELETED event was missed (a delete made at startup, before kopf's
watch began, is never reported by it). A gang's next attempt waits for the old pods to be gone."""
MAX_REPORTED_FOREIGN = 4096


def creation_waves(objects: list[Object]) -> list[list[Object]]:
    """Objects in two waves of concurrent creates: a RoleBinding needs its Role to exist (the API
    server checks the binder holds the Role's rights), a Pod its ServiceAccount (admission)."""
    first = [obj for obj in objects if obj["kind"] not in SECOND_WAVE_KINDS]
    second = [obj for obj in objects if obj["kind"] in SECOND_WAVE_KINDS]
    return [wave for wave in (first, second) if wave]


def controller_uid(obj: Object | None) -> str | None:
    """The uid of an object's controller owner reference (None when it has none)."""
    refs = ((obj or {}).get("metadata") or {}).get("ownerReferences") or []
    return next((str(ref.get("uid")) for ref in refs if ref.get("controller")), None)


def foreign_names(results: list[tuple[Object, Object | None]], uid: str) -> list[str]:
    """`Kind/name` of each create whose object (as created or found) is not owned by `uid`."""
    return [f"{obj['kind']}/{obj['metadata']['name']}" for obj, found in results if controller_uid(found) != uid]


def held_pod_names(pods: list[Object], foreign: list[PodView]) -> list[str]:
    """`Pod/name` of each pod to create whose name a pod of another owner holds."""
    taken = {pod.name for pod in foreign}
    return [f"Pod/{pod['metadata']['name']}" for pod in pods if pod["metadata"]["name"] in taken]


def outcome_unknown(obj: Object, outcome: object) -> bool:
    """Whether a pod create may have happened although the operator did not learn so: the connection
    was lost (the API server or etcd restarting), the server failed (5xx: the write may still have
    been committed), or the name exists already (409: it may be this create's own pod, from a try
    whose response was lost). Such a pod is read back before the job is decided again: a decision
    from a store without it would start the next attempt beside it, or re-create its rank."""
    if obj["kind"] != "Pod" or isinstance(outcome, dict):
        return False
    if isinstance(outcome, ApiException):
        return outcome.status is None or outcome.status >= 500
    return True  # None (409, a pod's is not read back) or a connection error


def unanswered(outcome: object) -> bool:
    """A create that raised without an answer from the API server (a lost connection, no status)."""
    return isinstance(outcome, Exception) and not (isinstance(outcome, ApiException) and outcome.status is not None)


def refusal_of(obj: Object, error: ApiException, own_service_account: str) -> Refusal:
    """A refused create as the decision sees it: the API server's own message, classified."""
    try:
        message = str(json.loads(error.body or "{}").get("message") or error.reason)
    except ValueError:
        message = str(error.body or error.reason)
    meta = obj["metadata"]
    return classify_refusal(error.status or 0, message, obj["kind"], meta["name"], own_service_account)


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
    """A new job's supporting objects on their way: the first wave in flight, then the RoleBinding."""

    started: list[tuple[Object, Future[Object | None]]] = field(default_factory=list)
    second: list[Object] = field(default_factory=list)


@dataclass(frozen=True)
class Memory:
    """What one job's last creates taught (per job uid and attempt): names held by others, a refusal."""

    uid: str
    attempt: int
    held: tuple[str, ...] = ()
    refusal: Refusal | None = None


class Controller:
    """Reconciles SFTJobs; one per operator process, fed by the kopf handlers and the resync loop."""

    def __init__(self, kube: Kube, settings: Settings, store: Store | None = None) -> None:
        self.kube = kube
        self.settings = settings
        self.store = store or Store()
        self.queue: WorkQueue[Key] = WorkQueue()
        metrics.WORK_QUEUE_DEPTH.set_function(lambda: len(self.queue))
        self.phases = metrics.PhaseTracker()
        self.creator = ThreadPoolExecutor(settings.create_parallelism, thread_name_prefix="create")
        self.recorder = ThreadPoolExecutor(EVENT_THREADS, thread_name_prefix="event")
        self._supported: dict[Key, str] = {}  # job -> uid whose Service, ConfigMap, RBAC exist
        self._memory: dict[Key, Memory] = {}  # what the last creates of a job's gang met
        self._spec_checks: dict[Key, tuple[str, str, Refusal | None]] = {}  # (uid, template hash, refusal)
        self._unverified: dict[Key, dict[str, tuple[int, int]]] = {}  # pod name -> (attempt, rank): outcome_unknown
        self._uncreated: dict[Key, tuple[str, int, frozenset[int]]] = {}  # (uid, attempt, ranks) read back absent
        self._record_writable = True
        self._access_checkable = True
        self._reported: dict[str, None] = {}  # foreign pod uids already reported in an Event (ordered, bounded)
        self._leading = False
        self._active_since: float | None = None  # monotonic; see leads()
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
        job = job.model_copy(update={"status": trusted_status(job)})
        if not self._verify(key):
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

    def _verify(self, key: Key) -> bool:
        """Read back the pods whose create had an unknown outcome (stored if they exist); False while
        that cannot be done (the API server is still away): the job is not decided until it is."""
        names = self._unverified.get(key, {})
        record = self.store.job(key)
        uid = "" if record is None else str(record.raw["metadata"].get("uid"))
        for name, (attempt, rank) in sorted(names.items()):
            try:
                found = self.kube.find_pod(key[0], name)
            except Exception as error:
                log.info("%s/%s: pod %s, whose create had no answer, cannot be read yet: %s", *key, name, error)
                return False
            if found is not None:
                self.store.put_pod(found)
            elif not self.store.had_pods_named(key, name):
                before = self._uncreated.get(key)
                ranks = before[2] if before is not None and before[:2] == (uid, attempt) else frozenset()
                self._uncreated[key] = (uid, attempt, ranks | {rank})
            del names[name]
        self._unverified.pop(key, None)
        return True

    def _observed(self, key: Key, job: SFTJob, pods: list[PodView]) -> Observed:
        """What this operator knows about the job beyond its pods (see status.Observed)."""
        uid, attempt = job.metadata.uid, job.status.attempt
        memory = self._memory.get(key)
        if memory is not None and (memory.uid, memory.attempt) != (uid, attempt):
            memory = None
        uncreated = self._uncreated.get(key)
        return Observed(
            uncreated=uncreated[2] if uncreated is not None and uncreated[:2] == (uid, attempt) else frozenset(),
            had_pods=self.store.had_pods(key, attempt),
            held_by_others=memory.held if memory else (),
            refusal=memory.refusal if memory else None,
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
        still holds every right the job uses (SubjectAccessReviews; see sft_operator.access). Without
        the right to create reviews (a chart older than this operator) nothing is checked, as before."""
        if not self._access_checkable or access.creator_of(raw) is None:
            return None  # no creator recorded: created without the chart's admission policies
        try:
            return access.access_refusal(self.kube.authorization, raw)
        except ApiException as error:
            if error.status != 403:
                raise
            self._access_checkable = False
            log.error("no right to create subjectaccessreviews (%s): creators' rights are not re-checked", error.reason)
            return None

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
        supporting = self._create_supporting(job) if plan.create_pods else Supporting()
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
            self._create_gang(job.model_copy(update={"status": plan.status}), supporting, defaults)
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

        Without `patch` on sftjobs (a chart older than this operator) the record cannot be kept: the
        operator then says so once and works from the status alone, as operators before it did."""
        record = lifecycle_record(plan.status)
        if not self._record_writable or record == stored_record(job):
            return True
        annotation = json.dumps(record, sort_keys=True, separators=(",", ":"))
        try:
            written = self.kube.patch_job_metadata(*key, {"annotations": {LIFECYCLE_ANNOTATION: annotation}})
        except ApiException as error:
            if error.status != 403:
                raise
            self._record_writable = False
            log.error("no right to patch sftjobs (%s): lifecycle facts are read from the status", error.reason)
            return True
        if written is None:
            self.forget(key)
            return False
        self.store.put_job(written)
        return True

    def _create_supporting(self, job: SFTJob) -> Supporting:
        """Start creating a new job's supporting objects (once per job): the first wave now, in the
        background; the RoleBinding goes with the pods."""
        key = (job.metadata.namespace, job.metadata.name)
        if self._supported.get(key) == job.metadata.uid:
            return Supporting()
        first, second = creation_waves(render.supporting_objects(job))
        return Supporting([(obj, self.creator.submit(self._try_create, obj)) for obj in first], second)

    def _try_create(self, obj: Object) -> Object | ApiException | None:
        """kube.create, with an API refusal returned rather than raised (a wave's other creates go on)."""
        try:
            return self.kube.create(obj)
        except ApiException as error:
            if error.status is None:
                raise
            return error

    def _create_gang(self, job: SFTJob, supporting: Supporting, defaults: ClusterSFTRuntimeSpec | None = None) -> None:
        """Create what the gang lacks: the supporting objects (first wave, then the RoleBinding), then the
        missing ranks' pods, concurrently. An object of a child's name owned by another uid holds the
        gang back (never taken as the job's own); a refused create is remembered for the decision."""
        key = (job.metadata.namespace, job.metadata.name)
        uid, attempt = job.metadata.uid, job.status.attempt
        own_account = render.Names(job.metadata.name).service_account
        results = [(obj, future.result()) for obj, future in supporting.started]
        if not self._settled(key, job, results, own_account) or not self._created(key, job, supporting.second):
            return
        missing = missing_ranks(self.store.pods(key), attempt, job.spec.resources.num_nodes)
        names = render.Names(job.metadata.name)
        # Never a name this operator ever stored (a rank is never re-created): the store may have lost the
        # pod between the decision and now (a DELETED event); the next decision then restarts the gang.
        ranks = [rank for rank in missing if not self.store.had_pods_named(key, names.pod(rank, attempt))]
        if len(ranks) < len(missing):
            log.warning("%s/%s: ranks %s of attempt %d existed already: not re-created", *key,
                        sorted(set(missing) - set(ranks)), attempt)  # fmt: skip
            self.queue.add(key)
        pods = [render.pod(job, rank, self.settings.trainer_image, defaults) for rank in ranks]
        held = held_pod_names(pods, self.store.foreign(key))
        if held:
            self._hold(key, uid, attempt, held)
            return
        for wave in pod_waves([], pods, attempt):
            log.info(
                "%s/%s: creating %s (attempt %d)", *key, ", ".join(pod["metadata"]["name"] for pod in wave), attempt
            )
            outcomes = self._create_wave(key, wave)
            if any(unanswered(outcome) for _, outcome in outcomes):
                self.queue.add_after(key, HELD_RETRY_SECONDS)  # a create had no answer: read it back first
                return
            if not self._settled(key, job, [item for item in outcomes if not isinstance(item[1], dict)], own_account):
                return
        self._memory.pop(key, None)
        self._uncreated.pop(key, None)

    def _create_wave(self, key: Key, wave: list[Object]) -> list[tuple[Object, Object | Exception | None]]:
        """Create one wave of pods concurrently; each with what its create returned or raised. Every
        pod created is stored; a pod whose create had an unknown outcome is to be read back."""
        futures = [self.creator.submit(self._try_create, obj) for obj in wave]
        outcomes: list[tuple[Object, Object | Exception | None]] = []
        for obj, future in zip(wave, futures, strict=True):
            try:
                outcomes.append((obj, future.result()))
            except Exception as error:  # the connection was lost: the pod may exist
                log.warning("%s/%s: create of pod %s had no answer: %s", *key, obj["metadata"]["name"], error)
                outcomes.append((obj, error))
        for obj, outcome in outcomes:
            labels = obj["metadata"]["labels"]
            if isinstance(outcome, dict):
                self.store.put_pod(outcome)
                metrics.PODS_CREATED.inc()
            elif outcome_unknown(obj, outcome):
                where = (int(labels[render.LABEL_ATTEMPT]), int(labels[render.LABEL_RANK]))
                self._unverified.setdefault(key, {})[obj["metadata"]["name"]] = where
        return outcomes

    def _created(self, key: Key, job: SFTJob, objects: list[Object]) -> bool:
        """Create the supporting objects that need the first wave (the RoleBinding); True when all are
        the job's own. Marks the job supported (no supporting creates for its later attempts)."""
        if self._supported.get(key) == job.metadata.uid:
            return True
        results = [(obj, self._try_create(obj)) for obj in objects]
        if not self._settled(key, job, results, render.Names(job.metadata.name).service_account):
            return False
        self._supported[key] = job.metadata.uid
        return True

    def _settled(
        self, key: Key, job: SFTJob, results: list[tuple[Object, Object | ApiException | None]], own_account: str
    ) -> bool:
        """Whether every create went through as the job's own. Remembers (and queues the job for) a
        refusal, or the names another owner holds (a pod answered 409 counts as held until the store
        shows it as the job's own)."""
        uid, attempt = job.metadata.uid, job.status.attempt
        for obj, outcome in results:
            if isinstance(outcome, ApiException):
                refusal = refusal_of(obj, outcome, own_account)
                log.warning("%s/%s: %s %s refused: %s", *key, obj["kind"], obj["metadata"]["name"], refusal.message)
                metrics.RECONCILE_ERRORS.labels(error=refusal.reason).inc()
                self._memory[key] = Memory(uid, attempt, refusal=refusal)
                self.queue.add(key)
                return False
        found = [(obj, outcome) for obj, outcome in results if not isinstance(outcome, ApiException)]
        # A pod answered 409 is not held: it may be this job's own (a create whose response was lost);
        # the store shows it soon, or the gang is incomplete and restarts whole. Foreign pods holding a
        # name are caught before any create (held_pod_names).
        held = [name for name in foreign_names(found, uid) if not name.startswith("Pod/")]
        if held:
            self._hold(key, uid, attempt, held)
            return False
        return True

    def _hold(self, key: Key, uid: str, attempt: int, held: list[str]) -> None:
        """Names another owner holds: tell the decision, look again in HELD_RETRY_SECONDS."""
        memory = self._memory.get(key)
        if memory is None or memory.held != tuple(held):
            log.info("%s/%s: waiting for %s (another owner's) to go", *key, ", ".join(held))
        self._memory[key] = Memory(uid, attempt, held=tuple(held))
        self.queue.add_after(key, HELD_RETRY_SECONDS)

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
        self._supported.pop(key, None)
        self._memory.pop(key, None)
        self._spec_checks.pop(key, None)
        self._unverified.pop(key, None)
        self._uncreated.pop(key, None)

    # --- the resync loop --------------------------------------------------------------------------

    def leads(self) -> bool:
        """Whether this replica may act now (kopf's peering record decides who is active; a hand-over
        from a live replica waits out its resync period: `may_lead`)."""
        namespace = None if not self.settings.namespaces else self.settings.namespaces[0]
        peers = self.kube.peering_status(self.settings.peering_name, namespace)
        wall, now = datetime.now(UTC), time.monotonic()
        if not is_active(peers, self.settings.identity, self.settings.priority, wall):
            self._active_since = None
        elif self._active_since is None:
            alone = not live_peer_priorities(peers, self.settings.identity, wall)
            self._active_since = float("-inf") if alone else now
        return may_lead(self._active_since, now, self.settings.resync_seconds + HANDOVER_MARGIN_SECONDS)

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
