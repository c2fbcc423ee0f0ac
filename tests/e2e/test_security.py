"""Scenario 7: the per-job ServiceAccount's limits (real API calls and `kubectl auth can-i` with the
SA's own kubeconfig), pod security contexts, and no secret value leaking anywhere.

A Secret with a recognisable value is referenced by `storage.data.credentialsSecretRef` (the
trainer gets it as environment variables); after a real training run the value must appear in no
SFTJob status, Event, ConfigMap, pod spec or log (trainer pods and operator replicas).

Issue 16 (below the scenario 7 tests): an SFTJob author can never make the operator do what the
author could not do directly. Ordinary users act through impersonation (`kubectl --as`, the
Impersonate-User header), never as admin: every abuse class is refused at `kubectl apply` with the
field named, a user holding the matching right can still do it, two users in two namespaces work at
once while one tries to disturb the other, and the trainer's token cannot touch the lifecycle."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from kubernetes.client import ApiException

from sft_operator import access
from sft_operator.policy import Refusal
from tests.e2e.harness import (
    GROUP,
    JOBS_NAMESPACE,
    PLURAL,
    RELEASE,
    SYSTEM_NAMESPACE,
    TENANT_NAMESPACES,
    VERSION,
    System,
    gsm8k_data,
    gsm8k_dir,
    impersonating_client,
    sft_system,
    sftjob,
    tiny_training,
)

__all__ = ["sft_system"]

pytestmark = pytest.mark.e2e

JOB = "guarded"
OTHER = "neighbour"
SECRET = "hub-credentials"
SECRET_VALUE = "kube-sft-e2e-Secret-Value-7f3a9c1e"


@pytest.fixture(scope="module")
def guarded_run(sft_system: System, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The Secret, a suspended neighbour job, and one real run of the guarded job to Succeeded."""
    core = sft_system.core
    core.create_namespaced_secret(
        sft_system.namespace,
        {"metadata": {"name": SECRET}, "stringData": {"HF_TOKEN": SECRET_VALUE, "AWS_SECRET_ACCESS_KEY": SECRET_VALUE}},
    )
    host = tmp_path_factory.mktemp("security")
    data_dir = gsm8k_dir(Path(host) / "data")
    out = Path(host) / "out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    training = tiny_training(output_dir="/output/guarded", data=gsm8k_data(), max_steps=8, save_interval=4)
    neighbour = sftjob(OTHER, training, num_nodes=1, run_policy={"suspend": True})
    sft_system.apply(neighbour)
    body = sftjob(
        JOB, training, data_dir=data_dir, output={"hostPath": {"path": str(out)}},
        storage={"data": {"mountPath": "/data", "hostPath": {"path": str(data_dir)}, "readOnly": True,
                          "credentialsSecretRef": {"name": SECRET}}},
    )  # fmt: skip
    sft_system.apply(body)
    sft_system.wait(lambda: len(sft_system.pods(JOB)) == 2, 120, "the guarded job's pods", JOB)
    pods = [pod for pod in sft_system.pods(JOB)]
    final = sft_system.wait_phase(JOB, {"Succeeded", "Failed"}, 300)
    assert final["phase"] == "Succeeded", sft_system.diagnostics(JOB)
    return {"status": final, "pods": pods}


def sa_kubeconfig(system: System) -> Path:
    """A kubeconfig with a TokenRequest token of the guarded job's per-job ServiceAccount."""
    return system.cluster.service_account_kubeconfig(system.namespace, f"{JOB}-trainer")


def test_per_job_service_account_api_calls(sft_system: System, guarded_run: dict[str, Any]) -> None:
    """As the per-job SA: its own status may be patched; Secrets, pods and another job's status not."""
    api = sft_system.cluster.api_client(sa_kubeconfig(sft_system))
    custom, core = kubernetes.client.CustomObjectsApi(api), kubernetes.client.CoreV1Api(api)
    ns = sft_system.namespace
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, ns, PLURAL, JOB, {"status": {"metrics": {"mfu": 0.5}}})
    denied = {
        "read the Secret": lambda: core.read_namespaced_secret(SECRET, ns),
        "list Secrets": lambda: core.list_namespaced_secret(ns),
        "list pods": lambda: core.list_namespaced_pod(ns),
        "list pods cluster-wide": lambda: core.list_pod_for_all_namespaces(),
        "patch another job's status": lambda: custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, ns, PLURAL, OTHER, {"status": {"phase": "Succeeded"}}
        ),
        "patch its own spec": lambda: custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, JOB, {"spec": {"runPolicy": {"backoffLimit": 9}}}
        ),
        "read Secrets of the operator's namespace": lambda: core.list_namespaced_secret(SYSTEM_NAMESPACE),
    }
    for what, call in denied.items():
        with pytest.raises(ApiException) as error:
            call()
        assert error.value.status == 403, f"{what}: {error.value.status}"
    assert sft_system.status(OTHER).get("phase") != "Succeeded"


