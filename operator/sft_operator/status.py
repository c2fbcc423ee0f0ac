"""The reconcile decision: (job, its pods, now) -> new status, pods to create/delete, Events.

Level-based and pure: the whole state is the job's status plus the pods that exist, so an operator
restarted at any point (or a standby taking over) computes the same decision. The handlers apply it.

Phases:  Pending -> Initializing (all pods run, no progress report yet) -> Running (reports) ->
Succeeded | Failed; Restarting between gang attempts; Suspended while runPolicy.suspend is true.
"""

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from sft_operator import policy
from sft_operator.api import FINISHED_PHASES, Condition, Failure, Phase, ReplicaCounts, SFTJob, SFTJobStatus
from sft_operator.policy import PodView
from sft_operator.render import ANNOTATION_TEMPLATE_HASH, LABEL_ATTEMPT, LABEL_RANK, TRAINER_CONTAINER, template_hash

CONDITION_TYPES: tuple[str, ...] = ("Created", "Suspended", "Running", "Restarting", "Succeeded", "Failed")
ACTIVE_PHASES: frozenset[str] = frozenset({"Pending", "Initializing", "Running"})
SUCCESS_GRACE = timedelta(seconds=60)
"""After rank 0 succeeds, other ranks get this long to exit on their own (and keep their logs)."""


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to record on the SFTJob."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass
class Plan:
    """What the operator should do now."""

    status: SFTJobStatus
    create_pods: bool = False
    delete_pods: list[PodView] = field(default_factory=list)
    delete_job: bool = False
    events: list[Event] = field(default_factory=list)


# --- reading pods ---------------------------------------------------------------------------------


def _time(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def pod_view(pod: dict[str, Any]) -> PodView:
    """Summarise a pod as the API returns it (camelCase JSON)."""
    meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
    labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
    container: dict[str, Any] = next(
        (item for item in status.get("containerStatuses") or [] if item.get("name") == TRAINER_CONTAINER), {}
    )
    state = container.get("state") or {}
    terminated, waiting = state.get("terminated") or {}, state.get("waiting") or {}
    return PodView(
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        rank=int(labels.get(LABEL_RANK, -1)),
        attempt=int(labels.get(LABEL_ATTEMPT, -1)),
        phase=status.get("phase") or "Pending",
        template_hash=annotations.get(ANNOTATION_TEMPLATE_HASH, ""),
        deleting=meta.get("deletionTimestamp") is not None,
        created=_time(meta.get("creationTimestamp")),
        exit_code=terminated.get("exitCode"),
        finished=_time(terminated.get("finishedAt")),
        reason=status.get("reason") or terminated.get("reason"),
        message=terminated.get("message") or status.get("message"),
        waiting_reason=waiting.get("reason"),
        gated=bool(spec.get("schedulingGates")),
        running="running" in state or bool(terminated),
        disrupted=any(
            item.get("type") == "DisruptionTarget" and item.get("status") == "True"
            for item in status.get("conditions") or []
        ),
    )


# --- helpers --------------------------------------------------------------------------------------


WAITING_FOR_PODS = "waiting for pods to start"


def missing_ranks(pods: list[PodView], attempt: int, num_nodes: int) -> list[int]:
    """Ranks of the attempt with no live pod (a pod being deleted does not count)."""
    present = {pod.rank for pod in pods if pod.attempt == attempt and not pod.deleting}
    return [rank for rank in range(num_nodes) if rank not in present]


def replica_counts(pods: list[PodView], desired: int) -> ReplicaCounts:
    """Pods of the current attempt by phase."""
    counts = ReplicaCounts(desired=desired)
    for pod in pods:
        if pod.phase == "Running":
            counts.running += 1
        elif pod.phase == "Succeeded":
            counts.succeeded += 1
        elif pod.phase == "Failed":
            counts.failed += 1
        else:
            counts.pending += 1
    return counts


def conditions(
    previous: list[Condition], phase: Phase, reason: str, message: str, generation: int, now: datetime
) -> list[Condition]:
    """One condition per type; True for the phase's condition, lastTransitionTime kept unless it flips."""
    true_types = {"Created", phase} if phase in CONDITION_TYPES else {"Created"}
    old = {condition.type: condition for condition in previous}
    result = []
    for kind in CONDITION_TYPES:
        value: Literal["True", "False"] = "True" if kind in true_types else "False"
        before = old.get(kind)
        if kind == "Created":
            why, text = "PodsCreated", "the pod gang was created"
        else:
            why, text = (reason, message) if value == "True" else (f"Not{kind}", f"the job is {phase}")
        changed = before is None or before.status != value
        result.append(
            Condition(
                type=kind,
                status=value,
                reason=why,
                message=text,
                last_transition_time=now if changed or before is None else before.last_transition_time,
                observed_generation=generation,
            )
        )
    return result


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
                "message": f"{failure.message} (backoffLimit {run_policy.backoff_limit} reached)",
            }
        )
        _finish(plan, pods, job, "Failed", exhausted, now)
        return
    status.restarts += 1 if counted else 0
    delay = policy.backoff_seconds(max(status.restarts, 1), run_policy)
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
            + (f"restart {status.restarts} of {run_policy.backoff_limit}" if counted else "not counted: a disruption")
            + "); it resumes from the newest checkpoint",
        )
    )


