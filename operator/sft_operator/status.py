"""The reconcile decision: (job, its pods, now) -> new status, pods to create/delete, Events.

Level-based and pure: the whole state is the job's lifecycle record plus the pods it owns, so an
operator restarted at any point (or a standby taking over) computes the same decision. The controller
applies it.

The job's status is trusted only through the operator's own lifecycle record (`sft_operator.lifecycle`);
pods are read by `sft_operator.pods`, conditions written by `sft_operator.conditions`. This module
derives the phase and the actions.

The gang rule, in one place (`policy.gang_breach`): a gang's pods all belong to one attempt; a missing,
deleted, or foreign member of a started attempt restarts the whole gang as the next attempt, whatever
the phase and however the operator learns of it. A rank is never re-created alone.

Phases:  Pending -> Initializing (all pods run, no progress report yet) -> Running (reports) ->
Succeeded | Failed; Restarting between gang attempts; Suspended while runPolicy.suspend is true.
"""

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from sft_operator import policy
from sft_operator.api import FINISHED_PHASES, Failure, Phase, SFTJob, SFTJobStatus
from sft_operator.conditions import conditions, runtime_condition
from sft_operator.pods import missing_ranks, replica_counts
from sft_operator.policy import PodView, Refusal
from sft_operator.render import template_hash
from sft_operator.runtime import Resolution

SUCCESS_GRACE = timedelta(seconds=60)
"""After rank 0 succeeds, other ranks get this long to exit on their own (and keep their logs)."""


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to record on the SFTJob."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Observed:
    """What the controller knows besides the job and its pods (from its own calls and memory)."""

    had_pods: bool = False
    """A pod of the current attempt was created or seen by this operator (a gang with none left is broken)."""
    held_by_others: tuple[str, ...] = ()
    """Children's names taken by objects another owner holds (a deleted job's, not yet garbage-collected)."""
    refusal: Refusal | None = None
    """The API server refused to create a child of the current attempt."""
    spec_refusal: Refusal | None = None
    """The API server refuses the pods of the edited spec (a dry-run create): the running gang is kept."""
    access_refusal: Refusal | None = None
    """The job's creator lacks a right the job uses (asked before any create): the job fails, no children."""
    uncreated: frozenset[int] = frozenset()
    """Ranks of the current attempt whose create got no answer and that the API server, read back,
    does not have (never created): the attempt's creates are finished, not counted as a broken gang."""
    runtime: Resolution | None = None
    """The job's platform defaults as read for the pods about to be created (None: not read in this pass)."""


@dataclass
class Plan:
    """What the operator should do now."""

    status: SFTJobStatus
    create_pods: bool = False
    delete_pods: list[PodView] = field(default_factory=list)
    delete_job: bool = False
    events: list[Event] = field(default_factory=list)


# --- helpers --------------------------------------------------------------------------------------


WAITING_FOR_PODS = "waiting for pods to start"
WAITING_FOR_OLD_CHILDREN = "WaitingForOldChildren"


def _finish(plan: Plan, pods: list[PodView], job: SFTJob, phase: Phase, failure: Failure | None, now: datetime) -> None:
    status = plan.status
    status.phase = phase
    status.completion_time = now
    status.next_attempt_time = None
    if failure is not None:
        status.last_failure = failure
        status.reason, status.message = failure.reason, failure.message
        plan.events.append(Event("Warning", failure.reason, f"job failed: {failure.message}"))
    else:
        status.reason, status.message = "Completed", "training finished"
        plan.events.append(Event("Normal", "Succeeded", "training finished; rank 0 exited 0"))
    plan.delete_pods = _to_clean(pods, job, status, now)
    if failure is not None:
        # A failed gang never keeps ranks alive, whatever the clean-pod policy: they would hang in NCCL.
        alive = policy.pods_to_clean(pods, "Running")
        plan.delete_pods = alive + [pod for pod in plan.delete_pods if pod not in alive]


def _to_clean(pods: list[PodView], job: SFTJob, status: SFTJobStatus, now: datetime) -> list[PodView]:
    """The clean-pod policy's pods; after a success, ranks still running get SUCCESS_GRACE first."""
    targets = policy.pods_to_clean(pods, job.spec.run_policy.clean_pod_policy)
    finished = status.completion_time
    if status.phase == "Succeeded" and finished is not None and now < finished + SUCCESS_GRACE:
        targets = [pod for pod in targets if pod.phase in ("Succeeded", "Failed")]
    return targets


