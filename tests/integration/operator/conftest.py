"""Fixtures for the operator's integration tests: the chart's RBAC and CRDs on the real API server,
and the operator running as a local process under the chart's ServiceAccount (never admin)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import kubernetes
import pytest

from devcluster.controlplane import ControlPlane
from devcluster.procs import free_port, wait_until
from tests.e2e.harness import wait_sftjobs_served

REPO = Path(__file__).resolve().parents[3]
CHART = Path(os.environ.get("KUBE_SFT_TEST_CHART") or REPO / "charts" / "kube-sft")
"""The chart under test; KUBE_SFT_TEST_CHART points at another (an older tree's, to show a regression test
failing on the code before its fix)."""


def operator_service_account(release: str) -> str:
    """The chart's ServiceAccount name for a release (the chart's fullname rule)."""
    return f"{release}-kube-sft" if "kube-sft" not in release else release


@dataclass
class Operator:
    """`python -m sft_operator` as a child process; restart() simulates a crash and a new pod."""

    namespace: str
    kubeconfig: Path
    peering: str
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    metrics_port: int = 0
    more_namespaces: tuple[str, ...] = ()
    priority: int | None = None  # peering priority; random (the operator's default) when None

    def start(self) -> Operator:
        """Start (or start again) and wait until it answers on its metrics port."""
        self.metrics_port = free_port()
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "POD_NAME": f"operator-{uuid.uuid4().hex[:6]}"}
        argv = [sys.executable, "-m", "sft_operator", "--namespace", self.namespace, "--peering-name", self.peering]
        argv += [arg for namespace in self.more_namespaces for arg in ("--namespace", namespace)]
        argv += ["--metrics-port", str(self.metrics_port), "--liveness-port", str(free_port()), "--resync-seconds", "1"]
        argv += ["--peering-lifetime", "8"]
        argv += ["--priority", str(self.priority)] if self.priority is not None else []
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        wait_until(self._serving, 30, "the operator's metrics endpoint", interval=0.2)
        return self

    def _serving(self) -> bool:
        import urllib.request

        assert self.process is not None and self.process.poll() is None, self.log()
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as response:
            return bool(response.status == 200)

    def metrics(self) -> str:
        """The /metrics text."""
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as response:
            return str(response.read().decode())

    def kill(self) -> None:
        """SIGKILL: no clean-up, like a node failure."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        """The operator's output so far (for assertion messages)."""
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""


@pytest.fixture(scope="session")
def sft_namespace(kube_cluster: ControlPlane) -> Iterator[str]:
    """A namespace for the operator tests' SFTJobs."""
    name = f"sft-{uuid.uuid4().hex[:6]}"
    v1 = kubernetes.client.CoreV1Api(kube_cluster.client)
    v1.create_namespace({"metadata": {"name": name}})
    wait_until(lambda: v1.read_namespaced_service_account("default", name), 30, f"ServiceAccount {name}/default")
    yield name
    v1.delete_namespace(name)


@pytest.fixture(scope="session")
def installed_chart(kube_cluster: ControlPlane, sft_namespace: str) -> Iterator[str]:
    """`helm install` the chart (CRDs, ServiceAccount, ClusterRole, peering) with no operator pods: the
    tests run the operator themselves. Returns the release name (also the ServiceAccount's)."""
    release = f"op-{sft_namespace}"
    system = f"{sft_namespace}-system"
    kube_cluster.helm(
        "install", release, str(CHART), "--namespace", system, "--create-namespace",
        "--set", "replicaCount=0", "--set", f"watchNamespaces={{{sft_namespace}}}",
        "--set", f"peering.name={release}", "--set", "metrics.grafanaDashboard.enabled=false",
    )  # fmt: skip
    wait_sftjobs_served(kube_cluster, sft_namespace)
    yield release
    kube_cluster.helm("uninstall", release, "--namespace", system, check=False)


@pytest.fixture(scope="session")
def operator(
    kube_cluster: ControlPlane,
    node_agent: object,
    installed_chart: str,
    sft_namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Operator]:
    """The operator, authenticated as the chart's ServiceAccount."""
    system = f"{sft_namespace}-system"
    service_account = operator_service_account(installed_chart)
    kubeconfig = kube_cluster.service_account_kubeconfig(system, service_account)
    log_path = tmp_path_factory.mktemp("operator") / "operator.log"
    process = Operator(sft_namespace, kubeconfig, installed_chart, log_path).start()
    yield process
    process.stop()


def wait_for(check, timeout: float, what: str, operator: Operator | None = None):  # type: ignore[no-untyped-def]
    """wait_until, with the operator's log in the failure message."""
    try:
        return wait_until(check, timeout, what, interval=0.25)
    except TimeoutError as error:
        raise AssertionError(f"{error}\n--- operator log ---\n{operator.log() if operator else ''}") from None


def settle(seconds: float = 3.0) -> None:
    """Let a few resync cycles pass."""
    time.sleep(seconds)