def _adopt_summary(status: SFTJobStatus, pods: list[PodView]) -> None:
    """Fill the final model / step from rank 0's termination message when the status patch was lost."""
    rank0 = next((pod for pod in pods if pod.rank == 0), None)
    summary = policy.trainer_summary(rank0.message if rank0 else None)
    if not summary:
        return
    if status.final_model is None and isinstance(summary.get("final_model"), str):
        status.final_model = summary["final_model"]
    step = summary.get("step")
    if isinstance(step, int) and status.progress is not None and status.progress.step < step:
        status.progress.step = step


# --- the decision ---------------------------------------------------------------------------------


def reconcile(job: SFTJob, pods: list[PodView], now: datetime) -> Plan:
    """Decide the next status and actions from the job and every pod it owns."""
    status = job.status.model_copy(deep=True)
    plan = Plan(status=status)
    spec = job.spec
    previous_phase = status.phase
    status.observed_generation = job.metadata.generation
    status.gpus = spec.resources.num_nodes * spec.resources.gpus_per_node
    current = [pod for pod in pods if pod.attempt == status.attempt]
    stale = [pod for pod in pods if pod.attempt != status.attempt and not pod.deleting]

    if status.phase is None:
        status.phase = "Pending"
        plan.events.append(Event("Normal", "Accepted", f"{spec.resources.num_nodes} node(s) requested"))

    if status.phase in FINISHED_PHASES:
        _finished(plan, job, pods, now)
    elif spec.run_policy.suspend:
        _suspended(plan, pods)
    elif (deadline := policy.deadline_exceeded(status, spec.run_policy, now)) is not None:
        _finish(plan, pods, job, "Failed", deadline, now)
    elif status.phase in ("Suspended", "Restarting"):
        _between_attempts(plan, job, pods, now)
    else:
        plan.delete_pods = stale
        _active(plan, job, current, now)

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
    )
    if status.phase != previous_phase and status.phase in ("Initializing", "Running"):
        plan.events.append(Event("Normal", status.phase, status.message or status.phase))
    return plan


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


def _between_attempts(plan: Plan, job: SFTJob, pods: list[PodView], now: datetime) -> None:
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
    _start_attempt(plan, job, status.attempt + 1, now)


def _start_attempt(plan: Plan, job: SFTJob, attempt: int, now: datetime) -> None:
    status = plan.status
    status.attempt = attempt
    status.attempt_start_time = now
    status.start_time = status.start_time or now
    status.next_attempt_time = None
    status.phase = "Pending"
    status.reason, status.message = "Pending", WAITING_FOR_PODS  # what it says once they exist: no second write
    plan.create_pods = True
    plan.events.append(Event("Normal", "Started", f"creating {job.spec.resources.num_nodes} pod(s), attempt {attempt}"))


def _active(plan: Plan, job: SFTJob, pods: list[PodView], now: datetime) -> None:
    """Pending/Initializing/Running: watch the gang for success, failure, timeouts and spec changes."""
    status = plan.status
    spec = job.spec
    if status.attempt_start_time is None:
        _start_attempt(plan, job, status.attempt, now)
        return
    rank0 = next((pod for pod in pods if pod.rank == 0 and not pod.deleting), None)
    if rank0 is not None and rank0.phase == "Succeeded":
        _adopt_summary(status, pods)
        _finish(plan, pods, job, "Succeeded", None, now)
        return
    failure = policy.gang_failure(pods, spec.run_policy, now)
    if failure is None:
        present = {pod.rank for pod in pods if not pod.deleting}
        missing = sorted(set(range(spec.resources.num_nodes)) - present)
        if missing and status.phase == "Pending":
            plan.create_pods = True  # (re)create what a crash mid-creation left out: names make it idempotent
        elif missing:
            failure = Failure(
                reason="PodDeleted",
                message=f"pod(s) of rank {', '.join(map(str, missing))} disappeared while the gang was running",
                rank=missing[0],
                retryable=True,
                time=now,
            )
    if failure is None:
        failure = policy.pending_timeout(pods, status, spec.run_policy, now)
    if failure is None and status.phase in ("Initializing", "Running"):
        failure = policy.stalled(status, spec.run_policy, now)
    if failure is not None:
        _restart(plan, pods, job, failure, now)
        return
    desired_hash = template_hash(job)
    if any(pod.template_hash and pod.template_hash != desired_hash for pod in pods if not pod.deleting):
        status.phase = "Restarting"
        status.reason, status.message = "SpecChanged", "the pod template changed: restarting the gang"
        status.next_attempt_time = now
        plan.delete_pods = [pod for pod in pods if not pod.deleting]
        plan.events.append(Event("Normal", "SpecChanged", status.message))
        return
    _progress_phase(status, pods, spec.resources.num_nodes)


def _progress_phase(status: SFTJobStatus, pods: list[PodView], num_nodes: int) -> None:
    """Pending until every pod runs, Initializing until the trainer reports, then Running."""
    report = status.progress.last_report_time if status.progress else None
    reported = report is not None and status.attempt_start_time is not None and report >= status.attempt_start_time
    all_running = len([pod for pod in pods if pod.running and not pod.deleting]) >= num_nodes
    if reported:
        status.phase, status.reason, status.message = "Running", "Training", "the trainer reports progress"
    elif all_running:
        status.phase, status.reason = "Initializing", "Initializing"
        status.message = "all pods run; waiting for the trainer's first report"
    else:
        waiting = sorted({pod.waiting_reason for pod in pods if pod.waiting_reason})
        status.phase, status.reason = "Pending", "Pending"
        status.message = WAITING_FOR_PODS + (f" ({', '.join(waiting)})" if waiting else "")
