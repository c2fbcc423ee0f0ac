"""What the operator knows of the cluster: slim records of SFTJobs and their pods, fed by kopf's watches.

The controller reconciles from this store instead of reading the API server on every event (a GET of
the job and a LIST of its pods per reconcile were two thirds of its API requests at scale). It is kept
current by three writers, newest resourceVersion winning:

- the watch events kopf delivers (`put_job`, `put_pod`, `drop_job`, `drop_pod`);
- the operator's own writes: the object a status patch or a create returns, so the next reconcile
  never decides from a state older than what this operator itself wrote (no double-counted restart,
  no second gang) even before the watch echoes the write;
- a periodic full list (`replace`), which also removes what a watch gap hid (kopf's re-list after an
  expired watch sends no DELETED events).

resourceVersions are compared as integers: the API server's are etcd revisions, which only grow
(Kubernetes 1.35 made comparing them an API guarantee, KEP-5504). A value that is not an integer
counts as newer, so an unusual server only costs a redundant reconcile.

Ownership is by uid, never by labels alone: the pod watch selects pods by the job-name label, which
anyone who may create pods can set. `pods(key)` returns only the pods whose controller owner
reference is the stored job's uid; `foreign(key)` the others (impostors, or the children of a deleted
job of the same name that garbage collection has not yet removed), which the operator never counts,
restarts or deletes.

Records are slim on purpose (peak memory at 1000 jobs was 567 MB when whole objects were queued):
a job keeps the metadata the operator reads, its spec and status; a pod is a `PodView` summary.
"""

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from sft_operator.api import API_VERSION, FINISHED_PHASES, KIND, SFTJob
from sft_operator.pods import pod_view
from sft_operator.policy import PodView
from sft_operator.render import LABEL_JOB, Names

Object = dict[str, Any]
Key = tuple[str, str]  # (namespace, job name)
Page = tuple[list[Object], int | None]  # a list's items and its resourceVersion
JOB_METADATA = ("name", "namespace", "uid", "generation", "resourceVersion", "creationTimestamp", "deletionTimestamp")
DROPPED_ANNOTATIONS = frozenset({"kubectl.kubernetes.io/last-applied-configuration"})
MAX_TOMBSTONES = 64


def as_version(value: Any) -> int | None:
    """A resourceVersion as an integer (None when absent or not a number)."""
    try:
        return int(str(value))
    except ValueError:
        return None


def version(obj: Object) -> int | None:
    """An object's (or a list's) resourceVersion as an integer."""
    return as_version((obj.get("metadata") or {}).get("resourceVersion"))


def oldest(first: int | None, second: int | None) -> int | None:
    """The older of two list versions; unknown (None) if either is (then nothing counts as stale)."""
    return None if first is None or second is None else min(first, second)


def is_newer(candidate: int | None, stored: int | None) -> bool:
    """Whether an object at `candidate` replaces one at `stored` (unknown versions always do)."""
    return candidate is None or stored is None or candidate > stored


def slim_job(raw: Object) -> Object:
    """The parts of an SFTJob the operator reads: no managedFields, no last-applied copy of the spec."""
    meta = raw.get("metadata") or {}
    slim_meta: Object = {key: meta[key] for key in JOB_METADATA if key in meta}
    if meta.get("labels"):
        slim_meta["labels"] = dict(meta["labels"])
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in DROPPED_ANNOTATIONS}
    if annotations:
        slim_meta["annotations"] = annotations
    slim: Object = {"apiVersion": raw.get("apiVersion") or API_VERSION, "kind": raw.get("kind") or KIND}
    slim["metadata"] = slim_meta
    slim["spec"] = raw.get("spec") or {}
    slim["status"] = raw.get("status") or {}
    return slim


def job_key(raw: Object) -> Key:
    """(namespace, name) of a job."""
    meta = raw.get("metadata") or {}
    return str(meta.get("namespace")), str(meta.get("name"))


def pod_job_key(raw: Object) -> Key | None:
    """(namespace, job name) of a trainer pod; None for a pod without the job label."""
    meta = raw.get("metadata") or {}
    job = (meta.get("labels") or {}).get(LABEL_JOB)
    return None if job is None else (str(meta.get("namespace")), str(job))


def _own(view: PodView, key: Key, owner: str | None) -> bool:
    """A pod is the job's when its controller owner reference is the job's uid and it has the name the
    operator gives its rank and attempt (an owner reference alone can be written by anyone who may
    create pods in the namespace)."""
    return view.owner == owner and view.name == Names(key[1]).pod(view.rank, view.attempt)


