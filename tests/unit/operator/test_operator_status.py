"""status.reconcile and policy: the state machine, restarts, exit codes, timeouts, suspend, TTL."""

import json
from datetime import datetime, timedelta

import pytest

from sft_operator import policy, render
from sft_operator.api import Progress, RunPolicy, SFTJob
from sft_operator.lifecycle import LIFECYCLE_ANNOTATION, lifecycle_record, trusted_status
from sft_operator.pods import pod_view
from sft_operator.policy import PodView, Refusal, classify_refusal
from sft_operator.status import Observed, Plan, reconcile
from tests.builders import NOW, manifest


def make_job(run_policy: dict | None = None, **status: object) -> SFTJob:
    body = manifest(runPolicy=run_policy or {})
    body["status"] = status
    return SFTJob.model_validate(body)


def gang(job: SFTJob, phase: str = "Running", attempt: int | None = None, **changes: object) -> list[PodView]:
    attempt = job.status.attempt if attempt is None else attempt
    return [
        PodView(
            name=f"demo-node-{rank}",
            uid=f"u{rank}",
            rank=rank,
            attempt=attempt,
            phase=phase,
            template_hash=render.template_hash(job),
            running=phase != "Pending",
            **changes,  # type: ignore[arg-type]
        )
        for rank in range(job.spec.resources.num_nodes)
    ]


def advance(job: SFTJob, plan: Plan) -> SFTJob:
    return job.model_copy(update={"status": plan.status})


STARTED = NOW - timedelta(minutes=5)


def running_job(**changes: object) -> SFTJob:
    status = {
        "phase": "Running",
        "attempt": 0,
        "attemptStartTime": STARTED,
        "startTime": STARTED,
        "progress": {"step": 3, "totalSteps": 20, "lastReportTime": NOW - timedelta(seconds=5)},
    }
    status.update(changes)
    return make_job(None, **status)


# --- exit codes and backoff --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "retryable"),
    [
        (1, True),
        (10, False),
        (11, False),
        (13, False),
        (14, False),
        (2, False),
        (70, True),
        (71, True),
        (100, True),
        (137, True),
        (143, True),
        (None, True),
    ],
)
def test_default_exit_code_classes(code: int | None, retryable: bool) -> None:
    assert policy.is_retryable(code, RunPolicy()) is retryable


def test_configured_exit_codes_win() -> None:
    custom = RunPolicy(retryable_exit_codes=[14], non_retryable_exit_codes=[70, 14])
    assert policy.is_retryable(70, custom) is False
    assert policy.is_retryable(14, custom) is False
    assert policy.is_retryable(14, RunPolicy(retryable_exit_codes=[14])) is True


def test_backoff_doubles_and_caps() -> None:
    run_policy = RunPolicy(backoff_seconds=10, max_backoff_seconds=60)
    assert [policy.backoff_seconds(n, run_policy) for n in (1, 2, 3, 4, 5)] == [10, 20, 40, 60, 60]


def test_describe_exit_code() -> None:
    assert policy.describe_exit_code(70) == "70 (DISTRIBUTED_TIMEOUT)"
    assert policy.describe_exit_code(137) == "137 (signal 9)"


# --- first reconcile --------------------------------------------------------------------------------


def test_new_job_creates_its_gang() -> None:
    job = make_job()
    plan = reconcile(job, [], NOW)
    assert plan.create_pods
    assert plan.status.phase == "Pending"
    assert plan.status.attempt == 0 and plan.status.start_time == NOW
    assert plan.status.observed_generation == 1
    assert plan.status.gpus == 4
    assert {event.reason for event in plan.events} >= {"Accepted", "Started"}
    created = next(c for c in plan.status.conditions if c.type == "Created")
    assert created.status == "True"
    assert plan.status.replicas.pending == 2  # the pods it creates: their arrival needs no second status write
    created_pods = advance(job, plan)
    assert reconcile(created_pods, gang(created_pods, "Pending"), NOW).status == plan.status