@pytest.mark.parametrize(
    ("args", "allowed"),
    [
        (["get", "secrets"], False),
        (["get", f"secrets/{SECRET}"], False),
        (["list", "secrets"], False),
        (["list", "pods"], False),
        (["get", "pods"], False),
        (["create", "pods"], False),
        (["patch", f"sftjobs.{GROUP}/{OTHER}", "--subresource=status"], False),
        (["update", f"sftjobs.{GROUP}/{OTHER}", "--subresource=status"], False),
        (["patch", f"sftjobs.{GROUP}/{JOB}"], False),
        (["patch", f"sftjobs.{GROUP}/{JOB}", "--subresource=status"], True),
    ],
    ids=lambda value: "-".join(value) if isinstance(value, list) else str(value),
)
def test_per_job_service_account_can_i(
    sft_system: System, guarded_run: dict[str, Any], args: list[str], allowed: bool
) -> None:
    """`kubectl auth can-i` run with the SA's own kubeconfig agrees with the API calls."""
    result = sft_system.cluster.kubectl(
        "auth", "can-i", *args, "-n", sft_system.namespace, kubeconfig=sa_kubeconfig(sft_system), check=False
    )
    answer = result.stdout.strip()
    assert answer == ("yes" if allowed else "no"), f"can-i {args}: {answer!r} {result.stderr}"


def test_pods_run_as_non_root_without_privilege_escalation(sft_system: System, guarded_run: dict[str, Any]) -> None:
    """Trainer pods and the chart's operator pods: runAsNonRoot, a non-zero uid, no escalation.
    (The node agent runs processes as its own user, so the spec is what can be checked here.)"""
    trainer_pods = guarded_run["pods"]
    operator_pods = sft_system.operator_pods()
    assert len(trainer_pods) == 2 and operator_pods
    for pod in [*trainer_pods, *operator_pods]:
        pod_context = pod.spec.security_context
        for container in pod.spec.containers:
            context = container.security_context
            assert context is not None, pod.metadata.name
            non_root = context.run_as_non_root if context.run_as_non_root is not None else pod_context.run_as_non_root
            uid = context.run_as_user if context.run_as_user is not None else pod_context.run_as_user
            assert non_root is True, f"{pod.metadata.name}: runAsNonRoot not set"
            assert uid is None or uid != 0, f"{pod.metadata.name}: runs as uid 0"
            assert context.allow_privilege_escalation is False, f"{pod.metadata.name}: privilege escalation allowed"
            assert not context.privileged, f"{pod.metadata.name}: privileged"
    for pod in trainer_pods:
        assert pod.spec.service_account_name == f"{JOB}-trainer"
        assert pod.spec.security_context.run_as_user not in (None, 0)
        env_from = pod.spec.containers[0].env_from or []
        assert [ref.secret_ref.name for ref in env_from if ref.secret_ref] == [SECRET]


