"""Gang integrity under faults (issue 22): the three defects found by hand, as regression tests, and the
seeded randomized fault soak (a short run here; `make soak-long` runs three seeds for 30+ minutes).

1. Operator stopped, one rank deleted while the gang is Pending, operator back: the gang restarts as
   a whole as the next attempt (before: rank 1 re-created alone under attempt 0, job stuck).
2. Overlapping faults with fail-over: jobs in three namespaces, ranks deleted while the active
   replica is killed: every job finishes, never a rank re-created alone (before: 41 pods of 42,
   a job stuck Initializing with ranks of two attempts).
3. Delete and re-create under the same name, 50 times, random gaps of 0-2 s, through kubectl and the
   API: every job Succeeded with its own children (before: a job waited forever for the ConfigMap
   that garbage collection removed, the operator having taken the old job's as its own).

Found by the soak (session 10): an API server down longer than kopf's default retries (54 s) stopped
both replicas, and the kopf shutdown then hung; the replicas now outlive a 70 s outage.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from kubernetes.client import ApiException

from devcluster.controlplane import ControlPlane
from devcluster.node_agent import NodeAgent
from devcluster.procs import wait_until
from sft_operator.api import GROUP, PLURAL, VERSION
from tests.integration.operator.conftest import Operator, operator_service_account, wait_for
from tests.integration.operator.soak import TABLE_HEADER, Soak, restart_component, soak_job, summary_json
from tests.integration.operator.test_operator_reconcile import core, custom, get, phase_is, pods, script, sftjob

pytestmark = pytest.mark.integration

SOAK_SECONDS = float(os.environ.get("KUBE_SFT_SOAK_SECONDS", "240"))
SOAK_SEEDS = [int(seed) for seed in os.environ.get("KUBE_SFT_SOAK_SEEDS", "22").split(",")]
SOAK_RECORD = os.environ.get("KUBE_SFT_SOAK_RECORD")  # a file to append each run's summary to
SOAK_REAL = os.environ.get("KUBE_SFT_SOAK_REAL_TRAINER") == "1"  # one real-trainer job per run (the long soak)


@pytest.fixture(scope="module")
def gang_namespaces(kube_cluster: ControlPlane, installed_chart: str) -> Iterator[list[str]]:
    """Three namespaces with the chart's peering object and RoleBinding in each (as `watchNamespaces`
    would make: the chart binds its namespaced rules in the watched namespaces only)."""
    v1 = core(kube_cluster)
    rbac = kubernetes.client.RbacAuthorizationV1Api(kube_cluster.api_client())
    account = operator_service_account(installed_chart)
    system = f"{installed_chart.removeprefix('op-')}-system"
    names = [f"gang-{uuid.uuid4().hex[:5]}" for _ in range(3)]
    for name in names:
        v1.create_namespace({"metadata": {"name": name}})
        wait_until(partial(v1.read_namespaced_service_account, "default", name), 30, f"{name}/default")
        binding = {
            "metadata": {"name": account},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": f"{account}-namespaced",
            },
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": system}],
        }
        rbac.create_namespaced_role_binding(name, binding)
        peering = {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": installed_chart}}
        custom(kube_cluster).create_namespaced_custom_object("kopf.dev", "v1", name, "kopfpeerings", peering)
    yield names
    for name in names:
        v1.delete_namespace(name)


@pytest.fixture(scope="module")
def replicas(
    kube_cluster: ControlPlane,
    node_agent: NodeAgent,
    installed_chart: str,
    gang_namespaces: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[Operator]]:
    """Two operator replicas (kopf peering) watching the three namespaces, as the chart's ServiceAccount."""
    system = f"{installed_chart.removeprefix('op-')}-system"
    kubeconfig = kube_cluster.service_account_kubeconfig(system, operator_service_account(installed_chart))
    directory = tmp_path_factory.mktemp("gang-operators")
    pair = [
        Operator(gang_namespaces[0], kubeconfig, installed_chart, directory / f"{index}.log",
                 more_namespaces=tuple(gang_namespaces[1:]))
        for index in range(2)
    ]  # fmt: skip
    for replica in pair:
        replica.start()
    yield pair
    for replica in pair:
        replica.stop()


