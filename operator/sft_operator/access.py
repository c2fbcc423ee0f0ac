"""The operator's own check that an SFTJob's creator holds the rights the job uses, before it creates
anything: the admission policies (`api/admission.py`) refuse such a job at apply, but they cannot see
a job created before they were installed, nor rights revoked since the job was created.

The creator is what the `sftjob-creator` MutatingAdmissionPolicy recorded at creation (username,
groups, uid annotations; the policies refuse any other value and any change). Every right in
`references.required_access(job)` is asked of the API server as a SubjectAccessReview for that user.
A job without creator annotations was created without the chart's admission policies: nothing is
checked (`creator_of` returns None), as the operator did before.

The hook for the controller: before it creates a job's children (first attempt and every restart),

    refusal = access.access_refusal(authorization_api, raw_job)   # a policy.Refusal or None
    if refusal.permanent: the decision fails the job with it (condition + Warning Event, no pods)
    else: the check could not be made (PENDING_REASON): no pods yet, the job says why, tried again later

Fail closed: a check the API server cannot answer (the operator may not create reviews, or the
authorizer names roles it cannot find, as a kube-apiserver does for a moment after it starts) never
lets the gang start unchecked and never fails the job: it waits.

`creator_access_problems` makes one API call per right (none when the creator is unknown).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sft_operator.api.admission import (
    CREATOR_ANNOTATION,
    CREATOR_GROUPS_ANNOTATION,
    CREATOR_UID_ANNOTATION,
    GROUP_SEPARATOR,
)
from sft_operator.api.references import AccessCheck, required_access
from sft_operator.policy import Refusal

Object = dict[str, Any]

REASON = "AccessDenied"
"""Condition and Event reason of a job failed by this check."""

PENDING_REASON = "AccessCheckPending"
"""Status and Event reason of a job whose creator's rights cannot be checked yet (no pods until they are)."""


class AccessCheckIncompleteError(Exception):
    """The authorizer could not finish a review (its answer names what it could not read)."""


@dataclass(frozen=True)
class Creator:
    """The user who created an SFTJob, as the API server authenticated them."""

    username: str
    groups: tuple[str, ...] = ()
    uid: str = ""


def creator_of(job: Object) -> Creator | None:
    """The recorded creator of a job (wire form), or None when the admission policies did not record one."""
    annotations = (job.get("metadata") or {}).get("annotations") or {}
    username = annotations.get(CREATOR_ANNOTATION)
    if not username:
        return None
    groups = tuple(group for group in annotations.get(CREATOR_GROUPS_ANNOTATION, "").split(GROUP_SEPARATOR) if group)
    return Creator(username, groups, annotations.get(CREATOR_UID_ANNOTATION, ""))


def subject_access_review(creator: Creator, namespace: str, check: AccessCheck) -> Object:
    """The SubjectAccessReview asking whether `creator` may do `check` in `namespace`."""
    attributes: Object = {"namespace": namespace, "verb": check.verb, "group": "", "resource": check.resource}
    if check.name:
        attributes["name"] = check.name
    spec: Object = {"user": creator.username, "groups": list(creator.groups), "resourceAttributes": attributes}
    if creator.uid:
        spec["uid"] = creator.uid
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}


def access_problems(job: Object, allowed: Callable[[Creator, str, AccessCheck], bool]) -> list[str]:
    """Messages naming each field whose right the job's creator lacks (`allowed` answers one check)."""
    creator = creator_of(job)
    if creator is None:
        return []
    namespace = job["metadata"]["namespace"]
    return [
        f"{check.field}: {creator.username} may not {check.describe()} in namespace {namespace}"
        for check in required_access(job)
        if not allowed(creator, namespace, check)
    ]


def creator_access_problems(authorization: Any, job: Object) -> list[str]:
    """`access_problems` answered by the API server (`authorization`: a kubernetes AuthorizationV1Api)."""

    def allowed(creator: Creator, namespace: str, check: AccessCheck) -> bool:
        review = authorization.create_subject_access_review(subject_access_review(creator, namespace, check))
        status = review.status
        if not status.allowed and review_incomplete(status.reason, status.evaluation_error):
            raise AccessCheckIncompleteError(status.evaluation_error or status.reason)
        return bool(status.allowed)

    return access_problems(job, allowed)


def review_incomplete(reason: str | None, evaluation_error: str | None) -> bool:
    """Whether a denial is the authorizer failing to evaluate rather than a missing right: an evaluation
    error, or RBAC naming roles it could not find (its caches still filling after an API server start,
    or a binding to a deleted role). A plain missing right comes with neither."""
    return bool(evaluation_error) or "not found" in (reason or "")


def pending_refusal(job: Object, why: str) -> Refusal:
    """A transient Refusal (reason PENDING_REASON): the creator's rights cannot be checked yet."""
    message = f"the creator's rights cannot be checked yet ({why}); the pods are created once they can be"
    return Refusal(403, PENDING_REASON, message[:4096], permanent=False, kind="SFTJob", name=job["metadata"]["name"])


def access_refusal(authorization: Any, job: Object) -> Refusal | None:
    """The job's missing rights as a permanent Refusal (reason REASON) for the controller's decision, a
    transient one when the API server cannot answer the check yet (`pending_refusal`), or None."""
    try:
        problems = creator_access_problems(authorization, job)
    except AccessCheckIncompleteError as incomplete:
        return pending_refusal(job, f"the authorizer could not evaluate the review: {incomplete}")
    if not problems:
        return None
    message = "; ".join(problems) + " (an SFTJob may only use what its creator may use directly)"
    return Refusal(403, REASON, message, permanent=True, kind="SFTJob", name=job["metadata"]["name"])