def test_no_secret_value_leaks(sft_system: System, guarded_run: dict[str, Any]) -> None:
    """The Secret's value is in no status, Event, ConfigMap, pod spec or log."""
    api = sft_system.cluster.client
    core = kubernetes.client.CoreV1Api(api)
    places: dict[str, str] = {}
    jobs = sft_system.custom.list_namespaced_custom_object(GROUP, VERSION, sft_system.namespace, PLURAL)
    for job in jobs["items"]:
        places[f"sftjob/{job['metadata']['name']}"] = json.dumps(job)
    for ns in (sft_system.namespace, SYSTEM_NAMESPACE):
        for event in core.list_namespaced_event(ns).items:
            places[f"event/{ns}/{event.metadata.name}"] = json.dumps(api.sanitize_for_serialization(event))
        for config_map in core.list_namespaced_config_map(ns).items:
            places[f"configmap/{ns}/{config_map.metadata.name}"] = json.dumps(
                api.sanitize_for_serialization(config_map)
            )
        for pod in core.list_namespaced_pod(ns).items:
            places[f"pod/{ns}/{pod.metadata.name}"] = json.dumps(api.sanitize_for_serialization(pod))
    for pod in guarded_run["pods"]:
        places[f"pod-at-start/{pod.metadata.name}"] = json.dumps(api.sanitize_for_serialization(pod))
    places["all pod logs (trainers and operator replicas)"] = sft_system.agent.all_logs()
    for pod in sft_system.pods(JOB):
        places[f"kubectl logs {pod.metadata.name}"] = sft_system.cluster.kubectl(
            "logs", pod.metadata.name, "-n", sft_system.namespace, check=False
        ).stdout
    assert (
        any(name.startswith("configmap/") for name in places)
        and places["all pod logs (trainers and operator replicas)"]
    )
    assert "step" in places["all pod logs (trainers and operator replicas)"], "the trainer logs were collected"
    leaks = [name for name, text in places.items() if SECRET_VALUE in text]
    assert not leaks, f"secret value found in: {leaks}"


# --- issue 16: ordinary users through impersonation ----------------------------------------------------

TENANT_A, TENANT_B = TENANT_NAMESPACES
ALICE = "alice"  # may create SFTJobs in tenant-a and read its pods: no pods, no secrets
BOB = "bob"  # the same in tenant-b; tries to disturb alice
DANA = "dana"  # alice's teammate: also may get the team Secret/ConfigMap/claim and create pods in tenant-a
ERIN = "erin"  # an SFTJob author in the host-access namespace the chart allows (e2e-jobs)
TEAM_SECRET, TEAM_CONFIG, TEAM_CLAIM, OTHER_SA = "team-token", "team-config", "team-claim", "builder"
CREATOR = f"{GROUP}/created-by"


def rbac(namespace: str, name: str, rules: list[dict[str, Any]], users: list[str]) -> list[dict[str, Any]]:
    """A Role and its RoleBinding to `users`."""
    meta = {"name": name, "namespace": namespace}
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta, "rules": rules},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user} for user in users],
        },
    ]


AUTHOR_RULES = [
    {
        "apiGroups": [GROUP],
        "resources": [PLURAL],
        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
    },
    {"apiGroups": [""], "resources": ["pods", "events"], "verbs": ["get", "list", "watch"]},
]


@pytest.fixture(scope="module")
def tenants(sft_system: System) -> System:
    """Users, their Roles, and what tenant-a holds (a Secret, a ConfigMap, a claim, another ServiceAccount)."""
    objects = [
        *rbac(TENANT_A, "sftjob-author", AUTHOR_RULES, [ALICE, DANA]),
        *rbac(TENANT_B, "sftjob-author", AUTHOR_RULES, [BOB]),
        *rbac(JOBS_NAMESPACE, "sftjob-author", AUTHOR_RULES, [ERIN]),
        *rbac(
            TENANT_A,
            "team-reader",
            [
                {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [TEAM_SECRET], "verbs": ["get"]},
                {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [TEAM_CONFIG], "verbs": ["get"]},
                {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "resourceNames": [TEAM_CLAIM], "verbs": ["get"]},
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]},
            ],
            [DANA],
        ),
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": TEAM_SECRET, "namespace": TENANT_A},
         "stringData": {"TOKEN": SECRET_VALUE}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "other-secret", "namespace": TENANT_B},
         "stringData": {"TOKEN": SECRET_VALUE}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": TEAM_CONFIG, "namespace": TENANT_A},
         "data": {"MODE": "x"}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": OTHER_SA, "namespace": TENANT_A}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": TEAM_CLAIM, "namespace": TENANT_A},
         "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}},
    ]  # fmt: skip
    documents = "\n---\n".join(yaml.safe_dump(item) for item in objects)
    sft_system.cluster.kubectl("apply", "-f", "-", input=documents)
    for namespace in TENANT_NAMESPACES:  # docs/security.md: tenants' namespaces enforce Pod Security `restricted`
        sft_system.cluster.kubectl("label", "--overwrite", "namespace", namespace,
                                   "pod-security.kubernetes.io/enforce=restricted")  # fmt: skip
    return dataclasses.replace(sft_system, namespace=TENANT_A)


