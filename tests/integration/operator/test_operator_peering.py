"""Two operator replicas with kopf peering: one is active; the standby takes over when it dies."""

from __future__ import annotations

import re

import pytest

from devcluster.controlplane import ControlPlane
from sft_operator.api import GROUP, PLURAL, VERSION
from tests.integration.operator.conftest import Operator, wait_for
from tests.integration.operator.test_operator_reconcile import create, custom, events, pods, script, sftjob, status

pytestmark = pytest.mark.integration


def leading(operator: Operator) -> bool:
    match = re.search(r"^kube_sft_operator_leader (\S+)$", operator.metrics(), re.MULTILINE)
    return match is not None and float(match.group(1)) == 1.0


HANDOVER_JOBS = [f"ha-one-{index}" for index in range(3)]  # with ha-two: the node agent's 8 GPUs


def test_a_new_replica_takes_over_and_a_dead_one_hands_over_without_duplicates(
    kube_cluster: ControlPlane, operator: Operator, sft_namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A replica of higher priority joins while jobs are being created (the hand-over from a live
    replica: never both acting), then the new leader is killed (the hand-over from a dead one)."""
    newcomer = Operator(
        operator.namespace, operator.kubeconfig, operator.peering, tmp_path_factory.mktemp("b") / "b.log",
        priority=2**30 + 1,  # above any random priority: the running replica must give way
    )  # fmt: skip
    newcomer.start()
    try:
        for name in HANDOVER_JOBS:  # created while the replicas hand over: each gang made once, whole
            create(kube_cluster, sft_namespace, sftjob(name, script("time.sleep(600)")))
        wait_for(lambda: leading(newcomer) and not leading(operator), 40, "the newcomer to lead alone", newcomer)
        for name in HANDOVER_JOBS:
            wait_for(lambda n=name: len(pods(kube_cluster, sft_namespace, n)) == 2, 30, f"pods of {name}", newcomer)
        newcomer.kill()
        create(kube_cluster, sft_namespace, sftjob("ha-two", script("time.sleep(600)")))
        wait_for(
            lambda: len(pods(kube_cluster, sft_namespace, "ha-two")) == 2, 60, "the old replica to take over", operator
        )
        wait_for(lambda: leading(operator), 15, "the old replica to report itself active", operator)
        for name in HANDOVER_JOBS:
            survivors = sorted(pod.metadata.name for pod in pods(kube_cluster, sft_namespace, name))
            state = status(kube_cluster, sft_namespace, name)
            assert (survivors, state["attempt"], state["restarts"]) == ([f"{name}-node-0", f"{name}-node-1"], 0, 0), (
                f"{name} after both hand-overs: pods {survivors}, status {state}\n"
                f"events: {events(kube_cluster, sft_namespace, name)}\n"
                f"--- newcomer log ---\n{newcomer.log()}\n--- first replica log ---\n{operator.log()}"
            )
    finally:
        newcomer.stop()
        if operator.process is None or operator.process.poll() is not None:
            operator.start()  # leave the module's operator running for the next tests
        for name in [*HANDOVER_JOBS, "ha-two"]:  # free the node's GPUs for the next tests
            custom(kube_cluster).delete_namespaced_custom_object(GROUP, VERSION, sft_namespace, PLURAL, name)
        gone = [*HANDOVER_JOBS, "ha-two"]
        wait_for(lambda: not any(pods(kube_cluster, sft_namespace, name) for name in gone), 60, "the jobs' pods gone")
