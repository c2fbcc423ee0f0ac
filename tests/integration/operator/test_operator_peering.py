"""Two operator replicas with kopf peering: one is active; the standby takes over when it dies."""

from __future__ import annotations

import re

import pytest

from devcluster.controlplane import ControlPlane
from tests.integration.operator.conftest import Operator, wait_for
from tests.integration.operator.test_operator_reconcile import create, events, pods, script, sftjob, status

pytestmark = pytest.mark.integration


def leading(operator: Operator) -> bool:
    match = re.search(r"^kube_sft_operator_leader (\S+)$", operator.metrics(), re.MULTILINE)
    return match is not None and float(match.group(1)) == 1.0


def test_standby_takes_over_without_duplicates(
    kube_cluster: ControlPlane, operator: Operator, sft_namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    standby = Operator(
        operator.namespace, operator.kubeconfig, operator.peering, tmp_path_factory.mktemp("b") / "b.log"
    )
    standby.start()
    try:
        replicas = [operator, standby]
        wait_for(lambda: sum(leading(replica) for replica in replicas) == 1, 40, "exactly one active replica")
        active = next(replica for replica in replicas if leading(replica))
        other = standby if active is operator else operator
        create(kube_cluster, sft_namespace, sftjob("ha-one", script("time.sleep(600)")))
        wait_for(lambda: len(pods(kube_cluster, sft_namespace, "ha-one")) == 2, 30, "pods of ha-one", active)
        active.kill()
        create(kube_cluster, sft_namespace, sftjob("ha-two", script("time.sleep(600)")))
        wait_for(lambda: len(pods(kube_cluster, sft_namespace, "ha-two")) == 2, 60, "the standby to take over", other)
        wait_for(lambda: leading(other), 15, "the standby to report itself active", other)
        survivors = [pod.metadata.name for pod in pods(kube_cluster, sft_namespace, "ha-one")]
        attempt = status(kube_cluster, sft_namespace, "ha-one")["attempt"]
        assert (len(survivors), attempt) == (2, 0), (
            f"ha-one after the fail-over: pods {survivors}, attempt {attempt}\n"
            f"events: {events(kube_cluster, sft_namespace, 'ha-one')}\n"
            f"--- standby log ---\n{other.log()}\n--- killed replica log ---\n{active.log()}"
        )
    finally:
        for replica in (operator, standby):
            replica.stop()
        operator.start()  # leave the module's operator running for the next tests