def tenant_job(name: str, namespace: str, max_steps: int = 8) -> dict[str, Any]:
    """A 1-node CPU job on synthetic data (no host directory): what an ordinary user may run."""
    data = {"synthetic": {"task": "arithmetic", "train_examples": 256, "validation_examples": 16},
            "prompt_template": "{input}{output}"}  # fmt: skip
    save = max(4, max_steps // 8 // 4 * 4)
    training = tiny_training(
        output_dir=f"/output/{name}", data=data, max_steps=max_steps, num_nodes=1, save_interval=save
    )
    body = sftjob(name, training, num_nodes=1)
    body["metadata"]["namespace"] = namespace
    return body


def apply_as(system: System, user: str, body: dict[str, Any], *extra: str) -> Any:
    """`kubectl apply --as <user>`: the user's own request, never admin's."""
    namespace = body["metadata"]["namespace"]
    return system.cluster.kubectl(
        "apply", "--as", user, "-n", namespace, "-f", "-", *extra, input=yaml.safe_dump(body), check=False
    )


Edit = Callable[[dict[str, Any]], None]


def pod_field(**values: Any) -> Edit:
    """An edit setting fields of `spec.pod`."""

    def edit(body: dict[str, Any]) -> None:
        body["spec"]["pod"].update(copy.deepcopy(values))

    return edit


def storage(role: str, location: dict[str, Any]) -> Edit:
    """An edit setting `spec.storage.<role>`."""

    def edit(body: dict[str, Any]) -> None:
        body["spec"]["storage"][role] = copy.deepcopy(location)

    return edit


def both(*edits: Edit) -> Edit:
    """Several edits in order."""

    def edit(body: dict[str, Any]) -> None:
        for each in edits:
            each(body)

    return edit


def forged_creator(body: dict[str, Any]) -> None:
    """Claim that someone else created the job."""
    body["metadata"]["annotations"] = {CREATOR: "system:admin"}


ENV_SECRET = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": TEAM_SECRET, "key": "TOKEN"}}}]
NODE_ROOT = storage("data", {"mountPath": "/host", "hostPath": {"path": "/"}})
EVERY_TAINT = pod_field(tolerations=[{"operator": "Exists"}])
SECRET_DENIED = f"{ALICE} may not get secrets {TEAM_SECRET} in namespace {TENANT_A}"

# (id, edit, texts the refusal must contain: the field and why). All applied by alice in tenant-a.
ABUSES: list[tuple[str, Edit, list[str]]] = [
    ("node-root-fs-every-taint", both(NODE_ROOT, EVERY_TAINT),
     ["spec.storage.data.hostPath", "spec.pod.tolerations[*]", f"not allowed in namespace {TENANT_A}"]),
    ("host-volume", pod_field(volumes=[{"name": "root", "hostPath": {"path": "/"}}],
                              volumeMounts=[{"name": "root", "mountPath": "/host"}]),
     ["spec.pod.volumes[root].hostPath", "host access"]),
    ("control-plane-toleration",
     pod_field(tolerations=[{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]),
     ["spec.pod.tolerations[node-role.kubernetes.io/control-plane]"]),
    ("bidirectional-mount", pod_field(volumes=[{"name": "scratch", "emptyDir": {}}],
                                      volumeMounts=[{"name": "scratch", "mountPath": "/s",
                                                     "mountPropagation": "Bidirectional"}]),
     ["spec.pod.volumeMounts[scratch].mountPropagation"]),
    ("host-network", pod_field(hostNetwork=True), ['unknown field "spec.pod.hostNetwork"']),
    ("host-pid", pod_field(hostPID=True), ['unknown field "spec.pod.hostPID"']),
    ("privileged", pod_field(securityContext={"privileged": True}), ['unknown field "spec.pod.securityContext"']),
    ("run-as-root", pod_field(runAsUser=0), ['unknown field "spec.pod.runAsUser"']),
    ("other-service-account", pod_field(serviceAccountName=OTHER_SA),
     ["spec.pod.serviceAccountName", f"{ALICE} may not create pods in namespace {TENANT_A}"]),
    ("other-namespace-secret",
     pod_field(env=[{"name": "T", "valueFrom": {"secretKeyRef": {"name": "other-secret", "namespace": TENANT_B,
                                                                 "key": "TOKEN"}}}]),
     ['unknown field "spec.pod.env[0].valueFrom.secretKeyRef.namespace"']),
    ("secret-via-env", pod_field(env=ENV_SECRET), ["spec.pod.env[TOKEN].valueFrom.secretKeyRef.name", SECRET_DENIED]),
    ("secret-via-env-from-typo",
     pod_field(env=[{"name": "T", "valueFrom": {"secretRef": {"name": TEAM_SECRET}}}]),
     ['unknown field "spec.pod.env[0].valueFrom.secretRef"']),
    ("secret-via-credentials", storage("output", {"mountPath": "/output", "emptyDir": {},
                                                  "credentialsSecretRef": {"name": TEAM_SECRET}}),
     ["spec.storage.output.credentialsSecretRef.name", SECRET_DENIED]),
    ("secret-via-volume", pod_field(volumes=[{"name": "token", "secret": {"secretName": TEAM_SECRET}}]),
     ["spec.pod.volumes[token].secret.secretName", SECRET_DENIED]),
    ("secret-via-projected-volume",
     pod_field(volumes=[{"name": "all", "projected": {"sources": [{"secret": {"name": TEAM_SECRET}}]}}]),
     ["spec.pod.volumes[all].projected.sources[].secret.name", SECRET_DENIED]),
    ("secret-via-pull-secret", pod_field(imagePullSecrets=[{"name": TEAM_SECRET}]),
     ["spec.pod.imagePullSecrets[team-token].name", SECRET_DENIED]),
    ("configmap-via-env",
     pod_field(env=[{"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": TEAM_CONFIG, "key": "MODE"}}}]),
     ["spec.pod.env[MODE].valueFrom.configMapKeyRef.name", f"may not get configmaps {TEAM_CONFIG}"]),
    ("claim-via-storage", storage("data", {"mountPath": "/data", "persistentVolumeClaim": {"claimName": TEAM_CLAIM}}),
     ["spec.storage.data.persistentVolumeClaim.claimName", f"may not get persistentvolumeclaims {TEAM_CLAIM}"]),
    ("reserved-label", pod_field(labels={f"{GROUP}/job-name": "victim"}),
     ["spec.pod.labels", f"{GROUP}/job-name", "reserved for the kube-sft operator"]),
    ("reserved-annotation", pod_field(annotations={f"{GROUP}/template-hash": "x"}),
     ["spec.pod.annotations", f"{GROUP}/template-hash"]),
]  # fmt: skip


