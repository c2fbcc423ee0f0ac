"""Platform defaults (ClusterSFTRuntime) against the real API server: a cluster admin writes the runtime,
an ordinary user (impersonated, never admin) references it from an SFTJob, and the operator (the chart's
ServiceAccount) creates pods with the runtime's tolerations, NCCL env, priority class and pull secret under
the job's own fields; the status names the runtime; a missing runtime holds the job with a condition naming
the field until the runtime exists; a later edit of the runtime leaves the running gang alone."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
from kubernetes.client import ApiException

from devcluster.controlplane import ControlPlane
from devcluster.procs import wait_until
from sft_operator.api import GROUP, PLURAL, VERSION
from sft_operator.api.runtime import RUNTIME_KIND, RUNTIME_PLURAL
from sft_operator.runtime import REF_FIELD, RUNTIME_CONDITION, RUNTIME_NOT_FOUND
from tests.e2e.harness import impersonating_client
from tests.integration.chart.helm import by_kind, helm_template, rendered
from tests.integration.operator.conftest import Operator, settle, wait_for
from tests.integration.operator.test_operator_reconcile import events, pods, script, sftjob, status

pytestmark = pytest.mark.integration

USER = "rita"
GPU_TAINT = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
OWN_TOLERATION = {"key": "team", "operator": "Equal", "value": "rita", "effect": "NoSchedule"}


@pytest.fixture(scope="module")
def suffix() -> str:
    return uuid.uuid4().hex[:6]


@pytest.fixture(scope="module")
def user(kube_cluster: ControlPlane, sft_namespace: str) -> Iterator[kubernetes.client.ApiClient]:
    """An ordinary user who may manage SFTJobs in the namespace, and nothing else."""
    rbac = kubernetes.client.RbacAuthorizationV1Api(kube_cluster.client)
    name = f"runtime-{USER}"
    rules = [{"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["create", "get", "list", "watch", "delete"]}]
    rbac.create_namespaced_role(sft_namespace, {"metadata": {"name": name}, "rules": rules})
    rbac.create_namespaced_role_binding(
        sft_namespace,
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}],
        },
    )
    yield impersonating_client(kube_cluster, USER)
    rbac.delete_namespaced_role_binding(name, sft_namespace)
    rbac.delete_namespaced_role(name, sft_namespace)


def runtime_body(name: str, priority_class: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": RUNTIME_KIND,
        "metadata": {"name": name},
        "spec": {
            "pod": {
                "env": [{"name": "NCCL_DEBUG", "value": "INFO"}, {"name": "NCCL_IB_HCA", "value": "mlx5"}],
                "tolerations": [GPU_TAINT],
                "priorityClassName": priority_class,
                "imagePullSecrets": [{"name": "platform-registry"}],
                "labels": {"cost-center": "ml-platform"},
            }
        },
    }


@pytest.fixture(scope="module")
def platform(kube_cluster: ControlPlane, installed_chart: str, suffix: str) -> Iterator[dict[str, str]]:
    """The cluster admin's PriorityClass and ClusterSFTRuntime (names per test run: both are cluster-wide)."""
    wait_until(lambda: runtimes_served(kube_cluster), 30, "the ClusterSFTRuntime CRD Established", interval=0.2)
    scheduling = kubernetes.client.SchedulingV1Api(kube_cluster.client)
    priority_class = f"sft-training-{suffix}"
    scheduling.create_priority_class({"metadata": {"name": priority_class}, "value": 1000})
    runtime = f"gpu-{suffix}"
    admin = kubernetes.client.CustomObjectsApi(kube_cluster.client)
    admin.create_cluster_custom_object(GROUP, VERSION, RUNTIME_PLURAL, runtime_body(runtime, priority_class))
    names = {"runtime": runtime, "priority_class": priority_class, "missing": f"late-{suffix}"}
    yield names
    for name in (runtime, names["missing"]):
        try:
            admin.delete_cluster_custom_object(GROUP, VERSION, RUNTIME_PLURAL, name)
        except ApiException as error:
            if error.status != 404:
                raise
    scheduling.delete_priority_class(priority_class)


