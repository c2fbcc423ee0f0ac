"""Shared pieces of the end-to-end scenarios (issue 4): one helm-installed kube-sft for the session.

`sft_system` is the fixture every scenario uses: the chart installed with `helm install` (CRDs,
ServiceAccount, ClusterRole, 2 operator replicas with kopf peering), as docs/user-guide.md installs
it. Every pod runs on a real node (devcluster/real_node.py: kubelet + containerd + runc + CNI
bridge) from the images built from the Dockerfiles: the operator image the chart names, and the CPU
flavour of the trainer image (`trainerImage.tag=<appVersion>-cpu`). The operator authenticates with
the chart's ServiceAccount token (never admin). Prometheus scrapes both replicas and every trainer
pod a test registers. `System.agent` is that node (`.logs`, `.kill`, `.all_logs`, as the test node
agent that ran the pods before offered).

The install is made once per session (a module-level singleton; the control plane is thrown away
at the end of the session, so there is no uninstall). Every scenario submits its SFTJobs to
`JOBS_NAMESPACE` through real `kubectl apply`, with job names unique to the scenario.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import kubernetes
import pytest
import yaml
from kubernetes.client import ApiException

from devcluster.controlplane import ControlPlane
from devcluster.node_images import archive_image_tags
from devcluster.procs import wait_until
from devcluster.prometheus import PrometheusServer
from devcluster.real_node import RealNode
from tests import builders
from tests.builders import random_model
from tests.shared_data import shared

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kube-sft"
GROUP, VERSION, PLURAL = "sft.kube-sft.io", "v1alpha1", "sftjobs"
LABEL_JOB = f"{GROUP}/job-name"
LABEL_RANK = f"{GROUP}/node-rank"
LABEL_ATTEMPT = f"{GROUP}/attempt"
RELEASE = "kube-sft"
SYSTEM_NAMESPACE = "kube-sft-system"
JOBS_NAMESPACE = "e2e-jobs"
TENANT_NAMESPACES = ("tenant-a", "tenant-b")
"""Namespaces of the security scenarios' ordinary users: watched by the operator, no host access."""
TRAINER_METRICS_PORT = 9400
OPERATOR_METRICS_PORT = 8080

T = TypeVar("T")


def write_jsonl_slice(source: Path, target: Path, start: int, count: int) -> Path:
    """Copy rows [start, start+count) of a JSONL file (real rows, untouched) to `target`."""
    with source.open() as handle:
        rows = [line for index, line in enumerate(handle) if start <= index < start + count]
    assert len(rows) == count, f"{source} has fewer than {start + count} rows"
    target.write_text("".join(rows))
    return target


# --- SFTJob manifests ------------------------------------------------------------------------------------


def tiny_training(
    *,
    output_dir: str,
    data: dict[str, Any],
    max_steps: int = 24,
    val_check_interval: int = 4,
    save_interval: int = 8,
    num_nodes: int = 2,
    micro_batch_size: int = 4,
) -> dict[str, Any]:
    """`spec.training` of a tiny run: the demo's random byte-level Llama cut down, fp32 on CPU."""
    return {
        "name": "e2e",
        "output_dir": output_dir,
        "model": random_model(max_position_embeddings=128),
        "data": {"max_seq_length": 96, "add_eos": True, **data},
        "trainer": {
            "max_steps": max_steps,
            "val_check_interval": val_check_interval,
            "save_interval": save_interval,
            "limit_val_batches": 1,
            "micro_batch_size": micro_batch_size,
            "global_batch_size": micro_batch_size * num_nodes,
            "precision": "fp32",
            "log_every_n_steps": 1,
        },
        "optim": {"lr": 3.0e-3, "sched": {"name": "cosine", "warmup_steps": 2, "min_lr": 1.0e-4}},
        "checkpoint": {"resume": "auto", "save_top_k": 1},
        # A CPU has no known peak: give one, so that MFU is reported (dashboard panel, alert).
        "logging": {"progress": "lines", "metrics_port": TRAINER_METRICS_PORT, "peak_tflops_per_device": 0.1},
    }


def gsm8k_data() -> dict[str, Any]:
    """`training.data` for GSM8K rows mounted at /data (see `gsm8k_dir`)."""
    return {
        "train_file": "/data/train.jsonl",
        "validation_file": "/data/val.jsonl",
        "prompt_template": "Q: {question}\nA: {answer}",
        "label_key": "answer",
        "truncation_field": "question",
    }


def gsm8k_dir(directory: Path) -> Path:
    """Real GSM8K rows from ../shared/data: 256 for training, 16 (later rows) for validation."""
    source = shared("instruct/gsm8k_train.jsonl")
    directory.mkdir(parents=True, exist_ok=True)
    write_jsonl_slice(source, directory / "train.jsonl", 0, 256)
    write_jsonl_slice(source, directory / "val.jsonl", 7000, 16)
    directory.chmod(0o755)
    return directory


