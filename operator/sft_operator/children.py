"""What a job's child creates mean, as pure functions: the order of the creates (waves), whose an
object is (its controller owner reference), what an API answer tells (a refusal, an unknown outcome),
and what one job's last creates taught (`Memory`). `sft_operator.gang` makes the calls."""

import json
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException

from sft_operator import render
from sft_operator.policy import PodView, Refusal, classify_refusal

Object = dict[str, Any]


SECOND_WAVE_KINDS = frozenset({"RoleBinding", "Pod"})


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
