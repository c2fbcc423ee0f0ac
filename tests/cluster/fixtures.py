"""Pytest fixtures for the real test control plane; imported by tests/integration and tests/e2e conftests.

    kube_cluster   session  ControlPlane: .kubeconfig, .server, .client (admin ApiClient),
                            .service_account_kubeconfig(ns, name), .service_account_token(ns, name),
                            .api_client(kubeconfig), .kubectl(*args), .helm(*args), .workdir
    node_agent     session  NodeAgent: a Ready node with nvidia.com/gpu: 8 running bound pods locally;
                            .logs(ns, pod), .find_run(ns, pod), .node_name
    prometheus     session  PrometheusServer: .set_targets(job, ["host:port"]), .query(promql),
                            .wait_for(promql), .set_rule_files([...]), .check_rules(path), .url
    namespace      function a fresh namespace (its `default` ServiceAccount exists), deleted afterwards

Missing binaries FAIL the tests (never skip): run `make cluster-bins`.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest

from tests.cluster.binaries import MissingBinariesError, find_binaries, find_tool
from tests.cluster.controlplane import ControlPlane
from tests.cluster.node_agent import NodeAgent
from tests.cluster.procs import wait_until
from tests.cluster.prometheus import PrometheusServer


def _say(config: pytest.Config, line: str) -> None:
    """Print one line on the terminal, past pytest's output capture."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        reporter.ensure_newline()
        reporter.write_line(line)


@pytest.fixture(scope="session")
def kube_cluster(request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    """A real etcd + kube-apiserver + controller-manager + scheduler for the whole session."""
    try:
        binaries = find_binaries()
    except MissingBinariesError as exc:
        pytest.fail(str(exc), pytrace=False)
    cluster = ControlPlane.start(binaries=binaries)
    _say(request.config, f"[kube_cluster] {cluster.server} ready in {cluster.started_in:.1f}s ({cluster.workdir})")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def node_agent(kube_cluster: ControlPlane) -> Iterator[NodeAgent]:
    """A test node (Ready, nvidia.com/gpu: 8) whose bound pods run as local processes."""
    agent = NodeAgent(
        kube_cluster.api_client(), kube_cluster.server, kube_cluster.pki.ca.cert, kube_cluster.workdir / "node-agent"
    ).start()
    v1 = kubernetes.client.CoreV1Api(kube_cluster.client)

    def ready() -> bool:
        node = v1.read_node(agent.node_name)
        return not node.spec.taints and any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)

    wait_until(ready, 60, f"node {agent.node_name} Ready without taints", interval=0.2)
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A real Prometheus on a free port; add scrape targets with .set_targets()."""
    try:
        find_tool("prometheus")
    except MissingBinariesError as exc:
        pytest.fail(str(exc), pytrace=False)
    server = PrometheusServer(Path(tmp_path_factory.mktemp("prometheus"))).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def namespace(kube_cluster: ControlPlane) -> Iterator[str]:
    """A fresh namespace with its default ServiceAccount, deleted after the test."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    v1 = kubernetes.client.CoreV1Api(kube_cluster.client)
    v1.create_namespace({"metadata": {"name": name}})
    wait_until(lambda: v1.read_namespaced_service_account("default", name), 30, f"ServiceAccount {name}/default")
    try:
        yield name
    finally:
        v1.delete_namespace(name)
