"""The cluster side of the operator benchmark: an audited control plane (devcluster), KWOK and its fake GPU
nodes, the operators' ServiceAccounts, the CRDs, the peer's webhook plumbing, and starting each operator."""

from __future__ import annotations

import base64
import json
import os
import shutil
import sys
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import kubernetes
import urllib3
import yaml

from bench.operator_scale.flavours import GPU, PEER, SFT, Flavour, Object
from bench.operator_scale.floor import FLOOR_READY
from bench.operator_scale.readings import POD_WRITES
from devcluster.binaries import cache_dir, read_env_file
from devcluster.controlplane import ControlPlane
from devcluster.procs import ManagedProcess, free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
KWOK_DIR = REPO / "hack" / "kwok"
PEER_DIR = REPO / "hack" / "training-operator"
STAGES_FILE = KWOK_DIR / "stages.yaml"
SFT_CRD = REPO / "crds" / "sftjob.yaml"
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
SYSTEM_NAMESPACE = "bench-system"
PEER_CRD_FILE = "kubeflow.org_pytorchjobs.yaml"
PEER_WEBHOOK_SECRET = "training-operator-webhook-cert"
PEER_CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")  # fixed in training-operator's pkg/cert


def service_account_user(name: str) -> str:
    """The API server's user name of ServiceAccount bench-system/name."""
    return f"system:serviceaccount:{SYSTEM_NAMESPACE}:{name}"


OPERATOR_ACCOUNTS = {"kube-sft": "sft-operator", "floor": "floor-client", "training-operator": "training-operator"}


def audit_policy(trace_pods: bool = False) -> Object:
    """The API server's audit policy: the operators' requests (Metadata), nothing else.

    With `trace_pods`, every user's pod writes (create, delete, status patches: the operator's, the
    scheduler's, KWOK's) are logged first with their request and response bodies, so that who wrote
    what to which pod uid can be read back (`pod_writes`).
    """
    rules: list[Object] = []
    if trace_pods:
        pods = [{"group": "", "resources": ["pods", "pods/status"]}]
        rules.append({"level": "RequestResponse", "verbs": POD_WRITES, "resources": pods})
    rules.append({"level": "Metadata", "users": [service_account_user(a) for a in OPERATOR_ACCOUNTS.values()]})
    rules.append({"level": "None"})
    return {
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "omitStages": ["RequestReceived", "ResponseStarted"],
        "rules": rules,
    }


class AuditedControlPlane(ControlPlane):
    """devcluster's ControlPlane, with the API server's audit log on for the operators' users only."""

    trace_pods = False  # TracedControlPlane: every pod write too

    def _spawn(self, name: str, argv: Sequence[str | Path]) -> ManagedProcess:
        if name == "kube-apiserver":
            path = self.workdir / "audit-policy.yaml"
            path.write_text(yaml.safe_dump(audit_policy(self.trace_pods)))
            argv = [
                *argv,
                f"--audit-policy-file={path}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-mode=batch",
                "--audit-log-maxsize=0",
            ]
        return super()._spawn(name, argv)

    @property
    def audit_log(self) -> Path:
        """The API server's audit log (JSON lines)."""
        return self.workdir / "logs" / "audit.log"

    def metrics_text(self) -> str:
        """The API server's /metrics (admin client certificate)."""
        pool = urllib3.PoolManager(
            ca_certs=str(self.pki.ca.cert),
            cert_file=str(self.pki.admin.cert),
            key_file=str(self.pki.admin.key),
            timeout=urllib3.Timeout(total=30.0),
        )
        response = pool.request("GET", f"{self.server}/metrics")
        if response.status != 200:
            raise RuntimeError(f"/metrics answered {response.status}")
        return str(response.data.decode())


class TracedControlPlane(AuditedControlPlane):
    """An AuditedControlPlane that also logs every pod write with its bodies (`--trace-pods`)."""

    trace_pods = True


class MissingToolError(RuntimeError):
    """kwok or training-operator is not built yet."""


def kwok_binary() -> Path:
    """The cached kwok binary (hack/kwok/build.sh builds it); raises MissingToolError naming the fix."""
    version = read_env_file(KWOK_DIR / "versions.env")["KWOK_VERSION"]
    path = cache_dir() / "bin" / f"kwok-{version}" / "kwok"
    if not os.access(path, os.X_OK):
        raise MissingToolError(f"{path} not found: run hack/kwok/build.sh (or `make cluster-bins`) to build kwok")
    return path


