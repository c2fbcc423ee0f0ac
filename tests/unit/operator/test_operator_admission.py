"""The admission rules' pure parts: references found in a spec, the operator's re-check, the generated
policies' cost bounds, the typed pass-through schemas and the labels the operator keeps for itself."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from sft_operator import access, render
from sft_operator.api import SFTJob, admission, crd, references
from sft_operator.api.kubernetes_types import VOLUME_SOURCES
from tests.builders import manifest

EVERY_REFERENCE: dict[str, Any] = {
    "storage": {
        "model": {"mountPath": "/m", "credentialsSecretRef": {"name": "hub"}},
        "data": {"mountPath": "/d", "persistentVolumeClaim": {"claimName": "data-claim"}},
    },
    "pod": {
        "env": [
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "k"}}},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "env-config", "key": "k"}}},
            {"name": "PLAIN", "value": "x"},
        ],
        "volumes": [
            {"name": "s", "secret": {"secretName": "vol-secret"}},
            {"name": "c", "configMap": {"name": "vol-config"}},
            {
                "name": "p",
                "projected": {"sources": [{"secret": {"name": "proj-secret"}}, {"configMap": {"name": "pc"}}]},
            },
            {"name": "csi", "csi": {"driver": "d", "nodePublishSecretRef": {"name": "csi-secret"}}},
            {"name": "claim", "persistentVolumeClaim": {"claimName": "vol-claim"}},
        ],
        "imagePullSecrets": [{"name": "registry"}],
    },
}


def job_with(spec: dict[str, Any], name: str = "tuned", annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "team-a", "annotations": annotations or {}}, "spec": spec}


def test_every_reference_is_found_with_its_field() -> None:
    checks = references.required_access(job_with(EVERY_REFERENCE))
    found = {(check.field, check.resource, check.name) for check in checks}
    assert found == {
        ("spec.storage.model.credentialsSecretRef.name", "secrets", "hub"),
        ("spec.storage.data.persistentVolumeClaim.claimName", "persistentvolumeclaims", "data-claim"),
        ("spec.pod.env[TOKEN].valueFrom.secretKeyRef.name", "secrets", "env-secret"),
        ("spec.pod.env[MODE].valueFrom.configMapKeyRef.name", "configmaps", "env-config"),
        ("spec.pod.volumes[s].secret.secretName", "secrets", "vol-secret"),
        ("spec.pod.volumes[c].configMap.name", "configmaps", "vol-config"),
        ("spec.pod.volumes[p].projected.sources[].secret.name", "secrets", "proj-secret"),
        ("spec.pod.volumes[p].projected.sources[].configMap.name", "configmaps", "pc"),
        ("spec.pod.volumes[csi].csi.nodePublishSecretRef.name", "secrets", "csi-secret"),
        ("spec.pod.volumes[claim].persistentVolumeClaim.claimName", "persistentvolumeclaims", "vol-claim"),
        ("spec.pod.imagePullSecrets[registry].name", "secrets", "registry"),
    }
    assert all(check.verb == "get" for check in checks)


@pytest.mark.parametrize(
    ("account", "needs_pods"), [(None, False), ("tuned-trainer", False), ("builder", True), ("other-trainer", True)]
)
def test_another_service_account_needs_the_right_to_create_pods(account: str | None, needs_pods: bool) -> None:
    spec = {"pod": {"serviceAccountName": account}} if account else {}
    checks = references.required_access(job_with(spec))
    assert (references.AccessCheck("spec.pod.serviceAccountName", "create", "pods") in checks) is needs_pods


def test_every_reference_path_exists_in_the_crd() -> None:
    """A REFERENCES path the CRD does not have would never match: walk each through the schema."""
    spec = crd.spec_schema()
    for reference in references.REFERENCES:
        node = spec
        for segment in reference.segments:
            node = node["properties"][segment.key]
            if segment.is_list:
                assert node["type"] == "array", reference.path
                node = node["items"]
                if segment.naming:
                    assert segment.naming in node["properties"], reference.path
        assert node["type"] == "string", reference.path


def test_creator_is_read_from_the_annotations() -> None:
    annotations = {
        admission.CREATOR_ANNOTATION: "alice",
        admission.CREATOR_GROUPS_ANNOTATION: "team-a,system:authenticated",
        admission.CREATOR_UID_ANNOTATION: "u-1",
    }
    creator = access.creator_of(job_with({}, annotations=annotations))
    assert creator == access.Creator("alice", ("team-a", "system:authenticated"), "u-1")
    assert access.creator_of(job_with({})) is None
    review = access.subject_access_review(creator, "team-a", references.AccessCheck("f", "get", "secrets", "hub"))
    assert review["spec"] == {
        "user": "alice",
        "groups": ["team-a", "system:authenticated"],
        "uid": "u-1",
        "resourceAttributes": {"namespace": "team-a", "verb": "get", "group": "", "resource": "secrets", "name": "hub"},
    }


def test_access_problems_name_each_denied_field() -> None:
    job = job_with(
        {**EVERY_REFERENCE, "pod": {**EVERY_REFERENCE["pod"], "serviceAccountName": "builder"}},
        annotations={admission.CREATOR_ANNOTATION: "alice"},
    )
    asked: list[tuple[str, str]] = []

    def allowed(creator: access.Creator, namespace: str, check: references.AccessCheck) -> bool:
        asked.append((creator.username, namespace))
        return check.name not in ("env-secret", "") and check.resource != "configmaps"

    problems = access.access_problems(job, allowed)
    assert problems == [
        "spec.pod.env[TOKEN].valueFrom.secretKeyRef.name: alice may not get secrets/env-secret in namespace team-a",
        "spec.pod.env[MODE].valueFrom.configMapKeyRef.name: alice may not get configmaps/env-config in namespace team-a",
        "spec.pod.volumes[c].configMap.name: alice may not get configmaps/vol-config in namespace team-a",
        "spec.pod.volumes[p].projected.sources[].configMap.name: alice may not get configmaps/pc in namespace team-a",
        "spec.pod.serviceAccountName: alice may not create pods in namespace team-a",
    ]
    assert set(asked) == {("alice", "team-a")}
    assert access.access_problems(job_with(EVERY_REFERENCE), allowed) == []  # no recorded creator: nothing asked


def test_lifecycle_fields_are_every_status_field_but_the_trainers() -> None:
    lifecycle = admission.lifecycle_status_fields()
    for name in ("phase", "attempt", "restarts", "conditions", "lastFailure", "completionTime", "message"):
        assert name in lifecycle
    assert not set(admission.TRAINER_STATUS_FIELDS) & set(lifecycle)


def _expressions(policy: dict[str, Any]) -> list[str]:
    spec = policy["spec"]
    found = [
        item["expression"] for key in ("variables", "validations", "matchConditions") for item in spec.get(key, [])
    ]
    return found + [item["messageExpression"] for item in spec.get("validations", []) if "messageExpression" in item]


def test_authorization_checks_fit_the_cel_cost_limits() -> None:
    """At most 2 authorization checks (350 000 each) per expression, 28 per policy (10 000 000)."""
    for policy in admission.policies():
        checks = [expression.count(".check(") for expression in _expressions(policy)]
        assert max(checks, default=0) <= 2, policy["metadata"]["name"]
        assert sum(checks) <= 28, policy["metadata"]["name"]
    assert sum(admission.SLOTS.values()) + 1 <= 28


def test_policies_have_unique_variable_names_and_explain_every_refusal() -> None:
    for policy in admission.policies():
        names = [variable["name"] for variable in policy["spec"].get("variables", [])]
        assert len(names) == len(set(names))
        for validation in policy["spec"].get("validations", []):
            assert validation["messageExpression"] and validation["reason"] in ("Forbidden", "Invalid")


def test_reserved_key_pattern() -> None:
    pattern = re.compile(admission.RESERVED_KEY_PATTERN)
    for key in ("sft.kube-sft.io/job-name", "kube-sft.io/x", "a.b.kube-sft.io/y"):
        assert pattern.match(key), key
    for key in ("app.kubernetes.io/name", "notkube-sft.io/x", "team/kube-sft.io", "kube-sft.io"):
        assert not pattern.match(key), key


def test_pass_through_kubernetes_types_are_typed_in_the_crd() -> None:
    pod = crd.spec_schema()["properties"]["pod"]["properties"]
    toleration = pod["tolerations"]["items"]
    assert toleration["properties"]["operator"]["enum"] == ["Exists", "Equal", "Lt", "Gt"]
    assert toleration["properties"]["tolerationSeconds"]["type"] == "integer"
    assert "x-kubernetes-preserve-unknown-fields" not in toleration
    assert set(pod["volumes"]["items"]["properties"]) == {"name", *VOLUME_SOURCES}
    assert pod["volumeMounts"]["items"]["required"] == ["name", "mountPath"]
    node_affinity = pod["affinity"]["properties"]["nodeAffinity"]["properties"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in node_affinity
    value_from = pod["env"]["items"]["properties"]["valueFrom"]["properties"]
    assert value_from["secretKeyRef"]["required"] == ["key"]


def test_user_labels_never_replace_the_operators() -> None:
    body = manifest()
    body["spec"].setdefault("pod", {})["labels"] = {
        render.LABEL_JOB: "victim",
        render.LABEL_RANK: "7",
        "app.kubernetes.io/managed-by": "me",
        "team": "a",
    }
    job = SFTJob.model_validate(body)
    labels = render.pod(job, 0)["metadata"]["labels"]
    assert labels[render.LABEL_JOB] == job.metadata.name
    assert labels[render.LABEL_RANK] == "0"
    assert labels["app.kubernetes.io/managed-by"] == render.MANAGED_BY
    assert labels["team"] == "a"


class FakeAuthorization:
    """AuthorizationV1Api's create_subject_access_review, answering from a set of allowed (verb, resource, name);
    `denial_reason` is the status reason of a denial (RBAC's list of what it could not read)."""

    def __init__(self, allowed: set[tuple[str, str, str]], denial_reason: str | None = None) -> None:
        self.allowed = allowed
        self.denial_reason = denial_reason
        self.reviews: list[dict[str, Any]] = []

    def create_subject_access_review(self, body: dict[str, Any]) -> Any:
        self.reviews.append(body)
        attributes = body["spec"]["resourceAttributes"]
        answer = (attributes["verb"], attributes["resource"], attributes.get("name", "")) in self.allowed

        class Status:
            allowed = answer
            reason = None if answer else self.denial_reason
            evaluation_error = None

        class Review:
            status = Status

        return Review


def test_access_refusal_is_a_permanent_refusal_naming_the_fields() -> None:
    job = job_with({"pod": {"env": EVERY_REFERENCE["pod"]["env"]}}, annotations={admission.CREATOR_ANNOTATION: "alice"})
    api = FakeAuthorization({("get", "configmaps", "env-config")})
    refusal = access.access_refusal(api, job)
    assert refusal is not None and refusal.permanent and refusal.reason == access.REASON
    assert "spec.pod.env[TOKEN].valueFrom.secretKeyRef.name: alice may not get secrets/env-secret" in refusal.message
    assert "configMapKeyRef" not in refusal.message
    assert [review["spec"]["user"] for review in api.reviews] == ["alice", "alice"]
    assert access.access_refusal(FakeAuthorization({("get", "secrets", "env-secret"), *api.allowed}), job) is None


def test_an_authorizer_that_cannot_evaluate_holds_the_job_back_without_failing_it() -> None:
    """Right after a kube-apiserver starts, RBAC denies while naming every role "not found" (its caches are
    still filling): the check is not answered, so the job neither starts unchecked nor fails."""
    job = job_with({"pod": {"env": EVERY_REFERENCE["pod"]["env"]}}, annotations={admission.CREATOR_ANNOTATION: "alice"})
    warming_up = 'RBAC: [clusterrole.rbac.authorization.k8s.io "system:basic-user" not found]'
    refusal = access.access_refusal(FakeAuthorization(set(), denial_reason=warming_up), job)
    assert refusal is not None and not refusal.permanent and refusal.reason == access.PENDING_REASON
    assert "system:basic-user" in refusal.message and "cannot be checked yet" in refusal.message


def test_review_incomplete_tells_a_missing_right_from_an_unfinished_evaluation() -> None:
    assert not access.review_incomplete(None, None)
    assert not access.review_incomplete("", "")
    assert access.review_incomplete('RBAC: [role.rbac.authorization.k8s.io "x" not found]', None)
    assert access.review_incomplete(None, "webhook authorizer timed out")


def test_the_typed_crd_stays_small_enough_for_client_side_apply() -> None:
    """`kubectl apply` (client side) keeps the whole object in a 256 KiB annotation: the CRD must fit."""
    assert len(json.dumps(crd.crd(), separators=(",", ":"))) < 200 * 1024
