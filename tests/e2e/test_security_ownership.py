"""Ownership by uid and API refusals, as ordinary users through impersonation (issue 16 items 2 and 5).

- `mallory`, who may create pods in the jobs' namespace, starts pods carrying another user's job labels
  (`sft.kube-sft.io/job-name`, `node-rank`, `attempt`), one failing, one running: the operator ignores
  them (a `ForeignPod` Warning Event on the job) and the victim's job finishes with 0 restarts.
- `alice`, who may create SFTJobs (and pods, so that a ServiceAccount of her choice is hers to pick),
  submits jobs whose pods the API server refuses: Pod Security (`restricted` namespace, an nfs
  volume), an exceeded ResourceQuota, a missing PriorityClass, a missing ServiceAccount. Each gets a
  Failed condition (quota: a Restarting condition that says it retries, with back-off) and a Warning
  Event within 10 s, and the operator logs the refusal once per attempt, never in a loop.

Users act through `kubectl --as` and through the API with impersonation headers, never as admin; the
admin client only sets up namespaces, roles, quotas and reads.
"""

from __future__ import annotations

import contextlib
import re
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
import yaml

from tests.e2e.harness import (
    GROUP,
    JOBS_NAMESPACE,
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_RANK,
    PLURAL,
    SYSTEM_NAMESPACE,
    VERSION,
    System,
    sft_system,
    sftjob,
)

__all__ = ["sft_system"]

pytestmark = pytest.mark.e2e

TRAINING: dict[str, Any] = {
    "model": {"source": "hf", "path": "/models/tiny"},
    "data": {"train_file": "/data/train.jsonl"},
    "trainer": {"max_steps": 20, "val_check_interval": 5, "save_interval": 10, "global_batch_size": 4},
}
USERS = {
    "alice": [
        {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["create", "get", "list", "watch", "patch", "delete"]},
        {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "list"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]},
    ],
    "mallory": [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "list", "delete"]},
        {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "list"]},
    ],
}


def script(body: str) -> list[str]:
    return ["python", "-c", "import os, sys, time\n" + textwrap.dedent(body)]


@pytest.fixture(scope="module")
def users(sft_system: System) -> Iterator[dict[str, kubernetes.client.ApiClient]]:
    """Roles for alice and mallory in the jobs' namespace; an impersonating API client for each."""
    rbac = kubernetes.client.RbacAuthorizationV1Api(sft_system.cluster.client)
    clients: dict[str, kubernetes.client.ApiClient] = {}
    for user, rules in USERS.items():
        name = f"e2e-{user}"
        rbac.create_namespaced_role(JOBS_NAMESPACE, {"metadata": {"name": name}, "rules": rules})
        rbac.create_namespaced_role_binding(
            JOBS_NAMESPACE,
            {
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
            },
        )
        client = sft_system.cluster.api_client()
        client.set_default_header("Impersonate-User", user)
        clients[user] = client
    yield clients
    for user in USERS:
        rbac.delete_namespaced_role_binding(f"e2e-{user}", JOBS_NAMESPACE)
        rbac.delete_namespaced_role(f"e2e-{user}", JOBS_NAMESPACE)


def apply_as(system: System, user: str, body: dict[str, Any]) -> None:
    """`kubectl apply --as <user>`."""
    system.cluster.kubectl("apply", "--as", user, "-n", JOBS_NAMESPACE, "-f", "-", input=yaml.safe_dump(body))


def test_users_are_not_admin(sft_system: System, users: dict[str, kubernetes.client.ApiClient]) -> None:
    for user in USERS:
        answer = sft_system.cluster.kubectl("auth", "can-i", "--as", user, "create", "clusterroles", check=False)
        assert answer.stdout.strip() == "no", user
    with pytest.raises(kubernetes.client.ApiException) as denied:
        kubernetes.client.CoreV1Api(users["mallory"]).list_namespaced_secret(JOBS_NAMESPACE)
    assert denied.value.status == 403