@pytest.mark.parametrize(("edit", "texts"), [pytest.param(e, t, id=i) for i, e, t in ABUSES])
def test_abuse_is_refused_at_apply_naming_the_field(tenants: System, edit: Edit, texts: list[str]) -> None:
    """alice (SFTJobs only) is refused at `kubectl apply`; nothing is stored, no pod exists."""
    body = tenant_job("abuse", TENANT_A)
    edit(body)
    result = apply_as(tenants, ALICE, body)
    assert result.returncode != 0, f"accepted: {result.stdout}"
    for text in texts:
        assert text in result.stderr, result.stderr
    assert tenants.get("abuse") is None and not tenants.pods("abuse")


# (id, user, namespace, edit): the same things, by a user who holds the matching right.
ALLOWED: list[tuple[str, str, str, Edit]] = [
    ("host-access-where-the-chart-allows-it", ERIN, JOBS_NAMESPACE, both(NODE_ROOT, EVERY_TAINT)),
    ("other-service-account-with-create-pods", DANA, TENANT_A, pod_field(serviceAccountName=OTHER_SA)),
    ("secret-via-env-with-get", DANA, TENANT_A, pod_field(env=ENV_SECRET)),
    ("secret-via-credentials-with-get", DANA, TENANT_A,
     storage("output", {"mountPath": "/output", "emptyDir": {}, "credentialsSecretRef": {"name": TEAM_SECRET}})),
    ("secret-via-volume-with-get", DANA, TENANT_A,
     pod_field(volumes=[{"name": "token", "secret": {"secretName": TEAM_SECRET}}])),
    ("configmap-with-get", DANA, TENANT_A,
     pod_field(env=[{"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": TEAM_CONFIG, "key": "MODE"}}}])),
    ("claim-with-get", DANA, TENANT_A,
     storage("data", {"mountPath": "/data", "persistentVolumeClaim": {"claimName": TEAM_CLAIM}})),
    ("own-service-account-by-name", ALICE, TENANT_A, pod_field(serviceAccountName="allowed-trainer")),
]  # fmt: skip