def sftjob(
    name: str,
    training: dict[str, Any],
    *,
    data_dir: Path | None = None,
    output: dict[str, Any] | None = None,
    num_nodes: int = 2,
    run_policy: dict[str, Any] | None = None,
    pod: dict[str, Any] | None = None,
    storage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An SFTJob manifest for CPU pods: `data_dir` mounted read-only at /data, output at /output."""
    volumes: dict[str, Any] = {"output": {"mountPath": "/output", **(output or {"emptyDir": {}})}}
    if data_dir is not None:
        volumes["data"] = {"mountPath": "/data", "hostPath": {"path": str(data_dir)}, "readOnly": True}
    volumes.update(storage or {})
    env = [{"name": "SFT_STATUS_INTERVAL_SECONDS", "value": "0.5"}, {"name": "OMP_NUM_THREADS", "value": "1"}]
    pod_spec: dict[str, Any] = {"terminationGracePeriodSeconds": 2, **(pod or {})}
    pod_spec["env"] = env + list(pod_spec.get("env", []))
    return builders.sftjob(
        name,
        {
            "resources": {"numNodes": num_nodes, "gpusPerNode": 0, "requests": {"cpu": "100m", "memory": "256Mi"}},
            "storage": volumes,
            "runPolicy": {"backoffLimit": 2, "backoffSeconds": 1, **(run_policy or {})},
            "pod": pod_spec,
            "training": training,
        },
        namespace=JOBS_NAMESPACE,
    )


# --- the installed system ----------------------------------------------------------------------------------


@dataclass
class System:
    """The helm-installed kube-sft with the cluster, real node and Prometheus it runs on."""

    cluster: ControlPlane
    agent: RealNode
    prometheus: PrometheusServer
    namespace: str = JOBS_NAMESPACE
    trainer_targets: set[str] = field(default_factory=set)

    @property
    def custom(self) -> kubernetes.client.CustomObjectsApi:
        """Admin CustomObjectsApi (for reading; jobs are submitted with kubectl)."""
        return kubernetes.client.CustomObjectsApi(self.cluster.client)

    @property
    def core(self) -> kubernetes.client.CoreV1Api:
        """Admin CoreV1Api."""
        return kubernetes.client.CoreV1Api(self.cluster.client)

    # operator replicas

    def operator_pods(self) -> list[Any]:
        """The chart's operator pods that are not being deleted."""
        pods = self.core.list_namespaced_pod(SYSTEM_NAMESPACE, label_selector="app.kubernetes.io/component=operator")
        return [p for p in pods.items if not p.metadata.deletion_timestamp]

    def operator_metrics(self, pod: Any) -> str:
        """The /metrics text of one operator pod (fetched on its pod IP)."""
        url = f"http://{pod.status.pod_ip}:{OPERATOR_METRICS_PORT}/metrics"
        with urllib.request.urlopen(url, timeout=3) as response:
            return str(response.read().decode())

    def is_leader(self, pod: Any) -> bool:
        """Whether an operator replica reports itself active (kube_sft_operator_leader 1)."""
        try:
            text = self.operator_metrics(pod)
        except (OSError, urllib.error.URLError):
            return False
        return any(
            line.split()[-1] in ("1.0", "1")
            for line in text.splitlines()
            if line.startswith("kube_sft_operator_leader ")
        )

    def wait_operators(self, replicas: int = 2, timeout: float = 120) -> list[Any]:
        """Wait for `replicas` Running operator pods, exactly one leading; point Prometheus at them."""

        def ready() -> list[Any] | None:
            running = [p for p in self.operator_pods() if p.status.phase == "Running" and p.status.pod_ip]
            if len(running) != replicas:
                return None
            return running if sum(self.is_leader(p) for p in running) == 1 else None

        pods: list[Any] = wait_until(ready, timeout, f"{replicas} operator replicas, one active", interval=0.5)
        self.prometheus.set_targets("kube-sft-operator", [f"{p.status.pod_ip}:{OPERATOR_METRICS_PORT}" for p in pods])
        return pods

    def leader(self) -> Any:
        """The active operator pod."""
        (active,) = [p for p in self.operator_pods() if p.status.phase == "Running" and self.is_leader(p)]
        return active

    def operator_logs(self) -> str:
        """The tail of every operator replica's log (for failure messages)."""
        return "\n".join(
            f"--- {p.metadata.name} ---\n{self.agent.logs(SYSTEM_NAMESPACE, p.metadata.name)[-3000:]}"
            for p in self.operator_pods()
        )

    # jobs

    def apply(self, body: dict[str, Any], check: bool = True) -> Any:
        """`kubectl apply -f -` of one manifest (admin, as a user would)."""
        return self.cluster.kubectl("apply", "-n", self.namespace, "-f", "-", input=yaml.safe_dump(body), check=check)

    def get(self, name: str) -> dict[str, Any] | None:
        """The SFTJob, or None when it does not exist."""
        try:
            job: dict[str, Any] = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return job

    def status(self, name: str) -> dict[str, Any]:
        """The SFTJob's status ({} before the operator wrote one)."""
        job = self.get(name)
        return dict((job or {}).get("status") or {})

    def pods(self, name: str, include_deleting: bool = True) -> list[Any]:
        """The job's trainer pods."""
        items = self.core.list_namespaced_pod(self.namespace, label_selector=f"{LABEL_JOB}={name}").items
        return [p for p in items if include_deleting or not p.metadata.deletion_timestamp]

    def rank_pod(self, name: str, rank: int) -> str:
        """The name of the job's pod of node `rank` in its newest attempt (from the labels: pod names
        change with the attempt, `<job>-node-<rank>[-a<attempt>]`)."""
        ranked = [p for p in self.pods(name) if p.metadata.labels.get(LABEL_RANK) == str(rank)]
        if not ranked:
            raise LookupError(f"{name} has no pod of rank {rank}")
        return str(max(ranked, key=lambda p: int(p.metadata.labels.get(LABEL_ATTEMPT, "0"))).metadata.name)

    def events(self, name: str) -> list[tuple[str, str]]:
        """(reason, message) of the Events about the job."""
        items = self.core.list_namespaced_event(self.namespace, field_selector=f"involvedObject.name={name}").items
        return [(item.reason, item.message) for item in items]

    def wait(self, check: Callable[[], T | None], timeout: float, what: str, job: str | None = None) -> T:
        """wait_until, with the job's status, its pods' logs and the operators' logs on failure."""
        try:
            return wait_until(check, timeout, what, interval=0.5)
        except TimeoutError as error:
            raise AssertionError(f"{error}\n{self.diagnostics(job)}") from None

    def wait_phase(self, name: str, phases: set[str], timeout: float) -> dict[str, Any]:
        """Wait until the job's phase is in `phases`; returns the status."""

        def check() -> dict[str, Any] | None:
            current = self.status(name)
            return current if current.get("phase") in phases else None

        return self.wait(check, timeout, f"SFTJob {name} phase in {sorted(phases)}", name)

    def diagnostics(self, name: str | None) -> str:
        """Status, pod logs and operator logs, for assertion messages."""
        lines: list[str] = []
        if name:
            lines.append(f"--- status of {name} ---\n{json.dumps(self.status(name), indent=1)[-3000:]}")
            for pod in self.pods(name):
                try:
                    log = self.agent.logs(self.namespace, pod.metadata.name)[-2500:]
                except Exception as error:
                    log = f"(no log: {error})"
                lines.append(f"--- {pod.metadata.name} ({pod.status.phase}) ---\n{log}")
        lines.append(self.operator_logs())
        return "\n".join(lines)

    def scrape_trainer(self, name: str, timeout: float = 180) -> str:
        """Wait for rank 0's pod IP and add its metrics endpoint to Prometheus's trainer targets."""

        def ip() -> str | None:
            pods = [p for p in self.pods(name) if p.metadata.labels.get(LABEL_RANK) == "0" and p.status.pod_ip]
            return str(pods[0].status.pod_ip) if pods else None

        address: str = self.wait(ip, timeout, f"rank 0 of {name} to get an IP", name)
        self.trainer_targets.add(f"{address}:{TRAINER_METRICS_PORT}")
        # A tiny run trains for only seconds: scrape trainers 4x a second so that rate() gets samples.
        self.prometheus.set_targets(
            "kube-sft-trainer", sorted(self.trainer_targets), scrape_interval="250ms", scrape_timeout="200ms"
        )
        return address

    def delete(self, name: str, timeout: float = 60) -> None:
        """`kubectl delete sftjob` and wait until its pods are gone."""
        self.cluster.kubectl("delete", "sftjob", name, "-n", self.namespace, "--wait=false", check=False)
        self.wait(lambda: self.get(name) is None and not self.pods(name), timeout, f"{name} and its pods deleted")

    def get_sftjobs_table(self) -> dict[str, dict[str, str]]:
        """`kubectl get sftjobs` parsed: job name -> column -> cell."""
        out = self.cluster.kubectl("get", "sftjobs", "-n", self.namespace).stdout
        lines = [line for line in out.splitlines() if line.strip()]
        if not lines:
            return {}
        header = lines[0].split()
        return {cells[0]: dict(zip(header, cells, strict=False)) for cells in (line.split() for line in lines[1:])}


def impersonating_client(cluster: ControlPlane, user: str) -> kubernetes.client.ApiClient:
    """An ApiClient acting as the ordinary user `user` (Impersonate-User header): what they may do, never admin."""
    client = cluster.api_client()
    client.set_default_header("Impersonate-User", user)
    return client


_SYSTEM: System | None = None


def wait_sftjobs_served(cluster: ControlPlane, namespace: str, timeout: float = 90) -> None:
    """Wait until SFTJobs can be created: the CRD Established, then a server-side dry run of a valid job
    passing. Established is not enough: until the API server has built the new kind's schema for the
    admission policies, a create answers 503 "Resource kind ... SFTJob not found"."""
    ext = kubernetes.client.ApiextensionsV1Api(cluster.client)

    def established() -> bool:
        crd = ext.read_custom_resource_definition(f"{PLURAL}.{GROUP}")
        return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

    probe = sftjob("served-probe", tiny_training(output_dir="/output/probe", data=gsm8k_data()), num_nodes=1)
    probe["metadata"]["namespace"] = namespace

    def served() -> bool:
        dry_run = ("apply", "--dry-run=server", "-n", namespace, "-f", "-")
        result = cluster.kubectl(*dry_run, input=yaml.safe_dump(probe), check=False)
        if result.returncode != 0:
            raise RuntimeError(result.stderr.strip())  # the last one is in the timeout's message
        return True

    wait_until(established, 30, "the SFTJob CRD Established", interval=0.2)
    wait_until(served, timeout, "SFTJobs served through the admission policies", interval=0.5)


def install(cluster: ControlPlane, agent: RealNode, prometheus: PrometheusServer, trainer_image: str) -> System:
    """`helm install` the chart once for the session and wait for its two operator replicas.

    The chart's own operator image (built by hack/images/build.sh with the tag the chart names), and
    `trainer_image` (repository:tag) for the SFTJobs."""
    global _SYSTEM
    if _SYSTEM is not None:
        return _SYSTEM
    core = kubernetes.client.CoreV1Api(cluster.client)
    existing = {n.metadata.name for n in core.list_namespace().items}
    for namespace in (JOBS_NAMESPACE, *TENANT_NAMESPACES):
        if namespace not in existing:
            core.create_namespace({"metadata": {"name": namespace}})
    wait_until(lambda: core.read_namespaced_service_account("default", JOBS_NAMESPACE), 30, "default SA")
    watched = ",".join((JOBS_NAMESPACE, *TENANT_NAMESPACES))
    cluster.helm(
        "install", RELEASE, str(CHART), "--namespace", SYSTEM_NAMESPACE, "--create-namespace",
        "--set", "replicaCount=2", "--set", f"watchNamespaces={{{watched}}}",
        "--set", "resyncSeconds=1", "--set", "peering.lifetime=8",
        "--set", "resources.requests.cpu=10m",
        # The scenarios mount host directories for data and output: host access only there.
        "--set", f"admission.hostAccessNamespaces={{{JOBS_NAMESPACE}}}",
        "--set", f"trainerImage.repository={trainer_image.rsplit(':', 1)[0]}",
        "--set", f"trainerImage.tag={trainer_image.rsplit(':', 1)[1]}",
    )  # fmt: skip
    wait_sftjobs_served(cluster, JOBS_NAMESPACE)
    system = System(cluster, agent, prometheus)
    system.wait_operators(2, timeout=180)
    _SYSTEM = system
    return system


def uninstall(system: System) -> None:
    """`helm uninstall` and delete the jobs' namespace (before the real node goes)."""
    global _SYSTEM
    _SYSTEM = None
    system.cluster.helm(
        "uninstall", RELEASE, "--namespace", SYSTEM_NAMESPACE, "--wait", "--timeout", "60s", check=False
    )
    system.cluster.kubectl("delete", "namespace", JOBS_NAMESPACE, "--wait=false", check=False)


@pytest.fixture(scope="package")
def sft_system(
    kube_cluster: ControlPlane, real_node: RealNode, project_images: dict[str, Path], prometheus: PrometheusServer
) -> Iterator[System]:
    """The helm-installed kube-sft of the e2e scenarios (installed on first use, removed after them)."""
    (trainer_image,) = archive_image_tags(project_images["trainer-cpu"])
    system = install(kube_cluster, real_node, prometheus, trainer_image)
    yield system
    uninstall(system)


@pytest.fixture
def host_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A world-readable temp dir for hostPath volumes (the images run as uid 1000)."""
    path = tmp_path_factory.mktemp("e2e-host")
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def poll_until(check: Callable[[], T | None], timeout: float, interval: float = 0.5) -> T | None:
    """Like wait_until but returns None instead of raising."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    return None