def _restart(plan: Plan, pods: list[PodView], job: SFTJob, failure: Failure, now: datetime) -> None:
    """Record a failure and tear the gang down, or fail the job if it may not restart."""
    status = plan.status
    run_policy = job.spec.run_policy
    if not failure.retryable:
        _finish(plan, pods, job, "Failed", failure, now)
        return
    counted = failure.reason not in policy.NOT_COUNTED
    if counted and status.restarts >= run_policy.backoff_limit:
        exhausted = failure.model_copy(
            update={
                "reason": "BackoffLimitExceeded",
                "message": f"{failure.reason}: {failure.message} (backoffLimit {run_policy.backoff_limit} reached)",
            }
        )
        _finish(plan, pods, job, "Failed", exhausted, now)
        return
    status.restarts += 1 if counted else 0
    # Uncounted restarts (disruptions, a quota that is full) back off with the attempt number instead.
    delay = policy.backoff_seconds(max(status.restarts, 1) if counted else status.attempt + 1, run_policy)
    status.phase = "Restarting"
    status.last_failure = failure
    status.reason, status.message = failure.reason, failure.message
    status.next_attempt_time = now + timedelta(seconds=delay)
    plan.delete_pods = [pod for pod in pods if not pod.deleting]
    plan.events.append(Event("Warning", failure.reason, failure.message))
    plan.events.append(
        Event(
            "Normal",
            "Restarting",
            f"restarting the whole gang in {delay:.0f}s ("
            + (
                f"restart {status.restarts} of {run_policy.backoff_limit}"
                if counted
                else f"not counted: {failure.reason}"
            )
            + "); it resumes from the newest checkpoint",
        )
    )


def _adopt_summary(status: SFTJobStatus, pods: list[PodView]) -> None:
    """Fill the final model / step from rank 0's termination message when the status patch was lost."""
    rank0 = next((pod for pod in pods if pod.rank == 0), None)
    summary = policy.json_object(rank0.message if rank0 else None)
    if not summary:
        return
    if status.final_model is None and isinstance(summary.get("final_model"), str):
        status.final_model = summary["final_model"]
    step = summary.get("step")
    if isinstance(step, int) and status.progress is not None and status.progress.step < step:
        status.progress.step = step


# --- the decision ---------------------------------------------------------------------------------


def reconcile(job: SFTJob, pods: list[PodView], now: datetime, observed: Observed | None = None) -> Plan:
    """Decide the next status and actions from the job (its status trusted: see `trusted_status`) and
    every pod it owns (owner reference uid = the job's uid: the controller never passes others)."""
    observed = observed or Observed()
    status = job.status.model_copy(deep=True)
    plan = Plan(status=status)
    spec = job.spec
    previous_phase = status.phase
    status.observed_generation = job.metadata.generation
    status.gpus = spec.resources.num_nodes * spec.resources.gpus_per_node

    if status.phase is None:
        status.phase = "Pending"
        plan.events.append(Event("Normal", "Accepted", f"{spec.resources.num_nodes} node(s) requested"))

    if status.phase in FINISHED_PHASES:
        _finished(plan, job, pods, now)
    elif spec.run_policy.suspend:
        _suspended(plan, pods)
    elif (deadline := policy.deadline_exceeded(status, spec.run_policy, now)) is not None:
        _finish(plan, pods, job, "Failed", deadline, now)
    elif observed.access_refusal is not None and observed.access_refusal.permanent:
        denied = observed.access_refusal
        _finish(plan, pods, job, "Failed", Failure(reason=denied.reason, message=denied.message[:4096], time=now), now)
    elif status.phase in ("Suspended", "Restarting"):
        _between_attempts(plan, job, pods, now, observed)
    else:
        _active(plan, job, pods, now, observed)
    if plan.create_pods and observed.held_by_others:
        _held(plan, job, observed.held_by_others)
    if plan.create_pods and observed.runtime is not None and observed.runtime.problem:
        _hold_creation(plan, job, observed.runtime.reason, observed.runtime.problem)  # not without the defaults
    if plan.create_pods and observed.access_refusal is not None:  # not permanent: the check cannot be made yet
        _hold_creation(plan, job, observed.access_refusal.reason, observed.access_refusal.message)

    status.replicas = replica_counts([pod for pod in pods if pod.attempt == status.attempt], spec.resources.num_nodes)
    if plan.create_pods:  # the pods about to be created are Pending: one status write, not a second one after
        status.replicas.pending += len(missing_ranks(pods, status.attempt, spec.resources.num_nodes))
    assert status.phase is not None
    status.conditions = conditions(
        job.status.conditions,
        status.phase,
        status.reason or status.phase,
        status.message or "",
        job.metadata.generation,
        now,
    ) + runtime_condition(job.status.conditions, status, job.metadata.generation, now)
    if status.phase != previous_phase and status.phase in ("Initializing", "Running"):
        plan.events.append(Event("Normal", status.phase, status.message or status.phase))
    return plan