def peer_directory() -> Path:
    """The cached training-operator binary's directory (hack/training-operator/build.sh)."""
    version = read_env_file(PEER_DIR / "versions.env")["TRAINING_OPERATOR_VERSION"]
    path = cache_dir() / "bin" / f"training-operator-{version}"
    if not os.access(path / "training-operator", os.X_OK):
        raise MissingToolError(f"{path}/training-operator not found: run hack/training-operator/build.sh")
    return path


def write_stages(path: Path, run_seconds: float) -> Path:
    """hack/kwok/stages.yaml with pod-complete's delay set to run_seconds."""
    documents = list(yaml.safe_load_all(STAGES_FILE.read_text()))
    for document in documents:
        if document.get("kind") == "Stage" and document["metadata"]["name"] == "pod-complete":
            document["spec"]["delay"] = {"durationMilliseconds": int(run_seconds * 1000)}
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return path


def start_kwok(cluster: ControlPlane, run_seconds: float) -> ManagedProcess:
    """Start KWOK managing the nodes annotated kwok.x-k8s.io/node=fake, with the bench's Stages."""
    config = write_stages(cluster.workdir / "kwok.yaml", run_seconds)
    process = ManagedProcess(
        "kwok",
        [
            str(kwok_binary()),
            f"--kubeconfig={cluster.kubeconfig}",
            f"--config={config}",
            f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION}=fake",
            "--node-lease-duration-seconds=40",
            f"--server-address=127.0.0.1:{free_port()}",
            "--cidr=10.64.0.0/12",
            "--node-ip=10.63.0.1",
            "--v=WARN",
        ],
        cluster.workdir / "logs",
    )
    cluster.processes.append(process)  # stopped with the cluster
    return process


def fake_node(name: str, gpus: int = 8) -> Object:
    """A KWOK-managed node with `gpus` nvidia.com/gpu (and room for everything else)."""
    capacity = {"cpu": "96", "memory": "1Ti", "pods": "110", GPU: str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {FAKE_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "type": "kwok"},
        },
        "spec": {},
        "status": {"allocatable": capacity, "capacity": capacity},
    }


def node_ready(node: Object) -> bool:
    """Ready=True and no NoSchedule/NoExecute taint."""
    conditions = (node.get("status") or {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    taints = [t for t in (node.get("spec") or {}).get("taints") or [] if t.get("effect") != "PreferNoSchedule"]
    return ready and not taints


def create_nodes(client: kubernetes.client.ApiClient, count: int, timeout: float = 180) -> float:
    """Create `count` fake GPU nodes and wait until every one is Ready and untainted; returns seconds."""
    t0 = time.monotonic()
    v1 = kubernetes.client.CoreV1Api(client)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: v1.create_node(fake_node(f"kwok-gpu-{i:03d}")), range(count)))

    def all_ready() -> bool:
        nodes = json.loads(v1.list_node(_preload_content=False).data)["items"]
        return (
            sum(1 for node in nodes if node_ready(node) and node["metadata"]["name"].startswith("kwok-gpu-")) >= count
        )

    wait_until(all_ready, timeout, f"{count} KWOK nodes Ready and untainted", interval=1.0)
    return time.monotonic() - t0


def admin_client(cluster: ControlPlane, pool: int = 16) -> kubernetes.client.ApiClient:
    """An admin ApiClient with a connection pool big enough for the bench's threads."""
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=configuration)
    configuration.connection_pool_maxsize = pool
    return kubernetes.client.ApiClient(configuration)