@pytest.mark.parametrize(("user", "namespace", "edit"), [pytest.param(u, n, e, id=i) for i, u, n, e in ALLOWED])
def test_a_user_with_the_right_may_still_do_it(tenants: System, user: str, namespace: str, edit: Edit) -> None:
    """The server-side dry run of the same manifest, by a user holding the right, passes admission."""
    body = tenant_job("allowed", namespace)
    edit(body)
    result = apply_as(tenants, user, body, "--dry-run=server")
    assert result.returncode == 0, result.stderr


def test_the_creator_is_recorded_and_cannot_be_changed(tenants: System) -> None:
    """The API server writes who created the job (a forged value is overwritten); nobody may rewrite it."""
    body = tenant_job("recorded", TENANT_A)
    body["spec"]["runPolicy"]["suspend"] = True
    forged_creator(body)
    assert apply_as(tenants, ALICE, body).returncode == 0
    stored = tenants.get("recorded")
    assert stored is not None and stored["metadata"]["annotations"][CREATOR] == ALICE
    result = apply_as(tenants, DANA, body)
    assert result.returncode != 0 and f"metadata.annotations[{CREATOR}]" in result.stderr, result.stderr
    tenants.delete("recorded")


def test_admission_policies_type_check_against_the_crd(sft_system: System) -> None:
    """The API server type-checked every policy expression against the installed CRD: no warnings."""
    custom = kubernetes.client.CustomObjectsApi(sft_system.cluster.client)
    policies = custom.list_cluster_custom_object("admissionregistration.k8s.io", "v1", "validatingadmissionpolicies")
    ours = [p for p in policies["items"] if p["metadata"]["name"].endswith(f".{GROUP}")]
    assert len(ours) == 3, [p["metadata"]["name"] for p in policies["items"]]
    for policy in ours:
        name = policy["metadata"]["name"]

        def type_checking(name: str = name) -> dict[str, Any] | None:
            """The policy's status once the API server checked its generation (typeChecking {} is clean)."""
            found = custom.get_cluster_custom_object(
                "admissionregistration.k8s.io", "v1", "validatingadmissionpolicies", name
            )
            status: dict[str, Any] = found.get("status") or {}
            done = status.get("observedGeneration") == found["metadata"]["generation"] and "typeChecking" in status
            return status if done else None

        status = sft_system.wait(type_checking, 60, f"type checking of {name}")
        checked = status["typeChecking"]
        assert not checked.get("expressionWarnings"), json.dumps(checked, indent=1)


VICTIM, INTRUDER, IDLE = "victim", "intruder", "idle"


@pytest.fixture(scope="module")
def two_tenants(tenants: System) -> Iterator[dict[str, System]]:
    """alice's victim job (tenant-a) and bob's own job (tenant-b) applied at once, each by its user."""
    systems = {ALICE: tenants, BOB: dataclasses.replace(tenants, namespace=TENANT_B)}
    idle = tenant_job(IDLE, TENANT_A)
    idle["spec"]["runPolicy"]["suspend"] = True
    for user, body in ((ALICE, tenant_job(VICTIM, TENANT_A, max_steps=240)), (BOB, tenant_job(INTRUDER, TENANT_B)),
                       (ALICE, idle)):  # fmt: skip
        result = apply_as(tenants, user, body)
        assert result.returncode == 0, result.stderr
    tenants.wait(lambda: tenants.status(VICTIM).get("phase") == "Running", 180, "the victim running", VICTIM)
    yield systems
    for pod in tenants.core.list_namespaced_pod(TENANT_A).items:
        if pod.metadata.name == "impostor":  # it carries the victim's label: gone before the victim's pods are awaited
            tenants.core.delete_namespaced_pod("impostor", TENANT_A, grace_period_seconds=0)
    for system, name in ((tenants, VICTIM), (tenants, IDLE), (systems[BOB], INTRUDER)):
        system.delete(name)


def forbidden(call: Callable[[], Any]) -> ApiException:
    """The ApiException a call raises (it must raise one)."""
    with pytest.raises(ApiException) as error:
        call()
    return error.value


