"""Failure policy: exit-code classification, restart backoff, and what counts as a failure.

Pure functions. Defaults follow the trainer's documented exit codes (`sft_trainer.contract`):
codes below 64 are permanent (config, data, model, NaN, OOM) except 1 (an unclassified exception,
retried), 64-127 are transient, and 128+ are signals (eviction, OOM kill, preemption): retried.
"""

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sft_operator.api import Failure, RunPolicy, SFTJobStatus
from sft_trainer.contract import TRANSIENT_MIN, ExitCode, describe_exit_code


@dataclass(frozen=True)
class PodView:
    """What the operator needs to know about one trainer pod."""

    name: str
    uid: str
    rank: int
    attempt: int
    phase: str = "Pending"  # Pending, Running, Succeeded, Failed, Unknown
    template_hash: str = ""
    deleting: bool = False
    created: datetime | None = None
    exit_code: int | None = None
    finished: datetime | None = None
    reason: str | None = None  # pod or container termination reason (Evicted, OOMKilled, Error ...)
    message: str | None = None  # termination message or pod status message
    waiting_reason: str | None = None  # ImagePullBackOff, ContainerCreating ...
    gated: bool = False  # held by scheduling gates (Kueue admission)
    running: bool = False  # the trainer container has started
    disrupted: bool = False  # condition DisruptionTarget: preempted, evicted, node drained (not the job's fault)
    owner: str = ""  # uid of the controller owner reference ("" when the pod has none)
    scheduled: datetime | None = None  # when the pod was bound to a node (condition PodScheduled)


def is_retryable(exit_code: int | None, policy: RunPolicy) -> bool:
    """Whether a pod that ended with `exit_code` (None: killed without one) is worth a gang restart."""
    if exit_code is None:
        return True
    if exit_code in policy.non_retryable_exit_codes:
        return False
    if exit_code in policy.retryable_exit_codes:
        return True
    return exit_code == ExitCode.UNEXPECTED or exit_code >= TRANSIENT_MIN


NOT_COUNTED = frozenset({"Disrupted", "QuotaExceeded", "CreateRetrying", "ServiceAccountNotFound", "OperatorForbidden"})
"""Failure reasons that restart the gang without using up runPolicy.backoffLimit."""


def backoff_seconds(restarts: int, policy: RunPolicy) -> float:
    """Wait before restart number `restarts` (1-based): backoffSeconds doubled per restart, capped."""
    delay = policy.backoff_seconds * 2 ** max(restarts - 1, 0)
    return float(min(delay, policy.max_backoff_seconds))