@dataclass
class JobRecord:
    """One SFTJob as last seen, with its validated model (made on first use, kept while it is current)."""

    raw: Object
    version: int | None
    model: SFTJob | None = None

    def validated(self) -> SFTJob:
        """The SFTJob model of `raw` (raises pydantic's ValidationError for a spec the models refuse)."""
        if self.model is None:
            self.model = SFTJob.model_validate(self.raw)
        return self.model

    def release_model(self) -> None:
        """Drop the model of a finished job (it is rarely looked at again; memory goes to live jobs)."""
        if (self.raw.get("status") or {}).get("phase") in FINISHED_PHASES:
            self.model = None


@dataclass(frozen=True)
class PodRecord:
    """One trainer pod as last seen."""

    view: PodView
    version: int | None


class Store:
    """Thread-safe slim records of jobs and of their pods, keyed by (namespace, job name)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[Key, JobRecord] = {}
        self._pods: dict[Key, dict[str, PodRecord]] = {}
        self._gone: dict[Key, list[str]] = {}  # uids of deleted pods: a late create response must not revive one
        self._attempts: dict[Key, dict[str, set[int]]] = {}  # owner uid -> attempts a pod was seen of
        self._names: dict[
            Key, dict[str, set[str]]
        ] = {}  # owner uid -> pod names seen (a rank created once is never re-created)
        self._deleted_at: dict[str, float] = {}  # uid -> when this operator deleted it (until it is gone)

    # --- jobs -----------------------------------------------------------------------------------

    def put_job(self, raw: Object) -> bool:
        """Store a job seen by a watch or returned by a write; True when it changed what is stored."""
        key, seen = job_key(raw), version(raw)
        with self._lock:
            stored = self._jobs.get(key)
            if stored is not None and not is_newer(seen, stored.version):
                return False
            uid = str((raw.get("metadata") or {}).get("uid") or "")
            if stored is not None and stored.raw["metadata"].get("uid") != uid:
                self._attempts.pop(key, None)  # a new job with an old job's name: nothing of its own seen yet
                self._names.pop(key, None)
            self._jobs[key] = JobRecord(slim_job(raw), seen)
            return True

    def job(self, key: Key) -> JobRecord | None:
        """The stored record of a job, or None."""
        with self._lock:
            return self._jobs.get(key)

    def drop_job(self, key: Key) -> None:
        """Forget a deleted job (its pods go with it; their own DELETED events follow)."""
        with self._lock:
            self._jobs.pop(key, None)
            self._pods.pop(key, None)
            self._gone.pop(key, None)
            self._attempts.pop(key, None)
            self._names.pop(key, None)

    def job_keys(self) -> list[Key]:
        """Every stored job."""
        with self._lock:
            return list(self._jobs)

    def jobs(self) -> list[JobRecord]:
        """Every stored job's record."""
        with self._lock:
            return list(self._jobs.values())

    # --- pods -----------------------------------------------------------------------------------

    def put_pod(self, raw: Object) -> Key | None:
        """Store a trainer pod; its job's key when that changed what is stored, else None."""
        key = pod_job_key(raw)
        if key is None:
            return None
        meta = raw.get("metadata") or {}
        name, uid, seen = str(meta.get("name")), str(meta.get("uid")), version(raw)
        with self._lock:
            if uid in self._gone.get(key, ()):
                return None
            pods = self._pods.setdefault(key, {})
            stored = pods.get(name)
            # resourceVersions are cluster-wide, so this also orders two pods that share a name (attempts)
            if stored is not None and not is_newer(seen, stored.version):
                return None
            view = pod_view(raw)
            pods[name] = PodRecord(view, seen)
            if view.name == Names(key[1]).pod(view.rank, view.attempt):
                self._attempts.setdefault(key, {}).setdefault(view.owner, set()).add(view.attempt)
                self._names.setdefault(key, {}).setdefault(view.owner, set()).add(view.name)
            return key

    def drop_pod(self, raw: Object) -> Key | None:
        """A pod was deleted: forget it (if the stored one is that pod); its job's key."""
        key = pod_job_key(raw)
        if key is None:
            return None
        meta = raw.get("metadata") or {}
        name, uid = str(meta.get("name")), str(meta.get("uid"))
        with self._lock:
            gone = self._gone.setdefault(key, [])
            gone.append(uid)
            del gone[:-MAX_TOMBSTONES]
            pods = self._pods.get(key, {})
            stored = pods.get(name)
            if stored is not None and stored.view.uid == uid:
                del pods[name]
            if not pods:
                self._pods.pop(key, None)
            return key

    def mark_deleting(self, key: Key, name: str, uid: str, grace: float = 0.0) -> None:
        """This operator just deleted a pod: show it as terminating until the watch says more.
        `grace`: its termination grace period (it may take that long to go)."""
        with self._lock:
            stored = self._pods.get(key, {}).get(name)
            if stored is not None and stored.view.uid == uid:
                self._pods[key][name] = PodRecord(replace(stored.view, deleting=True), stored.version)
                self._deleted_at.setdefault(uid, time.monotonic() + grace)

    def deleting_longer_than(self, seconds: float) -> bool:
        """Whether a pod this operator deleted is still stored `seconds` past its grace period."""
        with self._lock:
            live = {record.view.uid for pods in self._pods.values() for record in pods.values()}
            for uid in [uid for uid in self._deleted_at if uid not in live]:
                del self._deleted_at[uid]
            now = time.monotonic()
            return any(now - since > seconds for since in self._deleted_at.values())

    def _owner(self, key: Key) -> str | None:
        record = self._jobs.get(key)
        return None if record is None else str(record.raw["metadata"].get("uid") or "")

    def pods(self, key: Key) -> list[PodView]:
        """The job's own pods (controller owner reference = the stored job's uid), in name order."""
        with self._lock:
            owner = self._owner(key)
            return [
                record.view for _, record in sorted(self._pods.get(key, {}).items()) if _own(record.view, key, owner)
            ]

    def foreign(self, key: Key) -> list[PodView]:
        """Pods with the job's label that the job does not own, in name order."""
        with self._lock:
            owner = self._owner(key)
            return [
                record.view
                for _, record in sorted(self._pods.get(key, {}).items())
                if not _own(record.view, key, owner)
            ]

    def had_pods(self, key: Key, attempt: int) -> bool:
        """Whether a pod of the stored job's `attempt` was ever stored (seen, created, or deleted since)."""
        with self._lock:
            owner = self._owner(key)
            return owner is not None and attempt in self._attempts.get(key, {}).get(owner, set())

    def had_pods_named(self, key: Key, name: str) -> bool:
        """Whether a pod of that name of the stored job was ever stored (seen, created, or deleted since)."""
        with self._lock:
            owner = self._owner(key)
            return owner is not None and name in self._names.get(key, {}).get(owner, set())

    # --- the periodic full list -------------------------------------------------------------------

    def replace_jobs(self, pages: Iterable[Page]) -> list[Key]:
        """Reconcile the stored jobs with a full list (pages of items, each with the list's version).

        Listed jobs are stored (newest wins); stored ones missing from the list are dropped unless
        written after the list was taken. Returns the keys of the jobs whose record changed.
        """
        changed: list[Key] = []
        present: set[Key] = set()
        listed_at: int | None = None
        for number, (items, at) in enumerate(pages):
            listed_at = at if number == 0 else oldest(listed_at, at)
            changed += [job_key(raw) for raw in items if self.put_job(raw)]
            present |= {job_key(raw) for raw in items}
        with self._lock:
            for key, record in list(self._jobs.items()):
                if key not in present and not is_newer(record.version, listed_at):
                    self._jobs.pop(key)
                    self._pods.pop(key, None)
                    self._attempts.pop(key, None)
                    self._names.pop(key, None)
        return changed

    def replace_pods(self, pages: Iterable[Page]) -> set[Key]:
        """Reconcile the stored pods with a full list (pages); the jobs whose pods changed."""
        changed: set[Key] = set()
        present: set[str] = set()
        listed_at: int | None = None
        for number, (items, at) in enumerate(pages):
            listed_at = at if number == 0 else oldest(listed_at, at)
            changed |= {key for key in map(self.put_pod, items) if key is not None}
            present |= {str((raw.get("metadata") or {}).get("uid")) for raw in items}
        with self._lock:
            for key, pods in list(self._pods.items()):
                for name, pod in list(pods.items()):
                    if pod.view.uid not in present and not is_newer(pod.version, listed_at):
                        del pods[name]
                        changed.add(key)
                if not pods:
                    self._pods.pop(key)
        return changed