def test_a_started_attempt_found_without_pods_restarts_whole_unless_its_creates_are_held() -> None:
    """Issue 22 (long soak, seed 1): a 1-node gang's pod deleted while Pending across an operator
    fail-over: the new leader's store never saw it, yet the attempt's start is recorded, so the gang
    restarts as the next attempt (never the same rank re-created under the same attempt)."""
    job = make_job(phase="Pending", attemptStartTime=NOW, startTime=NOW)
    plan = reconcile(job, [], NOW + timedelta(seconds=3))
    assert not plan.create_pods and plan.status.phase == "Restarting" and plan.status.restarts == 1
    assert plan.status.last_failure is not None and plan.status.last_failure.reason == "PodDeleted"
    held = reconcile(job, [], NOW + timedelta(seconds=3), Observed(held_by_others=("Pod/demo-node-0",)))
    assert held.create_pods and held.status.attempt == 0  # nothing was created: the whole gang, when free


@pytest.mark.parametrize("phase", ["Pending", "Initializing", "Running"])
@pytest.mark.parametrize("how", ["missing", "deleting"])
def test_a_started_attempt_missing_a_rank_restarts_the_whole_gang_in_any_phase(phase: str, how: str) -> None:
    """Issue 22 case 1: rank 1 deleted while Pending (seen live, or found after an operator restart):
    never re-created alone beside rank 0; the gang restarts as the next attempt, counted, with the reason."""
    job = running_job(phase=phase)
    pods = gang(job, "Pending" if phase == "Pending" else "Running")
    pods = pods[:1] if how == "missing" else [pods[0], PodView(**{**pods[1].__dict__, "deleting": True})]
    plan = reconcile(job, pods, NOW)
    assert not plan.create_pods
    assert plan.status.phase == "Restarting" and plan.status.restarts == 1
    failure = plan.status.last_failure
    assert failure is not None and failure.reason == "PodDeleted" and failure.rank == 1 and failure.retryable
    assert {pod.name for pod in plan.delete_pods} == {"demo-node-0"}
    nxt = advance(job, plan)
    assert reconcile(nxt, [], NOW + timedelta(seconds=11)).status.attempt == 1  # the next attempt, whole


def test_a_started_attempt_with_every_pod_gone_restarts_too() -> None:
    job = running_job(phase="Pending")
    plan = reconcile(job, [], NOW, Observed(had_pods=True))
    assert plan.status.phase == "Restarting" and plan.status.restarts == 1 and not plan.create_pods


def test_a_live_pod_of_another_attempt_beside_the_gang_restarts_it() -> None:
    job = running_job(attempt=2)
    pods = [*gang(job), PodView(name="demo-node-0", uid="old", rank=0, attempt=1, phase="Running")]
    plan = reconcile(job, pods, NOW)
    assert plan.status.phase == "Restarting" and plan.status.last_failure is not None
    assert plan.status.last_failure.reason == "ForeignMember"
    assert {pod.uid for pod in plan.delete_pods} == {"u0", "u1", "old"}


def test_a_started_attempt_never_creates_beside_an_older_attempts_pod() -> None:
    job = running_job(attempt=2, phase="Pending")
    old = PodView(name="demo-node-0-a1", uid="old", rank=0, attempt=1, phase="Running")
    plan = reconcile(job, [old], NOW)
    assert not plan.create_pods and [pod.uid for pod in plan.delete_pods] == ["old"]
    assert plan.status.phase == "Restarting"  # the next attempt starts once the old pod is gone
    restarting = advance(job, plan)
    terminating = PodView(**{**old.__dict__, "deleting": True})
    assert not reconcile(restarting, [terminating], NOW + timedelta(seconds=30)).create_pods
    assert reconcile(restarting, [], NOW + timedelta(seconds=30)).create_pods


def test_reconcile_is_idempotent_on_a_steady_job() -> None:
    job = running_job()
    first = reconcile(job, gang(job), NOW)
    second = reconcile(advance(job, first), gang(job), NOW + timedelta(seconds=5))
    assert second.status == first.status.model_copy(update={"conditions": second.status.conditions})
    assert [c.last_transition_time for c in second.status.conditions] == [
        c.last_transition_time for c in first.status.conditions
    ]
    assert not second.create_pods and not second.delete_pods and not second.events


# --- phases -------------------------------------------------------------------------------------------


def test_pending_initializing_running() -> None:
    job = make_job(phase="Pending", attemptStartTime=STARTED, startTime=STARTED)
    pending = reconcile(job, gang(job, "Pending", waiting_reason="ContainerCreating"), NOW)
    assert pending.status.phase == "Pending" and "ContainerCreating" in (pending.status.message or "")
    initializing = reconcile(job, gang(job, "Running"), NOW)
    assert initializing.status.phase == "Initializing"
    assert any(event.reason == "Initializing" for event in initializing.events)
    reported = advance(job, initializing)
    reported.status.progress = Progress(step=1, total_steps=20, last_report_time=NOW)
    running = reconcile(reported, gang(job, "Running"), NOW + timedelta(seconds=1))
    assert running.status.phase == "Running"
    assert next(c for c in running.status.conditions if c.type == "Running").status == "True"
    assert running.status.replicas.running == 2