def test_a_user_of_another_namespace_cannot_disturb_the_victim(two_tenants: dict[str, System]) -> None:
    """bob tries the victim's job, status, pods and Services, and a job of his own aimed at it: all refused."""
    alice = two_tenants[ALICE]
    client = impersonating_client(alice.cluster, BOB)
    custom, core = kubernetes.client.CustomObjectsApi(client), kubernetes.client.CoreV1Api(client)
    pod = alice.rank_pod(VICTIM, 0)
    attempts: dict[str, Callable[[], Any]] = {
        "read the job": lambda: custom.get_namespaced_custom_object(GROUP, VERSION, TENANT_A, PLURAL, VICTIM),
        "suspend the job": lambda: custom.patch_namespaced_custom_object(
            GROUP, VERSION, TENANT_A, PLURAL, VICTIM, {"spec": {"runPolicy": {"suspend": True}}}
        ),
        "delete the job": lambda: custom.delete_namespaced_custom_object(GROUP, VERSION, TENANT_A, PLURAL, VICTIM),
        "finish the job through status": lambda: custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, TENANT_A, PLURAL, VICTIM, {"status": {"phase": "Succeeded"}}
        ),
        "delete its pod": lambda: core.delete_namespaced_pod(pod, TENANT_A),
        "create an impostor pod": lambda: core.create_namespaced_pod(
            TENANT_A,
            {
                "metadata": {"name": "impostor", "labels": {f"{GROUP}/job-name": VICTIM}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            },
        ),
        "replace its Service": lambda: core.delete_namespaced_service(VICTIM, TENANT_A),
        "create a Service for its pods": lambda: core.create_namespaced_service(
            TENANT_B,
            {
                "metadata": {"name": "steal"},
                "spec": {"selector": {f"{GROUP}/job-name": VICTIM}, "ports": [{"port": 29500}]},
            },
        ),
    }
    for what, call in attempts.items():
        error = forbidden(call)
        assert error.status == 403, f"{what}: {error.status} {error.body}"
    aimed = tenant_job("aimed", TENANT_B)
    aimed["spec"]["pod"]["labels"] = {f"{GROUP}/job-name": VICTIM}
    aimed["spec"]["pod"]["serviceAccountName"] = f"{VICTIM}-trainer"
    result = apply_as(alice, BOB, aimed)
    assert result.returncode != 0 and "spec.pod.serviceAccountName" in result.stderr, result.stderr


def test_an_impostor_pod_with_the_victims_labels_is_ignored(two_tenants: dict[str, System]) -> None:
    """dana, who may create pods in tenant-a, creates a failing pod carrying the victim's rank-0 labels:
    the operator reports it (ForeignPod) and never counts it as the victim's."""
    alice = two_tenants[ALICE]
    victim_pod = alice.core.read_namespaced_pod(alice.rank_pod(VICTIM, 0), TENANT_A)
    labels = {key: value for key, value in victim_pod.metadata.labels.items() if key.startswith(f"{GROUP}/")}
    core = kubernetes.client.CoreV1Api(impersonating_client(alice.cluster, DANA))
    core.create_namespaced_pod(
        TENANT_A,
        {
            "metadata": {"name": "impostor", "labels": labels},
            "spec": {
                "restartPolicy": "Never",
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": 1000,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [
                    {
                        "name": "trainer",
                        "image": victim_pod.spec.containers[0].image,
                        "command": ["python", "-c", "raise SystemExit(1)"],
                        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                    }
                ],
            },
        },
    )
    alice.wait(
        lambda: any(reason == "ForeignPod" and "impostor" in message for reason, message in alice.events(VICTIM)),
        60,
        "a ForeignPod Event about the impostor",
        VICTIM,
    )
    status = alice.status(VICTIM)
    assert status.get("phase") in ("Running", "Succeeded") and status.get("restarts", 0) == 0, status


TRAINER_ATTEMPTS: list[tuple[str, dict[str, Any]]] = [
    ("phase", {"phase": "Succeeded"}),
    ("attempt", {"attempt": 5}),
    ("restarts", {"restarts": 7}),
    ("lastFailure", {"lastFailure": {"reason": "PodFailed", "time": "2026-01-01T00:00:00Z"}}),
    ("conditions", {"conditions": []}),
    ("completionTime", {"completionTime": "2026-01-01T00:00:00Z"}),
    ("message", {"message": "done"}),
]


