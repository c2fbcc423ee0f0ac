"""Pytest fixtures for the real test control plane; imported by tests/integration and tests/e2e conftests.

    kube_cluster   session  ControlPlane: .kubeconfig, .server, .client (admin ApiClient),
                            .service_account_kubeconfig(ns, name), .service_account_token(ns, name),
                            .api_client(kubeconfig), .kubectl(*args), .helm(*args), .workdir
    node_agent     session  NodeAgent: a Ready node with nvidia.com/gpu: 8 running bound pods locally;
                            .logs(ns, pod), .find_run(ns, pod), .node_name
    project_images session  {"operator": archive, "trainer-cpu": archive}: the images built from the
                            Dockerfiles (hack/images/build.sh, cached by content)
    running_real_node(config, cluster, images)  a context manager: a Ready kubelet + containerd node
                            with those images imported (RealNode: .logs(ns, pod), .kill(ns, pod),
                            .all_logs(), .ctr(...), .node_name); tests/e2e's `real_node` fixture
    prometheus     session  PrometheusServer: .set_targets(job, ["host:port"]), .query(promql),
                            .wait_for(promql), .set_rule_files([...]), .check_rules(path), .url
    namespace      function a fresh namespace (its `default` ServiceAccount exists), deleted afterwards
    sftjob_crd     module   the checked-in SFTJob CRD (crds/sftjob.yaml) applied, Established and served;
                            its name (for tests without the chart: the chart installs its own copy)

Missing binaries FAIL the tests (never skip): run `make cluster-bins` (and `make node-bins images`).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest

from devcluster.binaries import REPO_ROOT, MissingBinariesError, find_binaries, find_tool
from devcluster.controlplane import ControlPlane
from devcluster.node_agent import NodeAgent
from devcluster.node_images import MissingNodeBinariesError, find_node_binaries, project_image_archives
from devcluster.procs import wait_until
from devcluster.prometheus import PrometheusServer
from devcluster.real_node import RealNode


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
def project_images(request: pytest.FixtureRequest) -> dict[str, Path]:
    """The operator and CPU trainer images built from the Dockerfiles, as docker-archives."""
    try:
        archives = project_image_archives()
    except MissingNodeBinariesError as exc:
        pytest.fail(str(exc), pytrace=False)
    _say(request.config, "[project_images] " + ", ".join(f"{k}={v.name}" for k, v in archives.items()))
    return archives


@contextlib.contextmanager
def running_real_node(config: pytest.Config, cluster: ControlPlane, images: dict[str, Path]) -> Iterator[RealNode]:
    """A real node (kubelet, containerd, runc, CNI bridge) running the project's images, stopped after.

    Not a session fixture: tests/e2e holds one for its package (`real_node`), so that the integration
    tests' node agent never shares the cluster with it (the scheduler would mix their pods).
    """
    try:
        binaries = find_node_binaries()
    except MissingNodeBinariesError as exc:
        pytest.fail(str(exc), pytrace=False)
    node = RealNode(cluster, cluster.workdir / "real-node", images=list(images.values()), binaries=binaries).start()
    _say(config, f"[real_node] {node.node_name} Ready in {node.started_in:.1f}s ({node.workdir})")
    try:
        yield node
    finally:
        node.stop()


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


SFTJOB_CRD = REPO_ROOT / "crds" / "sftjob.yaml"
SFTJOB_CRD_NAME = "sftjobs.sft.kube-sft.io"


@pytest.fixture(scope="module")
def sftjob_crd(kube_cluster: ControlPlane) -> str:
    """Install the checked-in SFTJob CRD and wait until the API server serves it."""
    result = kube_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(SFTJOB_CRD), check=False)
    assert result.returncode == 0, result.stderr

    def established() -> bool:
        jsonpath = '{.status.conditions[?(@.type=="Established")].status}'
        found = kube_cluster.kubectl("get", f"crd/{SFTJOB_CRD_NAME}", "-o", f"jsonpath={jsonpath}", check=False)
        served = kube_cluster.kubectl("get", "sftjobs", "-A", check=False)
        return found.stdout.strip() == "True" and served.returncode == 0

    wait_until(established, 60, f"CRD {SFTJOB_CRD_NAME} established and served", interval=0.5)
    return SFTJOB_CRD_NAME