def test_progress_from_an_earlier_attempt_does_not_count() -> None:
    job = make_job(
        phase="Pending",
        attempt=1,
        attemptStartTime=NOW,
        startTime=STARTED,
        progress={"step": 9, "lastReportTime": STARTED},
    )
    plan = reconcile(job, gang(job, "Running"), NOW + timedelta(seconds=1))
    assert plan.status.phase == "Initializing"


def test_success_when_rank_zero_exits_zero() -> None:
    job = running_job()
    summary = json.dumps({"outcome": "succeeded", "step": 20, "final_model": "/output/demo/final"})
    pods = gang(job, "Succeeded", exit_code=0)
    pods[0] = PodView(**{**pods[0].__dict__, "message": summary})
    plan = reconcile(job, pods, NOW)
    assert plan.status.phase == "Succeeded"
    assert plan.status.completion_time == NOW
    assert plan.status.final_model == "/output/demo/final"
    assert plan.status.progress is not None and plan.status.progress.step == 20
    assert plan.delete_pods == []  # cleanPodPolicy Running keeps finished pods for their logs
    assert any(event.reason == "Succeeded" for event in plan.events)


# --- failures -----------------------------------------------------------------------------------------


def fail_rank(pods: list[PodView], rank: int, code: int | None, reason: str = "Error") -> list[PodView]:
    pods = list(pods)
    pods[rank] = PodView(
        **{**pods[rank].__dict__, "phase": "Failed", "exit_code": code, "reason": reason, "finished": NOW}
    )
    return pods


def test_retryable_failure_restarts_the_whole_gang_with_backoff() -> None:
    job = running_job()
    plan = reconcile(job, fail_rank(gang(job), 1, 70), NOW)
    assert plan.status.phase == "Restarting"
    assert plan.status.restarts == 1
    assert {pod.name for pod in plan.delete_pods} == {"demo-node-0", "demo-node-1"}
    assert plan.status.next_attempt_time == NOW + timedelta(seconds=10)
    failure = plan.status.last_failure
    assert failure is not None and failure.exit_code == 70 and failure.rank == 1 and failure.retryable
    assert "DISTRIBUTED_TIMEOUT" in failure.message
    assert [event.type for event in plan.events] == ["Warning", "Normal"]


def test_restart_waits_for_old_pods_then_backoff_then_creates_next_attempt() -> None:
    job = running_job()
    restarting = advance(job, reconcile(job, fail_rank(gang(job), 1, 137), NOW))
    terminating = [PodView(**{**pod.__dict__, "deleting": True}) for pod in gang(job)]
    waiting = reconcile(restarting, terminating, NOW + timedelta(seconds=30))
    assert not waiting.create_pods and waiting.delete_pods == []
    early = reconcile(restarting, [], NOW + timedelta(seconds=5))
    assert not early.create_pods and early.status.phase == "Restarting"
    go = reconcile(restarting, [], NOW + timedelta(seconds=11))
    assert go.create_pods and go.status.attempt == 1 and go.status.phase == "Pending"
    assert go.status.attempt_start_time == NOW + timedelta(seconds=11)


def test_permanent_exit_code_fails_without_retry() -> None:
    job = running_job()
    pods = fail_rank(gang(job), 0, 11)
    pods[0] = PodView(**{**pods[0].__dict__, "message": json.dumps({"message": "data file missing: /data/x"})})
    plan = reconcile(job, pods, NOW)
    assert plan.status.phase == "Failed" and plan.status.restarts == 0
    assert plan.status.last_failure is not None and plan.status.last_failure.exit_code == 11
    assert "data file missing" in plan.status.last_failure.message
    assert [pod.name for pod in plan.delete_pods] == ["demo-node-1"]  # the rank still running
    assert next(c for c in plan.status.conditions if c.type == "Failed").status == "True"


def test_permanent_failure_wins_over_a_transient_one() -> None:
    job = running_job()
    pods = fail_rank(fail_rank(gang(job), 0, 70), 1, 10)
    assert reconcile(job, pods, NOW).status.phase == "Failed"