def _hold_creation(plan: Plan, job: SFTJob, reason: str, problem: str) -> None:
    """The pods cannot be created yet (the job's runtime cannot be read, its creator's rights cannot be
    checked): no pods, the reason in the status and one Warning Event; the job stays in its phase (no
    attempt starts, no clock runs) and starts once the problem is gone."""
    status = plan.status
    plan.create_pods = False
    status.reason, status.message = reason, problem
    if job.status.reason != reason or job.status.message != problem:
        plan.events.append(Event("Warning", reason, problem))


def _finished(plan: Plan, job: SFTJob, pods: list[PodView], now: datetime) -> None:
    """Succeeded/Failed: apply the clean-pod policy once more and honour the TTL."""
    status = plan.status
    plan.delete_pods = _to_clean(pods, job, status, now)
    ttl = job.spec.run_policy.ttl_seconds_after_finished
    if (
        ttl is not None
        and status.completion_time is not None
        and now >= status.completion_time + timedelta(seconds=ttl)
    ):
        plan.delete_job = True
        plan.events.append(Event("Normal", "TTLExpired", f"deleting the job {ttl}s after it finished"))


def _suspended(plan: Plan, pods: list[PodView]) -> None:
    """runPolicy.suspend: no pods; the deadline clock stops (startTime is cleared, as for Jobs)."""
    status = plan.status
    if status.phase != "Suspended":
        plan.events.append(Event("Normal", "Suspended", "pods deleted; checkpoints are kept"))
    status.phase = "Suspended"
    status.reason, status.message = "Suspended", "runPolicy.suspend is true"
    status.start_time = None
    status.next_attempt_time = None
    plan.delete_pods = [pod for pod in pods if not pod.deleting]


def _between_attempts(plan: Plan, job: SFTJob, pods: list[PodView], now: datetime, observed: Observed) -> None:
    """Suspended-then-resumed or Restarting: start the next attempt once the old gang is gone."""
    status = plan.status
    if status.phase == "Suspended":
        status.phase = "Restarting"
        status.reason, status.message = "Resumed", "resuming from the newest checkpoint"
        status.next_attempt_time = now
        plan.events.append(Event("Normal", "Resumed", "runPolicy.suspend is false: starting a new gang"))
    plan.delete_pods = [pod for pod in pods if not pod.deleting]
    if pods:
        return  # wait until every pod of the old gang is gone: never two gangs at once
    if status.next_attempt_time is not None and now < status.next_attempt_time:
        return
    _start_attempt(plan, job, status.attempt + 1, now, observed)


def _held(plan: Plan, job: SFTJob, names: tuple[str, ...]) -> None:
    """The gang cannot be created yet: objects with its children's names belong to another owner
    (typically the children of a deleted job of the same name that garbage collection has not yet
    removed). The controller retries the creates; they are never taken as this job's own."""
    status = plan.status
    status.reason = WAITING_FOR_OLD_CHILDREN
    status.message = (
        f"waiting for {', '.join(names[:5])}{' ...' if len(names) > 5 else ''} to be deleted: "
        "owned by another object (a deleted job of the same name?), never taken as this job's"
    )
    if job.status.reason != WAITING_FOR_OLD_CHILDREN:
        plan.events.append(Event("Warning", WAITING_FOR_OLD_CHILDREN, status.message))


def _start_attempt(plan: Plan, job: SFTJob, attempt: int, now: datetime, observed: Observed) -> None:
    """Start gang attempt `attempt` with the platform defaults read for it (none: the job's runtime
    cannot be read, so the attempt does not start)."""
    status = plan.status
    resolved = observed.runtime
    if resolved is not None and resolved.problem:
        _hold_creation(plan, job, resolved.reason, resolved.problem)
        return
    if resolved is not None:
        status.runtime = resolved.applied.model_copy(update={"attempt": attempt}) if resolved.applied else None
    status.attempt = attempt
    status.attempt_start_time = now
    status.start_time = status.start_time or now
    status.next_attempt_time = None
    status.phase = "Pending"
    status.reason, status.message = "Pending", WAITING_FOR_PODS  # what it says once they exist: no second write
    plan.create_pods = True
    plan.events.append(Event("Normal", "Started", f"creating {job.spec.resources.num_nodes} pod(s), attempt {attempt}"))


