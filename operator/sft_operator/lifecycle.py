"""The operator's lifecycle record of an SFTJob: what it stores, how it is read back, and the status
it makes trustworthy.

The lifecycle record (phase, attempt, restarts, failure, times) lives in an annotation of the SFTJob
(LIFECYCLE_ANNOTATION), which only the operator writes: the trainer's token may patch the job's status,
so the status is a mirror the operator rewrites, never a source of lifecycle facts (`trusted_status`).
Pure functions; the controller writes the record, `status.reconcile` decides from the trusted status.
"""

from typing import Any

from sft_operator.api import GROUP, SFTJob, SFTJobStatus
from sft_operator.policy import json_object

ACTIVE_PHASES: frozenset[str] = frozenset({"Pending", "Initializing", "Running"})


LIFECYCLE_ANNOTATION = f"{GROUP}/lifecycle"


LIFECYCLE_FIELDS = frozenset(
    {
        "phase",
        "reason",
        "message",
        "start_time",
        "completion_time",
        "restarts",
        "attempt",
        "attempt_start_time",
        "next_attempt_time",
        "last_failure",
        "runtime",
    }
)
"""Status fields that drive the lifecycle: the operator keeps them in LIFECYCLE_ANNOTATION."""


def lifecycle_record(status: SFTJobStatus) -> dict[str, Any]:
    """The operator's lifecycle facts as stored in the annotation. Pending, Initializing and Running are
    one record ("Active"): they are derived from the pods on every reconcile, so moving between them
    costs no write."""
    record: dict[str, Any] = status.model_dump(mode="json", by_alias=True, include=set(LIFECYCLE_FIELDS))
    record = {key: value for key, value in record.items() if value is not None}
    if status.phase in ACTIVE_PHASES:
        record["phase"] = "Active"
        record.pop("reason", None)
        record.pop("message", None)
    return record


def stored_record(job: SFTJob) -> dict[str, Any] | None:
    """The lifecycle record the annotation holds (None: not written yet, or unreadable)."""
    return json_object(job.metadata.annotations.get(LIFECYCLE_ANNOTATION))


def trusted_status(job: SFTJob) -> SFTJobStatus:
    """The job's status with every lifecycle field taken from the operator's own record.

    What the trainer may have written there (`phase: Succeeded`, `attempt: 5`, `restarts: 0`,
    `lastFailure: null`) is replaced; its progress, metrics, checkpoint and final model are kept.
    A job with no record yet (new, or written by an operator before this one) keeps its status.
    """
    record = stored_record(job)
    if record is None:
        return job.status
    mirror = job.status
    data = mirror.model_dump(mode="json", by_alias=True, exclude=set(LIFECYCLE_FIELDS), exclude_none=True)
    data.update(record)
    if record.get("phase") == "Active":
        data["phase"] = mirror.phase if mirror.phase in ACTIVE_PHASES else "Pending"
        data["reason"], data["message"] = mirror.reason, mirror.message
    try:
        return SFTJobStatus.model_validate(data)
    except ValueError:  # a record edited by hand into nonsense: the status is all there is
        return job.status