def setup_accounts(cluster: ControlPlane, client: kubernetes.client.ApiClient) -> dict[str, Path]:
    """bench-system with one cluster-admin ServiceAccount per operator (own audit user); their kubeconfigs."""
    v1 = kubernetes.client.CoreV1Api(client)
    rbac = kubernetes.client.RbacAuthorizationV1Api(client)
    v1.create_namespace({"metadata": {"name": SYSTEM_NAMESPACE}})
    wait_until(lambda: v1.read_namespaced_service_account("default", SYSTEM_NAMESPACE), 60, "bench-system SA")
    kubeconfigs = {}
    for operator, account in OPERATOR_ACCOUNTS.items():
        v1.create_namespaced_service_account(SYSTEM_NAMESPACE, {"metadata": {"name": account}})
        rbac.create_cluster_role_binding(
            {
                "metadata": {"name": f"bench-{account}"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": SYSTEM_NAMESPACE}],
            }
        )
        kubeconfigs[operator] = cluster.service_account_kubeconfig(SYSTEM_NAMESPACE, account)
    return kubeconfigs


def install_crds(cluster: ControlPlane, peer: bool) -> None:
    """The SFTJob CRD (crds/) and, for the peer, the PyTorchJob CRD of the same training-operator version."""
    paths = [SFT_CRD] + ([peer_directory() / PEER_CRD_FILE] if peer else [])
    for path in paths:
        cluster.kubectl("apply", "--server-side", "-f", str(path))
    ext = kubernetes.client.ApiextensionsV1Api(cluster.client)
    names = ["sftjobs.sft.kube-sft.io"] + (["pytorchjobs.kubeflow.org"] if peer else [])

    def established() -> bool:
        for name in names:
            crd = ext.read_custom_resource_definition(name)
            if not any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or []):
                return False
        return True

    wait_until(established, 60, "CRDs Established", interval=0.5)


def peer_webhook_objects(client: kubernetes.client.ApiClient) -> None:
    """What training-operator's cert rotator expects: its Secret, and a webhook configuration with no webhooks
    (so the API server never calls a webhook the bench does not serve)."""
    v1 = kubernetes.client.CoreV1Api(client)
    v1.create_namespaced_secret(SYSTEM_NAMESPACE, {"metadata": {"name": PEER_WEBHOOK_SECRET}})
    kubernetes.client.AdmissionregistrationV1Api(client).create_validating_webhook_configuration(
        {"metadata": {"name": "validator.training-operator.kubeflow.org"}, "webhooks": []}
    )


def mount_peer_certs(client: kubernetes.client.ApiClient) -> bool:
    """Do the kubelet's part for training-operator: write its webhook Secret's files where it looks for them
    (its cert rotator fills the Secret, then waits for the files, as mounted in its Deployment)."""
    if (PEER_CERT_DIR / "tls.crt").exists():
        return True
    secret = kubernetes.client.CoreV1Api(client).read_namespaced_secret(PEER_WEBHOOK_SECRET, SYSTEM_NAMESPACE)
    data = secret.data or {}
    if not {"tls.crt", "tls.key", "ca.crt"} <= data.keys():
        return False
    PEER_CERT_DIR.mkdir(parents=True, exist_ok=True)
    for name in ("ca.crt", "tls.key", "tls.crt"):  # tls.crt last: its presence means "mounted"
        (PEER_CERT_DIR / name).write_bytes(base64.b64decode(data[name]))
    return True


def http_ok(url: str) -> bool:
    """GET url answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def start_operator(flavour: Flavour, cluster: ControlPlane, kubeconfig: Path, namespace: str) -> ManagedProcess:
    """Start one operator watching `namespace` and wait until it serves; its process is what gets measured."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    metrics_port, probe_port = free_port(), free_port()
    if flavour.floor:
        argv = [sys.executable, "-m", "bench.bench_operator", "--serve-floor", namespace]
        ready_url = ""
    elif flavour is SFT:
        argv = [sys.executable, "-m", "sft_operator", "--namespace", namespace, "--standalone"]
        argv += ["--metrics-port", str(metrics_port), "--liveness-port", str(probe_port)]
        ready_url = f"http://127.0.0.1:{metrics_port}/metrics"
    else:
        env["MY_POD_NAMESPACE"] = SYSTEM_NAMESPACE
        argv = [str(peer_directory() / "training-operator"), f"--kubeconfig={kubeconfig}"]
        argv += ["--enable-scheme=pytorchjob", f"--namespace={namespace}", "--leader-elect=false"]
        argv += [f"--metrics-bind-address=127.0.0.1:{metrics_port}"]
        argv += [f"--health-probe-bind-address=127.0.0.1:{probe_port}", f"--webhook-server-port={free_port()}"]
        ready_url = f"http://127.0.0.1:{probe_port}/readyz"
        shutil.rmtree(PEER_CERT_DIR, ignore_errors=True)
    process = ManagedProcess(flavour.name, argv, cluster.workdir / "logs", env=env)

    def ready() -> bool:
        process.check_alive()
        if flavour.floor:
            return FLOOR_READY in process.log_path.read_text()
        if flavour is PEER:
            mount_peer_certs(cluster.client)
        return http_ok(ready_url)

    wait_until(ready, 120, f"{flavour.name} to serve {ready_url or 'its watch'}", interval=0.5)
    return process
