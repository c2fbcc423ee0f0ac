"""Create a job's gang: its supporting objects (Service, ConfigMap, RBAC) once per job, then the pods
of the ranks an attempt lacks, concurrently, in waves (`children`). The I/O half of the controller's
apply step; what each answer means is decided by the pure functions of `sft_operator.children`.

Children are the job's only by controller owner-reference uid: a create answered "already exists" by
another owner's object is never taken as the job's own; the gang waits (and retries) until garbage
collection removes it. A refused create is remembered (`Memory`) for the next decision, which fails
or restarts the job; a pod create with no answer is read back (`verify`) before the job is decided
again. Nothing is retried in a loop.
"""

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes.client.exceptions import ApiException

from sft_operator import metrics, render
from sft_operator.api import SFTJob
from sft_operator.api.runtime import ClusterSFTRuntimeSpec
from sft_operator.cache import Key, Store
from sft_operator.children import (
    Memory,
    Supporting,
    creation_waves,
    foreign_names,
    held_pod_names,
    outcome_unknown,
    pod_waves,
    refusal_of,
    unanswered,
)
from sft_operator.kube import Kube
from sft_operator.pods import missing_ranks
from sft_operator.status import Observed
from sft_operator.workqueue import WorkQueue

log = logging.getLogger(__name__)
Object = dict[str, Any]
HELD_RETRY_SECONDS = 1.0  # a child's name held by another owner: look again this soon


class Gang:
    """Creates the children of every job of one controller, and remembers what the creates met."""

    def __init__(self, kube: Kube, store: Store, queue: WorkQueue[Key], trainer_image: str, parallelism: int) -> None:
        self.kube = kube
        self.store = store
        self.queue = queue
        self.trainer_image = trainer_image
        self.executor = ThreadPoolExecutor(parallelism, thread_name_prefix="create")
        self.supported: dict[Key, str] = {}  # job -> uid whose Service, ConfigMap, RBAC exist
        self.memory: dict[Key, Memory] = {}  # what the last creates of a job's gang met
        self.unverified: dict[Key, dict[str, tuple[int, int]]] = {}  # pod name -> (attempt, rank): outcome_unknown
        self.uncreated: dict[Key, tuple[str, int, frozenset[int]]] = {}  # (uid, attempt, ranks) read back absent

    def observed(self, key: Key, uid: str, attempt: int) -> Observed:
        """What the creates of this job's current attempt taught: names held by others, a refusal, ranks
        never created (the rest of `status.Observed` is the controller's)."""
        memory = self.memory.get(key)
        if memory is not None and (memory.uid, memory.attempt) != (uid, attempt):
            memory = None
        uncreated = self.uncreated.get(key)
        return Observed(
            uncreated=uncreated[2] if uncreated is not None and uncreated[:2] == (uid, attempt) else frozenset(),
            held_by_others=memory.held if memory else (),
            refusal=memory.refusal if memory else None,
        )

    def forget(self, key: Key) -> None:
        """Drop everything held about a deleted job."""
        self.supported.pop(key, None)
        self.memory.pop(key, None)
        self.unverified.pop(key, None)
        self.uncreated.pop(key, None)

    def stop(self) -> None:
        """Cancel the creates not started yet."""
        self.executor.shutdown(wait=False, cancel_futures=True)

    def verify(self, key: Key) -> bool:
        """Read back the pods whose create had an unknown outcome (stored if they exist); False while
        that cannot be done (the API server is still away): the job is not decided until it is."""
        names = self.unverified.get(key, {})
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
                before = self.uncreated.get(key)
                ranks = before[2] if before is not None and before[:2] == (uid, attempt) else frozenset()
                self.uncreated[key] = (uid, attempt, ranks | {rank})
            del names[name]
        self.unverified.pop(key, None)
        return True

    def start_supporting(self, job: SFTJob) -> Supporting:
        """Start creating a new job's supporting objects (once per job): the first wave now, in the
        background; the RoleBinding goes with the pods."""
        key = (job.metadata.namespace, job.metadata.name)
        if self.supported.get(key) == job.metadata.uid:
            return Supporting()
        first, second = creation_waves(render.supporting_objects(job))
        return Supporting([(obj, self.executor.submit(self._try_create, obj)) for obj in first], second)

    def _try_create(self, obj: Object) -> Object | ApiException | None:
        """kube.create, with an API refusal returned rather than raised (a wave's other creates go on)."""
        try:
            return self.kube.create(obj)
        except ApiException as error:
            if error.status is None:
                raise
            return error

    def create(self, job: SFTJob, supporting: Supporting, defaults: ClusterSFTRuntimeSpec | None = None) -> None:
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
        pods = [render.pod(job, rank, self.trainer_image, defaults) for rank in ranks]
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
        self.memory.pop(key, None)
        self.uncreated.pop(key, None)

    def _create_wave(self, key: Key, wave: list[Object]) -> list[tuple[Object, Object | Exception | None]]:
        """Create one wave of pods concurrently; each with what its create returned or raised. Every
        pod created is stored; a pod whose create had an unknown outcome is to be read back."""
        futures = [self.executor.submit(self._try_create, obj) for obj in wave]
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
                self.unverified.setdefault(key, {})[obj["metadata"]["name"]] = where
        return outcomes

    def _created(self, key: Key, job: SFTJob, objects: list[Object]) -> bool:
        """Create the supporting objects that need the first wave (the RoleBinding); True when all are
        the job's own. Marks the job supported (no supporting creates for its later attempts)."""
        if self.supported.get(key) == job.metadata.uid:
            return True
        results = [(obj, self._try_create(obj)) for obj in objects]
        if not self._settled(key, job, results, render.Names(job.metadata.name).service_account):
            return False
        self.supported[key] = job.metadata.uid
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
                self.memory[key] = Memory(uid, attempt, refusal=refusal)
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
        memory = self.memory.get(key)
        if memory is None or memory.held != tuple(held):
            log.info("%s/%s: waiting for %s (another owner's) to go", *key, ", ".join(held))
        self.memory[key] = Memory(uid, attempt, held=tuple(held))
        self.queue.add_after(key, HELD_RETRY_SECONDS)
