"""Start and stop a real control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler.

Everything listens on 127.0.0.1 on free ports and lives in one temporary directory. The API server
runs with RBAC (Node,RBAC), the service-account token issuer and the TokenRequest API; the
controller manager runs every default controller (garbage collector, serviceaccount and
serviceaccount-token included) with the signing key; the scheduler binds pods to the nodes that
devcluster/node_agent.py registers.

    with ControlPlane.start() as cluster:
        v1 = kubernetes.client.CoreV1Api(cluster.api_client())
"""

from __future__ import annotations

import base64
import functools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
import urllib3
import yaml

from devcluster.binaries import Binaries, find_binaries
from devcluster.certs import ClusterPKI, make_pki
from devcluster.procs import ManagedProcess, free_port, wait_until

SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CIDR = "10.0.0.0/24"
START_TIMEOUT = float(os.environ.get("KUBE_SFT_CLUSTER_START_TIMEOUT", "90"))


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def kubeconfig_dict(server: str, ca: Path, user: dict[str, str], name: str = "kube-sft-test") -> dict[str, Any]:
    """A one-cluster, one-user kubeconfig; `user` is a kubeconfig user stanza (token or client cert)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority-data": _b64(ca)}}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    }


@dataclass
class ControlPlane:
    """A running control plane. Build one with ControlPlane.start(); stop() tears it down."""

    workdir: Path
    binaries: Binaries
    pki: ClusterPKI
    server: str
    kubeconfig: Path
    etcd_url: str
    processes: list[ManagedProcess] = field(default_factory=list)
    started_in: float = 0.0
    _owns_workdir: bool = True

    # ----- start-up -------------------------------------------------------------------------

    @classmethod
    def start(cls, workdir: Path | None = None, binaries: Binaries | None = None) -> ControlPlane:
        """Start etcd, the API server, controller manager and scheduler; return once /readyz is ok."""
        t0 = time.monotonic()
        binaries = binaries or find_binaries()
        owns = workdir is None
        workdir = Path(tempfile.mkdtemp(prefix="kube-sft-cluster-")) if workdir is None else workdir
        for sub in ("pki", "logs", "etcd"):
            (workdir / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        pki = make_pki(workdir / "pki")
        port = free_port()
        server = f"https://127.0.0.1:{port}"
        kubeconfig = workdir / "admin.kubeconfig"
        user = {"client-certificate-data": _b64(pki.admin.cert), "client-key-data": _b64(pki.admin.key)}
        kubeconfig.write_text(yaml.safe_dump(kubeconfig_dict(server, pki.ca.cert, user)))
        plane = cls(workdir, binaries, pki, server, kubeconfig, etcd_url="", _owns_workdir=owns)
        try:
            plane._start_etcd()
            plane._start_apiserver(port)
            plane._wait_ready()
            plane._start_controller_manager()
            plane._start_scheduler()
            plane._wait_default_serviceaccount()
        except BaseException:
            plane.stop()
            raise
        plane.started_in = time.monotonic() - t0
        return plane

    def _spawn(self, name: str, argv: Sequence[str | Path]) -> ManagedProcess:
        proc = ManagedProcess(name, [str(a) for a in argv], self.workdir / "logs")
        self.processes.append(proc)
        return proc

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        proc = self._spawn("etcd", [
            self.binaries.etcd,
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={self.etcd_url}",
            f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=default=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ])  # fmt: skip
        wait_until(lambda: proc.check_alive() or _http_ok(f"{self.etcd_url}/health"), START_TIMEOUT, "etcd /health")

    def _start_apiserver(self, port: int) -> None:
        pki = self.pki
        self._spawn("kube-apiserver", [
            self.binaries.kube_apiserver,
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={port}",
            f"--tls-cert-file={pki.serving.cert}",
            f"--tls-private-key-file={pki.serving.key}",
            f"--client-ca-file={pki.ca.cert}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={pki.sa_public_key}",
            f"--service-account-signing-key-file={pki.sa_private_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--cert-dir={self.workdir / 'pki'}",
            "--allow-privileged=true",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
            "--endpoint-reconciler-type=none",
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-client-certificate={pki.kubelet_client.cert}",
            f"--kubelet-client-key={pki.kubelet_client.key}",
            "--v=1",
        ])  # fmt: skip

    def _wait_ready(self) -> None:
        apiserver = self.processes[-1]
        ready = f"{self.server}/readyz"

        def check() -> bool:
            apiserver.check_alive()
            return _http_ok(ready, ca=self.pki.ca.cert, cert=(self.pki.admin.cert, self.pki.admin.key))

        wait_until(check, START_TIMEOUT, "kube-apiserver /readyz", interval=0.2)

    def _component_argv(self, binary: Path) -> list[str | Path]:
        return [
            binary,
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
            "--leader-elect=false",
            "--v=1",
        ]

    def _start_controller_manager(self) -> None:
        self._spawn("kube-controller-manager", [
            *self._component_argv(self.binaries.kube_controller_manager),
            f"--service-account-private-key-file={self.pki.sa_private_key}",
            f"--root-ca-file={self.pki.ca.cert}",
            f"--cluster-signing-cert-file={self.pki.ca.cert}",
            f"--cluster-signing-key-file={self.pki.ca.key}",
            "--use-service-account-credentials=false",
            "--controllers=*",
            "--concurrent-gc-syncs=5",
            "--node-monitor-grace-period=60s",
        ])  # fmt: skip

    def _start_scheduler(self) -> None:
        self._spawn("kube-scheduler", self._component_argv(self.binaries.kube_scheduler))

    def _wait_default_serviceaccount(self) -> None:
        """The serviceaccount controller runs once the `default` SA exists in `default`."""
        v1 = kubernetes.client.CoreV1Api(self.api_client())

        def check() -> bool:
            for proc in self.processes:
                proc.check_alive()
            v1.read_namespaced_service_account("default", "default")
            return True

        wait_until(check, START_TIMEOUT, "the controller manager to create the default ServiceAccount", 0.2)

    # ----- clients --------------------------------------------------------------------------

    @functools.cached_property
    def client(self) -> kubernetes.client.ApiClient:
        """The admin ApiClient (system:masters), made once."""
        return self.api_client()

    def api_client(self, kubeconfig: Path | None = None) -> kubernetes.client.ApiClient:
        """A kubernetes ApiClient for the admin (or for the given kubeconfig)."""
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(
            config_file=str(kubeconfig or self.kubeconfig), client_configuration=configuration
        )
        return kubernetes.client.ApiClient(configuration)

    def service_account_token(
        self, namespace: str, name: str, expiration_seconds: int = 3600, audiences: list[str] | None = None
    ) -> str:
        """A bound token for ServiceAccount namespace/name from the TokenRequest API."""
        v1 = kubernetes.client.CoreV1Api(self.client)
        spec: dict[str, Any] = {"expirationSeconds": expiration_seconds}
        if audiences:
            spec["audiences"] = audiences
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        result = v1.create_namespaced_service_account_token(name, namespace, body)
        return str(result.status.token)

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path | None = None) -> Path:
        """Write a kubeconfig that authenticates as ServiceAccount namespace/name (via TokenRequest)."""
        token = self.service_account_token(namespace, name)
        path = path or self.workdir / f"sa-{namespace}-{name}.kubeconfig"
        path.write_text(yaml.safe_dump(kubeconfig_dict(self.server, self.pki.ca.cert, {"token": token})))
        return path

    def tool_env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        """The environment for kubectl/helm: KUBECONFIG set, helm's state kept in the work dir."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(kubeconfig or self.kubeconfig)
        for var, sub in (("HELM_CACHE_HOME", "cache"), ("HELM_CONFIG_HOME", "config"), ("HELM_DATA_HOME", "data")):
            env[var] = str(self.workdir / "helm" / sub)
        return env

    def kubectl(
        self, *args: str, kubeconfig: Path | None = None, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl binary against this cluster."""
        return _run([self.binaries.kubectl, *args], self.tool_env(kubeconfig), check, input)

    def helm(self, *args: str, kubeconfig: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the real helm binary against this cluster."""
        return _run([self.binaries.helm, *args], self.tool_env(kubeconfig), check, None)

    # ----- teardown -------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every component (newest first) and remove the work dir if this object made it."""
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()
        if self._owns_workdir and not os.environ.get("KUBE_SFT_KEEP_CLUSTER_DIR"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ToolError(subprocess.CalledProcessError):
    """kubectl/helm failed; str() includes its stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstderr:\n{self.stderr}"


def _run(
    argv: Sequence[str | Path], env: dict[str, str], check: bool, input: str | None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in argv], env=env, capture_output=True, text=True, input=input, timeout=300)
    if check and result.returncode != 0:
        raise ToolError(result.returncode, result.args, result.stdout, result.stderr)
    return result


_POOL = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=2.0))


def _http_ok(url: str, ca: Path | None = None, cert: tuple[Path, Path] | None = None) -> bool:
    """True if GET url answers 200 (TLS verified against ca, with a client cert when given)."""
    if ca is None:
        response = _POOL.request("GET", url)
    else:
        pool = urllib3.PoolManager(
            retries=False,
            timeout=urllib3.Timeout(total=2.0),
            ca_certs=str(ca),
            cert_file=str(cert[0]) if cert else None,
            key_file=str(cert[1]) if cert else None,
        )
        response = pool.request("GET", url)
    return response.status == 200


@contextmanager
def running_control_plane() -> Iterator[ControlPlane]:
    """Context manager: a control plane for the duration of the block."""
    plane = ControlPlane.start()
    try:
        yield plane
    finally:
        plane.stop()