def attempt_pods(cluster: ControlPlane, namespace: str, name: str) -> dict[str, tuple[str, str, str]]:
    """name -> (attempt, rank, uid) of the job's pods."""
    return {
        p.metadata.name: (
            p.metadata.labels[f"{GROUP}/attempt"],
            p.metadata.labels[f"{GROUP}/node-rank"],
            p.metadata.uid,
        )
        for p in pods(cluster, namespace, name)
    }


# --- case 1 ----------------------------------------------------------------------------------------------


def test_a_rank_deleted_while_pending_with_the_operator_down_restarts_the_whole_gang(
    kube_cluster: ControlPlane, operator: Operator, sft_namespace: str, node_agent: NodeAgent
) -> None:
    v1 = core(kube_cluster)
    body = sftjob("lonely", script("time.sleep(2)"), pod={"nodeSelector": {"gang-test": "open"}})
    custom(kube_cluster).create_namespaced_custom_object(GROUP, VERSION, sft_namespace, PLURAL, body)
    wait_for(lambda: len(pods(kube_cluster, sft_namespace, "lonely")) == 2, 30, "two Pending pods", operator)
    assert phase_is(kube_cluster, sft_namespace, "lonely", "Pending")
    operator.stop()  # scaled to 0
    try:
        v1.delete_namespaced_pod("lonely-node-1", sft_namespace, grace_period_seconds=0)
        wait_for(
            lambda: set(attempt_pods(kube_cluster, sft_namespace, "lonely")) == {"lonely-node-0"}, 30, "rank 1 gone"
        )
    finally:
        operator.start()
    restarted = wait_for(
        lambda: (s := get(kube_cluster, sft_namespace, "lonely").get("status") or {}).get("attempt") == 1 and s,
        20, "the whole gang restarted as attempt 1", operator,
    )  # fmt: skip
    assert restarted["restarts"] == 1 and restarted["lastFailure"]["reason"] == "PodDeleted"
    assert restarted["lastFailure"]["rank"] == 1
    v1.patch_node(node_agent.node_name, {"metadata": {"labels": {"gang-test": "open"}}})
    try:
        final = wait_for(
            lambda: phase_is(kube_cluster, sft_namespace, "lonely", "Succeeded"), 60, "Succeeded", operator
        )
    finally:
        v1.patch_node(node_agent.node_name, {"metadata": {"labels": {"gang-test": None}}})
    assert final["attempt"] == 1 and final["restarts"] == 1
    attempts = {attempt for attempt, _, _ in attempt_pods(kube_cluster, sft_namespace, "lonely").values()}
    assert attempts == {"1"}, "attempt 0's rank 0 was replaced too, rank 1 never re-created alone"
    custom(kube_cluster).delete_namespaced_custom_object(GROUP, VERSION, sft_namespace, PLURAL, "lonely")


# --- case 3 ----------------------------------------------------------------------------------------------


def owned_children(cluster: ControlPlane, namespace: str, name: str, uid: str) -> list[str]:
    """The job's children that are NOT owned by `uid` (empty when every child is its own)."""
    v1, rbac = core(cluster), kubernetes.client.RbacAuthorizationV1Api(cluster.client)
    children = [
        v1.read_namespaced_service(name, namespace),
        v1.read_namespaced_config_map(f"{name}-config", namespace),
        v1.read_namespaced_service_account(f"{name}-trainer", namespace),
        rbac.read_namespaced_role(f"{name}-trainer", namespace),
        rbac.read_namespaced_role_binding(f"{name}-trainer", namespace),
        *pods(cluster, namespace, name),
    ]
    foreign = []
    for child in children:
        refs = [ref.uid for ref in child.metadata.owner_references or [] if ref.controller]
        if refs != [uid]:
            foreign.append(f"{child.kind or type(child).__name__} {child.metadata.name}: {refs}")
    return foreign