def test_backoff_limit_fails_the_job() -> None:
    job = running_job(restarts=3)
    plan = reconcile(job, fail_rank(gang(job), 0, 1), NOW)
    assert plan.status.phase == "Failed"
    assert plan.status.last_failure is not None and plan.status.last_failure.reason == "BackoffLimitExceeded"


def test_eviction_is_retried() -> None:
    job = running_job()
    plan = reconcile(job, fail_rank(gang(job), 1, None, reason="Evicted"), NOW)
    assert plan.status.phase == "Restarting"
    assert plan.status.last_failure is not None and plan.status.last_failure.reason == "Evicted"


def test_preemption_restarts_without_using_the_backoff_limit() -> None:
    job = running_job(restarts=3)
    pods = fail_rank(gang(job), 1, 143)
    pods[1] = PodView(**{**pods[1].__dict__, "disrupted": True})
    plan = reconcile(job, pods, NOW)
    assert plan.status.phase == "Restarting" and plan.status.restarts == 3
    assert plan.status.last_failure is not None and plan.status.last_failure.reason == "Disrupted"


def test_pod_view_reads_the_disruption_condition(job: SFTJob) -> None:
    pod = render.pod(job, 0)
    pod["status"] = {"phase": "Failed", "conditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert pod_view(pod).disrupted


def test_a_pod_vanishing_from_a_running_gang_restarts_it() -> None:
    job = running_job()
    plan = reconcile(job, gang(job)[:1], NOW)
    assert plan.status.phase == "Restarting"
    assert plan.status.last_failure is not None and plan.status.last_failure.reason == "PodDeleted"


def test_stall_restarts_the_gang() -> None:
    job = running_job(
        attemptStartTime=NOW - timedelta(hours=3), progress={"step": 3, "lastReportTime": NOW - timedelta(hours=2)}
    )
    plan = reconcile(job, gang(job), NOW)
    assert plan.status.phase == "Restarting"
    assert plan.status.last_failure is not None and plan.status.last_failure.reason == "Stalled"


def test_stall_detection_can_be_disabled() -> None:
    body = manifest(runPolicy={"stallTimeoutSeconds": None})
    old = running_job(
        attemptStartTime=NOW - timedelta(hours=3), progress={"step": 3, "lastReportTime": NOW - timedelta(hours=2)}
    )
    body["status"] = old.status.wire()
    job = SFTJob.model_validate(body)
    assert reconcile(job, gang(job), NOW).status.phase == "Running"


def test_pending_timeout_restarts_but_not_for_gated_pods() -> None:
    job = make_job(phase="Pending", attemptStartTime=NOW - timedelta(hours=1), startTime=STARTED)
    pods = gang(job, "Pending", waiting_reason="ImagePullBackOff")
    plan = reconcile(job, pods, NOW)
    assert plan.status.last_failure is not None and plan.status.last_failure.reason == "PendingTimeout"
    assert "ImagePullBackOff" in plan.status.last_failure.message
    gated = gang(job, "Pending", gated=True)
    assert reconcile(job, gated, NOW).status.phase == "Pending"


def test_deadline_fails_the_job_and_deletes_the_pods() -> None:
    job = make_job({"activeDeadlineSeconds": 60}, phase="Running", attemptStartTime=STARTED, startTime=STARTED)
    plan = reconcile(job, gang(job), NOW)
    assert plan.status.phase == "Failed" and plan.status.reason == "DeadlineExceeded"
    assert len(plan.delete_pods) == 2


# --- spec changes, suspend, TTL, clean-up ----------------------------------------------------------------


def test_template_change_restarts_without_counting_a_failure() -> None:
    job = running_job()
    pods = [PodView(**{**pod.__dict__, "template_hash": "old"}) for pod in gang(job)]
    plan = reconcile(job, pods, NOW)
    assert plan.status.phase == "Restarting" and plan.status.reason == "SpecChanged"
    assert plan.status.restarts == 0 and len(plan.delete_pods) == 2


def test_suspend_deletes_pods_and_resume_starts_a_new_attempt() -> None:
    body = manifest(runPolicy={"suspend": True})
    body["status"] = running_job().status.wire()
    suspended_job = SFTJob.model_validate(body)
    suspended = reconcile(suspended_job, gang(suspended_job), NOW)
    assert suspended.status.phase == "Suspended" and suspended.status.start_time is None
    assert len(suspended.delete_pods) == 2
    resumed_job = SFTJob.model_validate({**manifest(), "status": suspended.status.wire()})
    waiting = reconcile(resumed_job, gang(resumed_job, deleting=True), NOW)
    assert waiting.status.phase == "Restarting" and not waiting.create_pods
    resumed = reconcile(advance(resumed_job, waiting), [], NOW + timedelta(seconds=1))
    assert resumed.create_pods and resumed.status.attempt == 1 and resumed.status.restarts == 0


def test_ttl_deletes_the_finished_job() -> None:
    job = make_job({"ttlSecondsAfterFinished": 60}, phase="Succeeded", completionTime=NOW - timedelta(seconds=61))
    assert reconcile(job, [], NOW).delete_job
    young = make_job({"ttlSecondsAfterFinished": 60}, phase="Succeeded", completionTime=NOW - timedelta(seconds=5))
    assert not reconcile(young, [], NOW).delete_job


def test_finished_jobs_never_recreate_pods() -> None:
    job = make_job(phase="Failed", completionTime=NOW, attemptStartTime=STARTED)
    plan = reconcile(job, [], NOW + timedelta(hours=1))
    assert not plan.create_pods and plan.status.phase == "Failed"


@pytest.mark.parametrize(("policy_name", "at_once", "later"), [("All", 1, 2), ("Running", 0, 1), ("None", 0, 0)])
def test_clean_pod_policy_on_success(policy_name: str, at_once: int, later: int) -> None:
    job = make_job({"cleanPodPolicy": policy_name}, phase="Running", attemptStartTime=STARTED, startTime=STARTED)
    pods = gang(job, "Running")
    pods[0] = PodView(**{**pods[0].__dict__, "phase": "Succeeded", "exit_code": 0})
    plan = reconcile(job, pods, NOW)
    assert len(plan.delete_pods) == at_once  # rank 1 may still be exiting: it gets a grace period
    assert len(reconcile(advance(job, plan), pods, NOW + timedelta(minutes=2)).delete_pods) == later


def test_gang_start_timeout_restarts_a_gang_that_never_reaches_running() -> None:
    run_policy = {"gangStartTimeoutSeconds": 120, "backoffLimit": 1}
    job = make_job(run_policy, phase="Initializing", attemptStartTime=NOW - timedelta(seconds=121), startTime=STARTED)
    plan = reconcile(job, gang(job), NOW)
    assert plan.status.phase == "Restarting" and plan.status.restarts == 1
    assert plan.status.last_failure is not None and plan.status.last_failure.reason == "GangStartTimeout"
    assert "GangStartTimeout" in {event.reason for event in plan.events}
    again = make_job(
        run_policy,
        phase="Pending",
        attempt=1,
        restarts=1,
        attemptStartTime=NOW - timedelta(seconds=200),
        startTime=STARTED,
    )
    final = reconcile(again, gang(again, "Pending"), NOW)
    assert final.status.phase == "Failed" and final.status.reason == "BackoffLimitExceeded"
    assert "GangStartTimeout" in (final.status.last_failure.message if final.status.last_failure else "")
    young = make_job(run_policy, phase="Initializing", attemptStartTime=NOW - timedelta(seconds=60), startTime=STARTED)
    assert reconcile(young, gang(young), NOW).status.phase == "Initializing"
    gated = reconcile(job, gang(job, "Pending", gated=True), NOW)
    assert gated.status.phase == "Pending"  # waiting for admission is not being stuck


def test_lifecycle_facts_come_from_the_operators_record_not_the_status() -> None:
    """Issue 16 item 3: what the trainer patches into status (phase, attempt, restarts, lastFailure)
    is replaced by the operator's record; its progress and metrics are kept."""
    job = running_job(restarts=1, lastFailure={"reason": "PodFailed", "time": STARTED, "retryable": True})
    record = lifecycle_record(job.status)
    assert record["phase"] == "Active" and "reason" not in record
    forged = job.model_dump(mode="json", by_alias=True)
    forged["metadata"]["annotations"] = {LIFECYCLE_ANNOTATION: json.dumps(record)}
    forged["status"].update(phase="Succeeded", attempt=5, restarts=0, lastFailure=None, metrics={"loss": 1.5})
    trusted_job = SFTJob.model_validate(forged)
    trusted = trusted_status(trusted_job)
    assert trusted.phase == "Pending" and trusted.attempt == 0 and trusted.restarts == 1  # active: from the pods
    plan = reconcile(trusted_job.model_copy(update={"status": trusted}), gang(job), NOW)
    assert plan.status.phase == "Running" and not plan.delete_pods  # not finished by the forged phase
    assert trusted.last_failure is not None and trusted.last_failure.reason == "PodFailed"
    assert trusted.metrics is not None and trusted.metrics.loss == 1.5
    unrecorded = SFTJob.model_validate({**forged, "metadata": {**forged["metadata"], "annotations": {}}})
    assert trusted_status(unrecorded).phase == "Succeeded"  # no record yet: the status is all there is


def test_a_refused_create_fails_the_job_or_retries_without_counting() -> None:
    job = running_job(phase="Pending")
    psa = classify_refusal(403, 'pods "demo-node-0" is forbidden: violates PodSecurity "restricted:latest": ...')
    failed = reconcile(job, gang(job, "Pending")[:1], NOW, Observed(refusal=psa))
    assert failed.status.phase == "Failed" and failed.status.reason == "PodSecurity"
    assert "violates PodSecurity" in str(failed.status.message) and failed.delete_pods
    quota = classify_refusal(403, 'pods "demo-node-1" is forbidden: exceeded quota: q, requested: cpu=1', "Pod", "x")
    retrying = reconcile(job, gang(job, "Pending")[:1], NOW, Observed(refusal=quota))
    assert retrying.status.phase == "Restarting" and retrying.status.reason == "QuotaExceeded"
    assert retrying.status.restarts == 0 and retrying.status.next_attempt_time == NOW + timedelta(seconds=10)
    reasons = {event.reason: event.type for event in retrying.events}
    assert reasons["QuotaExceeded"] == "Warning" and "Restarting" in reasons


@pytest.mark.parametrize(
    ("code", "message", "reason", "permanent"),
    [
        (422, 'Pod "x" is invalid: spec.tolerations[0].operator: Unsupported value: "Sometimes"', "Invalid", True),
        (403, 'pods "x" is forbidden: violates PodSecurity "baseline:latest": hostPath volumes', "PodSecurity", True),
        (403, 'pods "x" is forbidden: exceeded quota: compute, requested: pods=1', "QuotaExceeded", False),
        (403, 'pods "x" is forbidden: no PriorityClass with name urgent was found', "PriorityClassNotFound", True),
        (403, 'pods "x" is forbidden: error looking up service account t/robot: serviceaccount "robot" not found',
         "ServiceAccountNotFound", True),
        (403, 'pods "x" is forbidden: error looking up service account t/demo-trainer: serviceaccount "demo-trainer" '
         "not found", "ServiceAccountNotFound", False),
        (500, "etcdserver: request timed out", "CreateRetrying", False),
        (403, 'pods "x" is forbidden: User "system:serviceaccount:kube-sft:kube-sft" cannot create resource "pods" '
         'in API group "" in the namespace "t": RBAC: [clusterrole.rbac.authorization.k8s.io "kube-sft" not found]',
         "OperatorForbidden", False),
        (403, 'pods "x" is forbidden: ValidatingAdmissionPolicy "p" with binding "b" denied request: no', "Forbidden",
         True),
    ],
)  # fmt: skip
def test_api_refusals_are_classified(code: int, message: str, reason: str, permanent: bool) -> None:
    refusal = classify_refusal(code, message, "Pod", "x", own_service_account="demo-trainer")
    assert (refusal.reason, refusal.permanent) == (reason, permanent)


def test_an_edit_the_api_server_refuses_keeps_the_running_gang() -> None:
    job = running_job()
    edited = make_job(None, **job.status.model_dump(by_alias=True))
    edited = edited.model_copy(update={"spec": edited.spec.model_copy(update={"image": "elsewhere/trainer:2"})})
    refused = classify_refusal(403, 'violates PodSecurity "restricted:latest": runAsNonRoot != true')
    plan = reconcile(edited, gang(job), NOW, Observed(spec_refusal=refused))
    assert plan.status.phase == "Running" and not plan.delete_pods and not plan.create_pods
    assert plan.status.reason == "SpecChangeRefused" and "PodSecurity" in str(plan.status.message)
    assert [event.reason for event in plan.events] == ["SpecChangeRefused"]
    assert reconcile(edited, gang(job), NOW).status.phase == "Restarting"  # the API server would take it


def test_an_access_check_not_answered_yet_holds_the_gang_back_without_failing() -> None:
    job = make_job()
    pending = Refusal(403, "AccessCheckPending", "the creator's rights cannot be checked yet (...)", permanent=False)
    plan = reconcile(job, [], NOW, Observed(access_refusal=pending))
    assert not plan.create_pods and plan.status.phase == "Pending" and plan.status.reason == "AccessCheckPending"
    assert [(event.type, event.reason) for event in plan.events if event.type == "Warning"] == [
        ("Warning", "AccessCheckPending")
    ]
    denied = Refusal(403, "AccessDenied", "spec.pod.serviceAccountName: alice may not ...", permanent=True)
    assert reconcile(job, [], NOW, Observed(access_refusal=denied)).status.phase == "Failed"


def test_names_held_by_another_owner_hold_the_gang_back_with_a_reason() -> None:
    job = make_job()
    plan = reconcile(job, [], NOW, Observed(held_by_others=("ConfigMap/demo-config",)))
    assert plan.create_pods  # the controller retries, and never takes the old object as its own
    assert plan.status.reason == "WaitingForOldChildren" and "ConfigMap/demo-config" in str(plan.status.message)
    assert "WaitingForOldChildren" in {event.reason for event in plan.events}
    held = Observed(held_by_others=("ConfigMap/demo-config",))
    waited = make_job({"gangStartTimeoutSeconds": 60, "backoffLimit": 0}, phase="Pending",
                      attemptStartTime=NOW - timedelta(seconds=61), startTime=NOW - timedelta(seconds=61))  # fmt: skip
    final = reconcile(waited, [], NOW, held)
    assert final.status.phase == "Failed" and final.status.reason == "BackoffLimitExceeded"
    assert "GangStartTimeout" in str(final.status.message) and "ConfigMap/demo-config" in str(final.status.message)


# --- reading pods -------------------------------------------------------------------------------------


def test_pod_view_reads_exit_code_and_termination_message(job: SFTJob) -> None:
    pod = render.pod(job, 1)
    pod["metadata"].update(uid="abc", creationTimestamp="2026-01-01T12:00:00Z")
    pod["status"] = {
        "phase": "Failed",
        "containerStatuses": [
            {
                "name": "trainer",
                "state": {
                    "terminated": {
                        "exitCode": 11,
                        "reason": "Error",
                        "message": '{"message": "bad rows"}',
                        "finishedAt": "2026-01-01T12:01:00Z",
                    }
                },
            }
        ],
    }
    view = pod_view(pod)
    assert (view.rank, view.attempt, view.phase, view.exit_code) == (1, 0, "Failed", 11)
    assert view.template_hash == render.template_hash(job)
    assert view.finished == datetime.fromisoformat("2026-01-01T12:01:00+00:00")
    assert view.message == '{"message": "bad rows"}'


@pytest.mark.parametrize("restarting", [False, True])
def test_a_creator_without_the_jobs_rights_fails_it_before_any_create(restarting: bool) -> None:
    """The controller's re-check (sft_operator.access) found a right the creator lacks: the job fails
    at once, permanently, with the fields named, and nothing is created (first attempt or a restart)."""
    denied = policy.Refusal(403, "AccessDenied", "spec.pod.serviceAccountName: dana may not create pods", True)
    job = make_job(phase="Restarting", attempt=0, attemptStartTime=STARTED) if restarting else make_job()
    assert reconcile(job, [], NOW).create_pods  # without the refusal, the gang would be created
    plan = reconcile(job, [], NOW, Observed(access_refusal=denied))
    assert not plan.create_pods and plan.status.phase == "Failed"
    assert plan.status.reason == "AccessDenied" and "serviceAccountName" in (plan.status.message or "")
    assert plan.status.last_failure is not None and not plan.status.last_failure.retryable
    assert ("Warning", "AccessDenied") in [(event.type, event.reason) for event in plan.events]


def test_a_timeout_runs_out_at_its_limit_and_never_without_a_clock_or_a_limit() -> None:
    started = NOW - timedelta(seconds=90)
    assert policy.overdue(started, 91, NOW) is None
    assert policy.overdue(started, 90, NOW) == 90  # reached: out
    assert policy.overdue(None, 10, NOW) is None and policy.overdue(started, None, NOW) is None