def test_impostor_pods_with_another_jobs_labels_do_not_disturb_it(
    sft_system: System, users: dict[str, kubernetes.client.ApiClient]
) -> None:
    system = sft_system
    victim = "own-victim"
    apply_as(system, "alice", sftjob(victim, TRAINING, num_nodes=2, pod={"command": script("time.sleep(20)")}))
    job = system.wait(lambda: system.get(victim), 30, "the victim job", victim)
    system.wait(lambda: len(system.pods(victim)) == 2, 60, "the victim's two pods", victim)
    image = system.pods(victim)[0].spec.containers[0].image  # the node has it: no registry is reachable
    as_mallory = kubernetes.client.CoreV1Api(users["mallory"])
    labels = {LABEL_JOB: victim, LABEL_RANK: "1", LABEL_ATTEMPT: "0"}
    forged_owner = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "SFTJob", "name": victim,
                    "uid": job["metadata"]["uid"], "controller": True}  # fmt: skip
    impostors = {
        "impostor-failing": ({}, script("sys.exit(3)")),
        "impostor-running": ({}, script("time.sleep(60)")),
        "impostor-forged-owner": ({"ownerReferences": [forged_owner]}, script("sys.exit(3)")),
    }
    for name, (extra, command) in impostors.items():
        pod = {
            "metadata": {"name": name, "labels": labels, **extra},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {"name": "trainer", "image": image, "imagePullPolicy": "IfNotPresent", "command": command}
                ],
                "securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
            },
        }
        as_mallory.create_namespaced_pod(JOBS_NAMESPACE, pod)
    system.wait(
        lambda: len([p for p in system.pods(victim) if p.metadata.name.startswith("impostor") and
                     p.status.phase in ("Running", "Failed")]) == 3,
        60, "the impostor pods started", victim,
    )  # fmt: skip
    final = system.wait_phase(victim, {"Succeeded", "Failed"}, 120)
    assert final["phase"] == "Succeeded" and final["restarts"] == 0 and final["attempt"] == 0, final
    reasons = [reason for reason, _ in system.events(victim)]
    assert "ForeignPod" in reasons and "PodFailed" not in reasons and "Restarting" not in reasons, reasons
    left = {p.metadata.name for p in system.pods(victim, include_deleting=False)}
    assert {"impostor-running", "impostor-failing"} <= left, "the operator never deletes what is not its own"
    for name in impostors:
        as_mallory.delete_namespaced_pod(name, JOBS_NAMESPACE, grace_period_seconds=0)


def refusal_lines(system: System, job: str) -> int:
    """Lines of every operator replica's log that report a refused create for `job`."""
    pattern = re.compile(rf"{JOBS_NAMESPACE}/{job}: \w+ \S+ refused")
    return sum(
        len(pattern.findall(system.agent.logs(SYSTEM_NAMESPACE, pod.metadata.name))) for pod in system.operator_pods()
    )


def condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind and c["status"] == "True"), None)


@pytest.fixture
def restricted_namespace(sft_system: System) -> Iterator[None]:
    """Pod Security `restricted` enforced on the jobs' namespace for one test."""
    labels = {"pod-security.kubernetes.io/enforce": "restricted"}
    sft_system.core.patch_namespace(JOBS_NAMESPACE, {"metadata": {"labels": labels}})
    yield
    sft_system.core.patch_namespace(JOBS_NAMESPACE, {"metadata": {"labels": dict.fromkeys(labels)}})


@pytest.fixture
def full_quota(sft_system: System) -> Iterator[str]:
    """A PriorityClass whose pods a ResourceQuota in the jobs' namespace allows none of."""
    scheduling = kubernetes.client.SchedulingV1Api(sft_system.cluster.client)
    name = "e2e-quota-scoped"
    scheduling.create_priority_class({"metadata": {"name": name}, "value": 10})
    scope = {"matchExpressions": [{"scopeName": "PriorityClass", "operator": "In", "values": [name]}]}
    sft_system.core.create_namespaced_resource_quota(
        JOBS_NAMESPACE, {"metadata": {"name": name}, "spec": {"hard": {"pods": "0"}, "scopeSelector": scope}}
    )
    yield name
    with contextlib.suppress(kubernetes.client.ApiException):  # the test may have lifted it already
        sft_system.core.delete_namespaced_resource_quota(name, JOBS_NAMESPACE)
    scheduling.delete_priority_class(name)