def test_the_trainer_token_cannot_drive_the_lifecycle(two_tenants: dict[str, System]) -> None:
    """With the victim's own trainer token: progress may be written; no lifecycle field of its own job,
    and nothing of another job, may be."""
    alice = two_tenants[ALICE]
    token = alice.cluster.service_account_kubeconfig(TENANT_A, f"{VICTIM}-trainer")
    custom = kubernetes.client.CustomObjectsApi(alice.cluster.api_client(token))
    for field, patch in TRAINER_ATTEMPTS:
        error = forbidden(
            functools.partial(
                custom.patch_namespaced_custom_object_status,
                GROUP,
                VERSION,
                TENANT_A,
                PLURAL,
                VICTIM,
                {"status": patch},
            )
        )
        assert error.status == 403 and f"status.{field}" in str(error.body), f"{field}: {error.status} {error.body}"
    for namespace, name in ((TENANT_A, IDLE), (TENANT_B, INTRUDER)):
        error = forbidden(
            functools.partial(
                custom.patch_namespaced_custom_object_status,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {"status": {"phase": "Failed"}},
            )
        )
        assert error.status == 403, f"{namespace}/{name}: {error.status}"
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, TENANT_A, PLURAL, VICTIM, {"status": {"metrics": {"mfu": 0.01}}}
    )


def test_the_victim_finishes_as_its_pods_did(two_tenants: dict[str, System]) -> None:
    """After every attempt above, both jobs finish Succeeded with 0 restarts in their first attempt."""
    for user, name in ((ALICE, VICTIM), (BOB, INTRUDER)):
        system = two_tenants[user]
        final = system.wait_phase(name, {"Succeeded", "Failed"}, 300)
        assert final["phase"] == "Succeeded", system.diagnostics(name)
        assert final.get("restarts", 0) == 0 and final.get("attempt", 0) == 0, final
        assert final["progress"]["step"] == final["progress"]["totalSteps"] > 0, final
        stored = system.get(name)
        assert stored is not None and stored["metadata"]["annotations"][CREATOR] == user
    assert two_tenants[ALICE].status(IDLE).get("phase") in (None, "Suspended")


def test_the_operator_rechecks_the_creators_rights(tenants: System) -> None:
    """What admission cannot see: a right revoked after the job was admitted. The operator's own
    credentials (the chart's ServiceAccount) ask the API server again for the recorded creator."""
    body = tenant_job("rechecked", TENANT_A)
    body["spec"]["runPolicy"]["suspend"] = True
    pod_field(env=ENV_SECRET, serviceAccountName=OTHER_SA)(body)
    assert apply_as(tenants, DANA, body).returncode == 0
    operator = tenants.cluster.api_client(tenants.cluster.service_account_kubeconfig(SYSTEM_NAMESPACE, RELEASE))
    authorization = kubernetes.client.AuthorizationV1Api(operator)
    job = tenants.get("rechecked")
    assert job is not None and access.access_refusal(authorization, job) is None
    secret_refused = f"spec.pod.env[TOKEN].valueFrom.secretKeyRef.name: {DANA} may not get secrets/{TEAM_SECRET}"
    account_refused = f"spec.pod.serviceAccountName: {DANA} may not create pods in namespace {TENANT_A}"

    def both_rights_revoked() -> Refusal | None:
        # one reading can straddle the authorizer's cache update (one right already gone, the other not)
        refusal = access.access_refusal(authorization, job)
        complete = refusal is not None and secret_refused in refusal.message and account_refused in refusal.message
        return refusal if complete else None

    rbac_api = kubernetes.client.RbacAuthorizationV1Api(tenants.cluster.client)
    binding = rbac_api.read_namespaced_role_binding("team-reader", TENANT_A)
    rbac_api.delete_namespaced_role_binding("team-reader", TENANT_A)
    try:
        refusal = tenants.wait(both_rights_revoked, 30, "the revoked rights to show", "rechecked")
        # The operator asks the same before it creates anything: resumed now, the job fails with no pod.
        tenants.custom.patch_namespaced_custom_object(
            GROUP, VERSION, TENANT_A, PLURAL, "rechecked", {"spec": {"runPolicy": {"suspend": False}}}
        )
        final = tenants.wait_phase("rechecked", {"Failed", "Succeeded"}, 60)
    finally:
        binding.metadata.resource_version = None
        rbac_api.create_namespaced_role_binding(TENANT_A, binding)
    assert refusal.permanent and refusal.reason == "AccessDenied"
    assert final["phase"] == "Failed" and final["reason"] == "AccessDenied", final
    assert f"{DANA} may not get secrets/{TEAM_SECRET}" in final["message"], final
    failed = next(c for c in final["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "AccessDenied", failed
    assert "AccessDenied" in [reason for reason, _ in tenants.events("rechecked")]
    assert tenants.pods("rechecked") == [], "no pod is created for a job whose creator lacks its rights"
    tenants.delete("rechecked")