def json_object(text: str | None) -> dict[str, Any] | None:
    """``text`` read as a JSON object; None when it is empty, not JSON, or JSON of another type."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def pod_failure(pod: PodView, policy: RunPolicy, now: datetime) -> Failure | None:
    """A Failure if this pod failed, else None."""
    if pod.phase != "Failed":
        return None
    summary = json_object(pod.message)  # the trainer's run summary, when that is what it wrote
    detail = str(summary.get("message", "")) if summary else (pod.message or "")
    reason = "Disrupted" if pod.disrupted else "Evicted" if pod.reason == "Evicted" else "PodFailed"
    text = f"{pod.name} (rank {pod.rank}) failed: exit code {describe_exit_code(pod.exit_code)}"
    if pod.reason:
        text += f", reason {pod.reason}"
    if detail:
        text += f": {detail.strip()[:1000]}"
    return Failure(
        reason=reason,
        message=text,
        exit_code=pod.exit_code,
        rank=pod.rank,
        pod=pod.name,
        retryable=pod.disrupted or is_retryable(pod.exit_code, policy),
        time=now,
    )


def gang_failure(pods: list[PodView], policy: RunPolicy, now: datetime) -> Failure | None:
    """The failure to act on: a permanent one if any rank has one, else the earliest."""
    failures = [(pod, failure) for pod in pods if (failure := pod_failure(pod, policy, now)) is not None]
    if not failures:
        return None
    failures.sort(key=lambda item: (item[1].retryable, item[0].finished or now, item[0].rank))
    return failures[0][1]


def overdue(since: datetime | None, limit: int | None, now: datetime) -> int | None:
    """The whole seconds a clock started at `since` has run, once it has run `limit` seconds; None before
    then, and when there is no clock or no limit. Every timeout of a job is asked this way."""
    if since is None or limit is None or now - since < timedelta(seconds=limit):
        return None
    return int((now - since).total_seconds())


def pending_timeout(pods: list[PodView], status: SFTJobStatus, policy: RunPolicy, now: datetime) -> Failure | None:
    """A pod that has waited too long to start (unschedulable, image pull) — Kueue-gated pods excepted."""
    limit = policy.pending_timeout_seconds
    if overdue(status.attempt_start_time, limit, now) is None:
        return None
    for pod in pods:
        if pod.phase == "Pending" and not pod.gated and not pod.deleting:
            why = pod.waiting_reason or pod.reason or "not scheduled"
            return Failure(
                reason="PendingTimeout",
                message=f"{pod.name} still Pending after {limit}s ({why})",
                rank=pod.rank,
                pod=pod.name,
                retryable=True,
                time=now,
            )
    return None


def stalled(status: SFTJobStatus, policy: RunPolicy, now: datetime) -> Failure | None:
    """The trainer sent no progress report for stallTimeoutSeconds (a hung collective, a dead rank)."""
    limit = policy.stall_timeout_seconds
    started = status.attempt_start_time
    report = status.progress.last_report_time if status.progress else None
    last = max(started, report) if started is not None and report is not None else started
    silent = overdue(last, limit, now)
    if silent is None:
        return None
    return Failure(
        reason="Stalled",
        message=f"no progress report from the trainer for {silent}s (stallTimeoutSeconds={limit})",
        retryable=True,
        time=now,
    )


def deadline_exceeded(status: SFTJobStatus, policy: RunPolicy, now: datetime) -> Failure | None:
    """The job has been active longer than activeDeadlineSeconds."""
    limit = policy.active_deadline_seconds
    if overdue(status.start_time, limit, now) is None:
        return None
    return Failure(
        reason="DeadlineExceeded",
        message=f"the job ran longer than activeDeadlineSeconds={limit}",
        retryable=False,
        time=now,
    )


def pods_to_clean(pods: list[PodView], clean_pod_policy: str) -> list[PodView]:
    """Pods a finished job deletes: All of them, those still Running (or Pending), or None."""
    alive = [pod for pod in pods if not pod.deleting]
    if clean_pod_policy == "All":
        return alive
    if clean_pod_policy == "Running":
        return [pod for pod in alive if pod.phase in ("Pending", "Running", "Unknown")]
    return []


# --- the gang rule ---------------------------------------------------------------------------------


def gang_breach(
    pods: list[PodView],
    attempt: int,
    num_nodes: int,
    had_pods: bool,
    now: datetime,
    uncreated: frozenset[int] = frozenset(),
) -> Failure | None:
    """The one gang-integrity rule: every member of a started attempt is alive and of that attempt.

    `pods` are the job's own pods (owner reference uid = the job's uid) of every attempt. An attempt
    is started once any of its pods exists or existed (`had_pods`: this operator created or saw one).
    A started attempt with a rank missing or being deleted, a rank outside the gang, or a live pod of
    another attempt beside it, is broken: the whole gang restarts as the next attempt. A rank is never
    re-created alone. An attempt with no pod at all, never started, is created whole.

    `uncreated`: ranks of this attempt whose create got no answer and which the API server, read
    back, does not have: never created, so not missing from the gang; their creates are finished.
    """
    current = [pod for pod in pods if pod.attempt == attempt]
    if not current and not had_pods:
        return None
    live = {pod.rank for pod in current if not pod.deleting}
    seen = {pod.rank for pod in current}
    missing = [rank for rank in range(num_nodes) if rank not in live and (rank in seen or rank not in uncreated)]
    outside = sorted(pod.name for pod in current if not 0 <= pod.rank < num_nodes)
    others = sorted(pod.name for pod in pods if pod.attempt != attempt and not pod.deleting)
    if missing:
        first = next((pod for pod in current if pod.rank == missing[0]), None)
        gone = "is being deleted" if first is not None else "is missing (deleted, or its create was cut short)"
        return Failure(
            reason="PodDeleted",
            message=f"gang attempt {attempt} broken: the pod of rank {', '.join(map(str, missing))} {gone}; "
            "restarting the whole gang",
            rank=missing[0],
            pod=first.name if first is not None else None,
            retryable=True,
            time=now,
        )
    if outside or (others and current):
        names = ", ".join(outside or others)
        return Failure(
            reason="ForeignMember",
            message=f"gang attempt {attempt} has pods that are not its members ({names}); restarting the whole gang",
            retryable=True,
            time=now,
        )
    return None


def gang_start_timeout(
    pods: list[PodView], status: SFTJobStatus, policy: RunPolicy, running: bool, queued: bool, now: datetime
) -> Failure | None:
    """A gang that has not reached Running (every rank started, the trainer reported) in time.

    The clock starts when the attempt's pods are created; for a queued job (Kueue) when its last pod
    was scheduled, and not at all while a pod waits for admission (scheduling gates): a queue may
    hold a gang for hours, which is not a stuck gang.
    """
    limit = policy.gang_start_timeout_seconds
    started = status.attempt_start_time
    if running or started is None or any(pod.gated for pod in pods):
        return None
    if queued:
        started = max([started, *(pod.scheduled for pod in pods if pod.scheduled is not None)])
    if overdue(started, limit, now) is None:
        return None
    return Failure(
        reason="GangStartTimeout",
        message=f"the gang of attempt {status.attempt} did not reach Running within {limit}s "
        f"(gangStartTimeoutSeconds; it was {status.phase})",
        retryable=True,
        time=now,
    )


# --- what the API server refuses -----------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """The API server refused to create a child: its status code, a reason for the job, its message."""

    code: int
    reason: str  # QuotaExceeded, PodSecurity, Invalid, PriorityClassNotFound, ServiceAccountNotFound, Forbidden ...
    message: str
    permanent: bool
    kind: str = "Pod"
    name: str = ""


OPERATOR_DENIED = re.compile(r'User ".+" cannot \S+ resource "')
"""The authorizer's refusal of the operator's own request (`pods "x" is forbidden: User "system:serviceaccount:
..." cannot create resource "pods" ...`), not an admission's: RBAC caches still filling after an API server
start, or a chart being fixed. Retried, not counted: the job's author can do nothing about it."""