def _active(plan: Plan, job: SFTJob, pods: list[PodView], now: datetime, observed: Observed) -> None:
    """Pending/Initializing/Running: watch the gang for success, failure, timeouts and spec changes."""
    status = plan.status
    spec = job.spec
    if status.attempt_start_time is None:
        _start_attempt(plan, job, status.attempt, now, observed)
        return
    current = [pod for pod in pods if pod.attempt == status.attempt]
    rank0 = next((pod for pod in current if pod.rank == 0 and not pod.deleting), None)
    if rank0 is not None and rank0.phase == "Succeeded":
        _adopt_summary(status, current)
        _finish(plan, pods, job, "Succeeded", None, now)
        return
    failure = policy.refusal_failure(observed.refusal, now) if observed.refusal is not None else None
    failure = failure or policy.gang_failure(current, spec.run_policy, now)
    # Once its start is recorded, an attempt counts as started (its pods were being created) unless this
    # operator knows the creates are held back: a gang found with no pod left restarts whole, even
    # after a fail-over whose store never saw the pods that were deleted meanwhile.
    started = observed.had_pods or not observed.held_by_others
    failure = failure or policy.gang_breach(
        pods, status.attempt, spec.resources.num_nodes, started, now, observed.uncreated
    )
    if failure is None and not current:  # nothing of this attempt exists yet: create it, if not stuck
        stuck = policy.gang_start_timeout([], status, spec.run_policy, False, False, now)
        if stuck is not None:
            held = f"; its children's names are held by another owner: {', '.join(observed.held_by_others)}"
            _restart(
                plan,
                pods,
                job,
                stuck.model_copy(update={"message": stuck.message + held}) if observed.held_by_others else stuck,
                now,
            )
            return
        others = [pod for pod in pods if pod.attempt != status.attempt]
        plan.delete_pods = [pod for pod in others if not pod.deleting]
        plan.create_pods = not others  # never two gangs at once: the old one goes first
        _progress_phase(status, current, spec.resources.num_nodes)
        return
    running = _all_running(current, spec.resources.num_nodes)
    if failure is None:
        failure = policy.pending_timeout(current, status, spec.run_policy, now)
    if failure is None:
        reached = _reported(status) and running
        queued = spec.scheduling.queue_name is not None
        failure = policy.gang_start_timeout(current, status, spec.run_policy, reached, queued, now)
    if failure is None and running:
        failure = policy.stalled(status, spec.run_policy, now)
    if failure is not None:
        _restart(plan, pods, job, failure, now)
        return
    desired_hash = template_hash(job)
    changed = any(pod.template_hash and pod.template_hash != desired_hash for pod in current if not pod.deleting)
    if changed and observed.spec_refusal is None:
        status.phase = "Restarting"
        status.reason, status.message = "SpecChanged", "the pod template changed: restarting the gang"
        status.next_attempt_time = now
        plan.delete_pods = [pod for pod in pods if not pod.deleting]
        plan.events.append(Event("Normal", "SpecChanged", status.message))
        return
    _progress_phase(status, current, spec.resources.num_nodes)
    plan.create_pods = bool(observed.uncreated & set(missing_ranks(current, status.attempt, spec.resources.num_nodes)))
    if changed and observed.spec_refusal is not None:
        refused = policy.refusal_failure(observed.spec_refusal, now)
        status.reason = "SpecChangeRefused"
        status.message = f"the edited spec is not applied, the running gang is kept: {refused.message}"[:4096]
        if job.status.reason != "SpecChangeRefused":
            plan.events.append(Event("Warning", "SpecChangeRefused", status.message))


def _reported(status: SFTJobStatus) -> bool:
    """The trainer has reported progress in the current attempt."""
    report = status.progress.last_report_time if status.progress else None
    return report is not None and status.attempt_start_time is not None and report >= status.attempt_start_time


def _all_running(pods: list[PodView], num_nodes: int) -> bool:
    """Every rank's trainer container has started (or already finished)."""
    return len({pod.rank for pod in pods if pod.running and not pod.deleting}) >= num_nodes


def _progress_phase(status: SFTJobStatus, pods: list[PodView], num_nodes: int) -> None:
    """Pending until every pod runs, Initializing until the trainer reports, then Running."""
    all_running = _all_running(pods, num_nodes)
    if _reported(status) and all_running:
        status.phase, status.reason, status.message = "Running", "Training", "the trainer reports progress"
    elif all_running:
        status.phase, status.reason = "Initializing", "Initializing"
        status.message = "all pods run; waiting for the trainer's first report"
    else:
        waiting = sorted({pod.waiting_reason for pod in pods if pod.waiting_reason})
        status.phase, status.reason = "Pending", "Pending"
        status.message = WAITING_FOR_PODS + (f" ({', '.join(waiting)})" if waiting else "")