@pytest.mark.parametrize(
    ("case", "pod", "reason"),
    [
        ("psa", {"volumes": [{"name": "share", "nfs": {"server": "10.0.0.1", "path": "/"}}],
                 "volumeMounts": [{"name": "share", "mountPath": "/share"}]}, "PodSecurity"),
        ("priority", {"priorityClassName": "no-such-priority"}, "PriorityClassNotFound"),
        ("account", {"serviceAccountName": "ghost"}, "ServiceAccountNotFound"),
    ],
    ids=["pod-security", "missing-priority-class", "missing-service-account"],
)  # fmt: skip
def test_a_permanent_refusal_fails_the_job_at_once(
    sft_system: System,
    users: dict[str, kubernetes.client.ApiClient],
    restricted_namespace: None,
    case: str,
    pod: dict[str, Any],
    reason: str,
) -> None:
    system = sft_system
    name = f"refused-{case}"
    body = sftjob(name, TRAINING, num_nodes=2, pod={"command": script("time.sleep(1)"), **pod})
    applied = time.monotonic()
    apply_as(system, "alice", body)
    as_alice = kubernetes.client.CustomObjectsApi(users["alice"])

    def failed() -> dict[str, Any] | None:
        status = as_alice.get_namespaced_custom_object(GROUP, VERSION, JOBS_NAMESPACE, PLURAL, name).get("status") or {}
        return status if condition(status, "Failed") else None

    status = system.wait(failed, 10, f"{name} Failed within 10 s", name)
    took = time.monotonic() - applied
    assert status["reason"] == reason, status
    assert (condition(status, "Failed") or {})["reason"] == reason
    assert "refused" in status["message"] and status["restarts"] == 0
    events = kubernetes.client.CoreV1Api(users["alice"]).list_namespaced_event(
        JOBS_NAMESPACE, field_selector=f"involvedObject.name={name}"
    )
    assert any(e.reason == reason and e.type == "Warning" for e in events.items), [e.reason for e in events.items]
    assert not system.pods(name, include_deleting=False), "no partial gang is left"
    time.sleep(10)
    assert refusal_lines(system, name) <= 2, "refused once (per create wave), never retried"
    print(f"{case}: Failed ({reason}) {took:.1f}s after kubectl apply")
    system.cluster.kubectl("delete", "--as", "alice", "-n", JOBS_NAMESPACE, "sftjob", name, "--wait=false")


def test_an_exceeded_quota_retries_with_backoff_and_says_so(
    sft_system: System, users: dict[str, kubernetes.client.ApiClient], full_quota: str
) -> None:
    system = sft_system
    name = "refused-quota"
    body = sftjob(name, TRAINING, num_nodes=2, pod={"command": script("time.sleep(1)"), "priorityClassName": full_quota},
                  run_policy={"backoffSeconds": 2, "maxBackoffSeconds": 30})  # fmt: skip
    applied = time.monotonic()
    apply_as(system, "alice", body)

    def retrying() -> dict[str, Any] | None:
        status = system.status(name)
        return status if (condition(status, "Restarting") or {}).get("reason") == "QuotaExceeded" else None

    status = system.wait(retrying, 10, f"{name} retrying within 10 s", name)
    took = time.monotonic() - applied
    assert "exceeded quota" in status["message"] and status["restarts"] == 0 and status.get("nextAttemptTime")
    system.wait(lambda: ("QuotaExceeded", "Warning") in {(r, "Warning") for r, _ in system.events(name)}, 10,
                "the Warning Event", name)  # fmt: skip
    time.sleep(15)
    lines = refusal_lines(system, name)
    assert 1 <= lines <= 5, f"{lines} refusals in ~20 s: back-off 2, 4, 8 s, not a loop"
    system.core.delete_namespaced_resource_quota(full_quota, JOBS_NAMESPACE)
    final = system.wait_phase(name, {"Succeeded", "Failed"}, 120)
    assert final["phase"] == "Succeeded" and final["restarts"] == 0, final
    print(f"quota: Restarting (QuotaExceeded) {took:.1f}s after kubectl apply, {lines} refusals logged")