def classify_refusal(
    code: int, message: str, kind: str = "Pod", name: str = "", own_service_account: str = ""
) -> Refusal:
    """Whether a refused create is worth retrying: quota, throttling, server errors, a lagging
    ServiceAccount cache and the authorizer refusing the operator itself are transient; invalid
    objects, Pod Security, missing PriorityClasses or ServiceAccounts the user named, and other
    refusals are permanent (retrying cannot succeed)."""
    text = message.lower()
    transient = code in (429, 500, 502, 503, 504) or code == 404
    if code == 403 and "exceeded quota" in text:
        reason, transient = "QuotaExceeded", True
    elif code == 403 and "podsecurity" in text:
        reason = "PodSecurity"
    elif code == 403 and OPERATOR_DENIED.search(message):
        reason, transient = "OperatorForbidden", True
    elif "priorityclass" in text and ("not found" in text or "no priorityclass" in text):
        reason, transient = "PriorityClassNotFound", False
    elif "serviceaccount" in text and "not found" in text:
        reason = "ServiceAccountNotFound"
        transient = bool(own_service_account) and f'"{own_service_account}"' in message
    elif code == 422:
        reason = "Invalid"
    elif code == 400:
        reason = "BadRequest"
    elif code == 403:
        reason = "Forbidden"
    else:
        reason = "CreateRetrying" if transient else f"CreateRefused{code}"
    return Refusal(code, reason, message, permanent=not transient, kind=kind, name=name)


def refusal_failure(refusal: Refusal, now: datetime) -> Failure:
    """The job-level failure for a refused create (retryable when the refusal is transient)."""
    what = f"{refusal.kind} {refusal.name}".strip()
    return Failure(
        reason=refusal.reason,
        message=f"the API server refused to create {what} ({refusal.code}): {refusal.message}"[:4096],
        pod=refusal.name if refusal.kind == "Pod" and refusal.name else None,
        retryable=not refusal.permanent,
        time=now,
    )
