"""The soak's restart accounting (issue 22: every restart counted once), on hand-made Event lists."""

from __future__ import annotations

from tests.integration.operator.soak import JobEvent, restart_accounting_violation

STARTED = JobEvent("Normal", "Started", "creating 2 pod(s), attempt 1")


def test_counted_restarts_and_resumes_explain_the_attempt() -> None:
    assert restart_accounting_violation(attempt=3, restarts=2, resumes=1, events=[]) is None
    assert restart_accounting_violation(attempt=0, restarts=0, resumes=0, events=[]) is None


def test_an_uncounted_restart_is_explained_by_its_warning_event() -> None:
    events = [
        STARTED,
        JobEvent("Warning", "CreateRetrying", "creating soak-1-node-1-a1 was refused (503)"),
        JobEvent("Normal", "Restarting", "restarting the whole gang in 1s (not counted: CreateRetrying)"),
        JobEvent("Warning", "Disrupted", "soak-1-node-0-a2 (rank 0) failed: reason DisruptionTarget"),
    ]
    assert restart_accounting_violation(attempt=3, restarts=0, resumes=1, events=events) is None


def test_an_attempt_without_a_cause_is_a_double_count_and_lists_the_events() -> None:
    events = [STARTED, JobEvent("Warning", "PodFailed", "soak-1-node-1-a0 (rank 1) failed: exit code 137")]
    violation = restart_accounting_violation(attempt=2, restarts=1, resumes=0, events=events)
    assert violation is not None
    assert "attempt 2 vs restarts 1 + resumes 0 + uncounted restarts 0" in violation
    assert "Warning PodFailed: soak-1-node-1-a0 (rank 1) failed" in violation


def test_a_counted_restart_without_an_attempt_is_a_violation() -> None:
    violation = restart_accounting_violation(attempt=1, restarts=2, resumes=0, events=[])
    assert violation is not None and "events: none" in violation


def test_only_warnings_with_an_uncounted_reason_explain_an_attempt() -> None:
    events = [
        JobEvent("Normal", "Disrupted", "not a Warning"),
        JobEvent("Warning", "PodFailed", "counted: explained by restarts, not here"),
    ]
    assert restart_accounting_violation(attempt=1, restarts=0, resumes=0, events=events) is not None