def test_delete_and_recreate_under_the_same_name_fifty_times(
    kube_cluster: ControlPlane, operator: Operator, sft_namespace: str
) -> None:
    rng = random.Random(22)
    body = sftjob("phoenix", script("time.sleep(0.5)"), nodes=2)
    api = custom(kube_cluster)
    outcomes: list[str] = []
    for round_number in range(50):
        through_kubectl = round_number % 2 == 0
        if through_kubectl:
            kube_cluster.kubectl("create", "-n", sft_namespace, "-f", "-", input=yaml.safe_dump(body))
        else:
            wait_until(lambda: _create_when_free(api, sft_namespace, body), 60, "the old job gone", interval=0.2)
        uid = get(kube_cluster, sft_namespace, "phoenix")["metadata"]["uid"]
        final = wait_for(
            lambda: phase_is(kube_cluster, sft_namespace, "phoenix", "Succeeded", "Failed"), 90,
            f"round {round_number} finished", operator,
        )  # fmt: skip
        assert final["phase"] == "Succeeded", (round_number, final)
        assert owned_children(kube_cluster, sft_namespace, "phoenix", uid) == [], round_number
        outcomes.append(f"{round_number}:{'kubectl' if through_kubectl else 'api'}:{final['restarts']}")
        if through_kubectl:
            kube_cluster.kubectl("delete", "-n", sft_namespace, "sftjob", "phoenix", "--wait=false")
        else:
            api.delete_namespaced_custom_object(GROUP, VERSION, sft_namespace, PLURAL, "phoenix")
        time.sleep(rng.uniform(0, 2))
        if through_kubectl:  # kubectl create refuses while the old object exists: wait for it, as a user would
            wait_until(lambda: _gone(api, sft_namespace, "phoenix"), 60, "the old job gone", interval=0.1)
    assert len(outcomes) == 50


def _gone(api: kubernetes.client.CustomObjectsApi, namespace: str, name: str) -> bool:
    try:
        api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as error:
        return error.status == 404
    return False


def _create_when_free(api: kubernetes.client.CustomObjectsApi, namespace: str, body: dict[str, Any]) -> bool:
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    except ApiException as error:
        if error.status == 409:
            return False
        raise
    return True


# --- case 2 and the soak -----------------------------------------------------------------------------------


def test_overlapping_faults_with_operator_fail_over(
    kube_cluster: ControlPlane, node_agent: NodeAgent, replicas: list[Operator], gang_namespaces: list[str]
) -> None:
    """12 jobs in 3 namespaces, their gangs Pending (not yet schedulable); 4 s in the active replica is
    killed and, while no replica leads, rank 1 of three jobs is deleted and the gangs become
    schedulable. Every job Succeeded, each attempt a whole gang, no rank ever re-created alone."""
    soak = Soak(kube_cluster, node_agent, replicas, gang_namespaces, seed=2, seconds=0)
    v1 = core(kube_cluster)
    gate = {"gang-test-overlap": "open"}
    watcher = soak.watch()
    leader = wait_until(lambda: _leader(replicas), 60, "one replica to lead", interval=0.25)
    submitted = time.monotonic()
    # 40 s: the stand-in's rank 0 needs no peer, so a shorter job could finish before the next replica
    # leads (lifetime + hand-over, about 20 s after the kill) and its missing rank would go unanswered.
    jobs = [soak.submit(gang_namespaces[i % 3], f"over-{i}", 2, node_selector=gate, steps=40) for i in range(12)]
    finished = False
    try:
        wait_until(lambda: soak.own_pods() >= 24, 60, "the 12 gangs' pods (Pending)", interval=0.2)
        time.sleep(max(0.0, submitted + 4 - time.monotonic()))  # 4 s in
        leader.kill()
        for job in [job for job in jobs if job is not None][:3]:
            for pod in pods(kube_cluster, job.namespace, job.name):
                if pod.metadata.labels[f"{GROUP}/node-rank"] == "1":
                    v1.delete_namespaced_pod(pod.metadata.name, job.namespace, grace_period_seconds=0)
                    job.hit_attempts.add(int(pod.metadata.labels[f"{GROUP}/attempt"]))
        v1.patch_node(node_agent.node_name, {"metadata": {"labels": gate}})
        deadline = time.monotonic() + 240
        while soak.live_jobs() and time.monotonic() < deadline:
            soak.observe_finished()
            time.sleep(1)
        time.sleep(2)
        finished = True
    finally:
        watcher.stopping.set()
        v1.patch_node(node_agent.node_name, {"metadata": {"labels": dict.fromkeys(gate)}})
        leader.start()
        if not finished:  # leave nothing behind for the soak, whose ledger would count it as orphans
            soak.clean_up_and_check_orphans(timeout=60)
    soak.ledger.close(time.monotonic())
    summary = soak.summarize(0, [f"{job.namespace}/{job.name}" for job in soak.live_jobs()])
    print(TABLE_HEADER, summary.row(), sep="\n")
    assert not summary.stuck and not summary.violations, summary.violations
    assert summary.succeeded == 12 and summary.pods == summary.expected_pods
    assert summary.restarts == 3
    assert not soak.clean_up_and_check_orphans()