def runtimes_served(cluster: ControlPlane) -> bool:
    ext = kubernetes.client.ApiextensionsV1Api(cluster.client)
    crd = ext.read_custom_resource_definition(f"{RUNTIME_PLURAL}.{GROUP}")
    return any(item.type == "Established" and item.status == "True" for item in crd.status.conditions or [])


def create_as(client: kubernetes.client.ApiClient, namespace: str, body: dict[str, Any]) -> None:
    kubernetes.client.CustomObjectsApi(client).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


def condition(current: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((item for item in current.get("conditions") or [] if item["type"] == kind), None)


def test_only_cluster_admins_write_runtimes(
    kube_cluster: ControlPlane, user: kubernetes.client.ApiClient, platform: dict[str, str]
) -> None:
    as_user = kubernetes.client.CustomObjectsApi(user)
    for call in (
        lambda: as_user.create_cluster_custom_object(
            GROUP, VERSION, RUNTIME_PLURAL, runtime_body("mine", platform["priority_class"])
        ),
        lambda: as_user.patch_cluster_custom_object(
            GROUP, VERSION, RUNTIME_PLURAL, platform["runtime"], {"spec": {"pod": {"tolerations": []}}}
        ),
    ):
        with pytest.raises(ApiException) as refused:
            call()
        assert refused.value.status == 403


def test_runtime_defaults_land_in_the_pods_under_the_jobs_own_fields(
    kube_cluster: ControlPlane,
    operator: Operator,
    sft_namespace: str,
    user: kubernetes.client.ApiClient,
    platform: dict[str, str],
) -> None:
    body = sftjob(
        "with-runtime",
        script("time.sleep(600)"),
        runtimeRef={"name": platform["runtime"]},
        pod={"env": [{"name": "NCCL_DEBUG", "value": "WARN"}], "tolerations": [OWN_TOLERATION]},
    )
    create_as(user, sft_namespace, body)
    wait_for(lambda: len(pods(kube_cluster, sft_namespace, "with-runtime")) == 2, 30, "two pods", operator)
    admin = kubernetes.client.CustomObjectsApi(kube_cluster.client)
    stored = admin.get_cluster_custom_object(GROUP, VERSION, RUNTIME_PLURAL, platform["runtime"])
    first = pods(kube_cluster, sft_namespace, "with-runtime")
    for pod in first:
        spec = kube_cluster.client.sanitize_for_serialization(pod.spec)
        env = {item["name"]: item.get("value") for item in spec["containers"][0]["env"]}
        assert env["NCCL_DEBUG"] == "WARN"  # the job's own value wins
        assert env["NCCL_IB_HCA"] == "mlx5"  # the runtime's fills in
        assert GPU_TAINT in spec["tolerations"] and OWN_TOLERATION in spec["tolerations"]
        assert spec["priorityClassName"] == platform["priority_class"] and spec["priority"] == 1000
        assert spec["imagePullSecrets"] == [{"name": "platform-registry"}]
        assert pod.metadata.labels["cost-center"] == "ml-platform"
    current = wait_for(lambda: status(kube_cluster, sft_namespace, "with-runtime").get("runtime"), 10, "runtime")
    assert current == {
        "name": platform["runtime"],
        "generation": stored["metadata"]["generation"],
        "resourceVersion": stored["metadata"]["resourceVersion"],
        "attempt": 0,
        "isDefault": False,
    }
    applied = condition(status(kube_cluster, sft_namespace, "with-runtime"), RUNTIME_CONDITION)
    assert applied is not None and applied["status"] == "True" and platform["runtime"] in applied["message"]
    described = kube_cluster.kubectl("describe", "sftjob", "with-runtime", "-n", sft_namespace).stdout
    assert RUNTIME_CONDITION in described and stored["metadata"]["resourceVersion"] in described
    wide = kube_cluster.kubectl("get", "sftjob", "with-runtime", "-n", sft_namespace, "-o", "wide").stdout
    assert "RUNTIME" in wide and platform["runtime"] in wide

    # A later edit of the runtime reaches the next attempt only: the running gang is left alone.
    patch = {"spec": {"pod": {"env": [{"name": "NCCL_DEBUG", "value": "TRACE"}]}}}
    admin.patch_cluster_custom_object(GROUP, VERSION, RUNTIME_PLURAL, platform["runtime"], patch)
    settle()
    assert {pod.metadata.uid for pod in pods(kube_cluster, sft_namespace, "with-runtime")} == {
        pod.metadata.uid for pod in first
    }
    after = status(kube_cluster, sft_namespace, "with-runtime")
    assert after["attempt"] == 0 and after["runtime"]["resourceVersion"] == stored["metadata"]["resourceVersion"]
    kubernetes.client.CustomObjectsApi(user).delete_namespaced_custom_object(
        GROUP, VERSION, sft_namespace, PLURAL, "with-runtime"
    )


def test_a_missing_runtime_holds_the_job_until_it_exists(
    kube_cluster: ControlPlane,
    operator: Operator,
    sft_namespace: str,
    user: kubernetes.client.ApiClient,
    platform: dict[str, str],
) -> None:
    missing = platform["missing"]
    create_as(user, sft_namespace, sftjob("no-runtime", script("time.sleep(600)"), runtimeRef={"name": missing}))

    def held() -> dict[str, Any] | None:
        current = status(kube_cluster, sft_namespace, "no-runtime")
        return current if current.get("reason") == RUNTIME_NOT_FOUND else None

    current = wait_for(held, 30, "reason RuntimeNotFound", operator)
    assert current["phase"] == "Pending" and "attemptStartTime" not in current
    refused = condition(current, RUNTIME_CONDITION)
    assert refused is not None and refused["status"] == "False" and refused["reason"] == RUNTIME_NOT_FOUND
    assert refused["message"].startswith(f"{REF_FIELD}: {RUNTIME_KIND} '{missing}' not found")
    wait_for(
        lambda: RUNTIME_NOT_FOUND in {reason for reason, _ in events(kube_cluster, sft_namespace, "no-runtime")},
        10,
        "a RuntimeNotFound Event",
    )
    settle()  # a few resyncs: still no pods, one Event (no crash loop, no restarts)
    assert not pods(kube_cluster, sft_namespace, "no-runtime")
    assert [reason for reason, _ in events(kube_cluster, sft_namespace, "no-runtime")].count(RUNTIME_NOT_FOUND) == 1
    assert status(kube_cluster, sft_namespace, "no-runtime")["restarts"] == 0

    admin = kubernetes.client.CustomObjectsApi(kube_cluster.client)
    admin.create_cluster_custom_object(
        GROUP, VERSION, RUNTIME_PLURAL, runtime_body(missing, platform["priority_class"])
    )
    wait_for(
        lambda: len(pods(kube_cluster, sft_namespace, "no-runtime")) == 2, 30, "the gang, once it exists", operator
    )
    started = status(kube_cluster, sft_namespace, "no-runtime")
    assert started["runtime"]["name"] == missing
    applied = condition(started, RUNTIME_CONDITION)
    assert applied is not None and applied["status"] == "True"
    kubernetes.client.CustomObjectsApi(user).delete_namespaced_custom_object(
        GROUP, VERSION, sft_namespace, PLURAL, "no-runtime"
    )


def test_the_chart_passes_the_default_runtime_and_refuses_a_bad_name() -> None:
    (deployment,) = by_kind(rendered("--set", "defaultRuntime=h100"), "Deployment")
    assert "--default-runtime=h100" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    (plain,) = by_kind(rendered(), "Deployment")
    assert not [arg for arg in plain["spec"]["template"]["spec"]["containers"][0]["args"] if "default-runtime" in arg]
    refused = helm_template("--set", "defaultRuntime=Bad_Name", check=False)
    assert refused.returncode != 0 and "at '/defaultRuntime'" in refused.stderr, refused.stderr
