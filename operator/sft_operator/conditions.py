"""The SFTJob's conditions: one per lifecycle type, True for the current phase's, plus RuntimeApplied
(whether the job's platform defaults could be read). Pure functions of the previous conditions and
the new status; a condition's lastTransitionTime moves only when its status flips."""

from datetime import datetime
from typing import Literal

from sft_operator.api import Condition, Phase, SFTJobStatus
from sft_operator.runtime import RUNTIME_APPLIED, RUNTIME_CONDITION, RUNTIME_PROBLEMS
from sft_operator.runtime import describe as describe_runtime

CONDITION_TYPES: tuple[str, ...] = ("Created", "Suspended", "Running", "Restarting", "Succeeded", "Failed")


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


def runtime_condition(
    previous: list[Condition], status: SFTJobStatus, generation: int, now: datetime
) -> list[Condition]:
    """The RuntimeApplied condition: False while the job's runtime cannot be read (its message names
    the field), True naming the runtime the current attempt got; none for a job without a runtime."""
    if status.reason in RUNTIME_PROBLEMS:
        value: Literal["True", "False"] = "False"
        reason, message = status.reason, status.message or ""
    elif status.runtime is not None:
        value, reason, message = "True", RUNTIME_APPLIED, describe_runtime(status.runtime)
    else:
        return []
    before = next((item for item in previous if item.type == RUNTIME_CONDITION), None)
    kept = before is not None and before.status == value
    return [
        Condition(
            type=RUNTIME_CONDITION,
            status=value,
            reason=reason,
            message=message,
            last_transition_time=before.last_transition_time if kept and before is not None else now,
            observed_generation=generation,
        )
    ]