def test_the_operator_replicas_outlive_a_long_api_server_outage(
    kube_cluster: ControlPlane, replicas: list[Operator], gang_namespaces: list[str]
) -> None:
    """kube-apiserver down 70 s (longer than kopf's default 54 s of retries, after which its peering
    keep-alive gave up and the operator stopped): both replicas keep running, one leads again, and a
    job running across the outage and one created after it both succeed."""
    for replica in replicas:
        if replica.process is None or replica.process.poll() is not None:
            replica.start()
    api, namespace = custom(kube_cluster), gang_namespaces[0]
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, sftjob("across", script("time.sleep(5)")))
    wait_for(lambda: len(pods(kube_cluster, namespace, "across")) == 2, 30, "the first job's pods", replicas[0])
    restart_component(kube_cluster, "kube-apiserver", 70)
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, sftjob("after", script("time.sleep(1)")))
    for name in ("across", "after"):
        wait_for(
            lambda n=name: phase_is(kube_cluster, namespace, n, "Succeeded"), 120, f"{name} Succeeded", replicas[0]
        )
    assert all(replica.process is not None and replica.process.poll() is None for replica in replicas), [
        replica.log() for replica in replicas
    ]
    wait_until(lambda: _leader(replicas), 60, "one replica to lead", interval=0.5)
    for name in ("across", "after"):
        api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def _leader(replicas: list[Operator]) -> Operator | None:
    """The replica that reports itself active, if one does (peering takes a few seconds at start)."""
    return next((replica for replica in replicas if "kube_sft_operator_leader 1.0" in replica.metrics()), None)


@pytest.mark.parametrize("seed", SOAK_SEEDS)
def test_randomized_fault_soak(
    kube_cluster: ControlPlane,
    node_agent: NodeAgent,
    replicas: list[Operator],
    gang_namespaces: list[str],
    seed: int,
    tmp_path: Path,
) -> None:
    """The seeded fault soak (KUBE_SFT_SOAK_SECONDS, default 240; KUBE_SFT_SOAK_SEEDS, default 22)."""
    for replica in replicas:
        if replica.process is None or replica.process.poll() is not None:
            replica.start()
    soak = Soak(kube_cluster, node_agent, replicas, gang_namespaces, seed=seed, seconds=SOAK_SECONDS)
    if SOAK_REAL:
        soak.start_real_trainer(tmp_path)
    summary = soak.run()
    orphans = soak.clean_up_and_check_orphans()
    table = f"{TABLE_HEADER}\n{summary.row()}"
    print(table)
    if SOAK_RECORD:
        with Path(SOAK_RECORD).open("a") as record:
            record.write(summary_json(summary) + "\n")
    assert not summary.stuck, "\n".join([*summary.stuck, summary.waiting])
    assert not summary.violations, summary.violations
    assert summary.pods == summary.expected_pods, f"{table}\n{summary.short_attempts}"
    assert not orphans, orphans
    assert soak_job("x", 1, 1)["spec"]["runPolicy"]["backoffLimit"] > summary.restarts
