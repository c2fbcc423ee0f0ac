"""Pods as the reconcile decision sees them: the API's JSON summarised into a `policy.PodView`, the
ranks of an attempt with no live pod, the pods of an attempt counted by phase. Pure functions."""

from datetime import datetime
from typing import Any

from sft_operator.api import ReplicaCounts
from sft_operator.policy import PodView
from sft_operator.render import ANNOTATION_TEMPLATE_HASH, LABEL_ATTEMPT, LABEL_RANK, TRAINER_CONTAINER


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
    owner = next((ref.get("uid", "") for ref in meta.get("ownerReferences") or [] if ref.get("controller")), "")
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
        owner=owner,
        scheduled=next(
            (
                _time(item.get("lastTransitionTime"))
                for item in status.get("conditions") or []
                if item.get("type") == "PodScheduled" and item.get("status") == "True"
            ),
            None,
        ),
    )


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
