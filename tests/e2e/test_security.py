"""Scenario 7: the per-job ServiceAccount's limits (real API calls and `kubectl auth can-i` with the
SA's own kubeconfig), pod security contexts, and no secret value leaking anywhere.

A Secret with a recognisable value is referenced by `storage.data.credentialsSecretRef` (the
trainer gets it as environment variables); after a real training run the value must appear in no
SFTJob status, Event, ConfigMap, pod spec or log (trainer pods and operator replicas)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from kubernetes.client import ApiException

from tests.e2e.harness import (
    GROUP,
    PLURAL,
    SYSTEM_NAMESPACE,
    VERSION,
    System,
    gsm8k_data,
    gsm8k_dir,
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
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, ns, PLURAL, JOB, {"status": {"message": "ok"}})
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
