"""`make dev-cluster` / `make dev-cluster-down`: a local cluster with a real node, the chart and a demo SFTJob.

    python -m devcluster.dev_cluster up     # start (in the background), install, run the demo job
    python -m devcluster.dev_cluster down   # stop everything, check nothing is left, remove the state

`up` starts `serve` as a background process: the test control plane (devcluster/controlplane.py),
a real node (kubelet + containerd + runc, devcluster/real_node.py) with the images `make images`
built, and a Prometheus scraping every pod's `metrics` port (the operator's and the trainers').
Then, as a user would: `helm install` of charts/kube-sft (the CPU trainer image), `kubectl apply` of
examples/sftjob-demo.yaml made small for a laptop, and it waits for the job to finish. Everything
lives in $KUBE_SFT_CACHE/dev-cluster (default ~/.cache/kube-sft/dev-cluster).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import kubernetes
import yaml

from devcluster.binaries import REPO_ROOT, cache_dir
from devcluster.controlplane import ControlPlane
from devcluster.node_cgroups import sweep_stale_cgroups
from devcluster.node_images import archive_image_tags, project_image_archives
from devcluster.prometheus import PrometheusServer
from devcluster.real_node import RealNode

RELEASE, SYSTEM_NAMESPACE, JOB = "kube-sft", "kube-sft-system", "demo"
DEMO_MANIFEST = REPO_ROOT / "examples" / "sftjob-demo.yaml"
UP_TIMEOUT = 300
JOB_TIMEOUT = float(os.environ.get("KUBE_SFT_DEV_JOB_TIMEOUT", "1200"))


def state_dir() -> Path:
    """Where the dev cluster keeps everything (outside the repository)."""
    return cache_dir() / "dev-cluster"


def demo_job(manifest: Path = DEMO_MANIFEST) -> dict[str, Any]:
    """The `make demo` SFTJob cut down for a shared laptop CPU: half a core, 300 steps, metrics on."""
    job: dict[str, Any] = yaml.safe_load(manifest.read_text())
    job["spec"]["resources"]["requests"] = {"cpu": "500m", "memory": "1Gi"}
    training = job["spec"]["training"]
    training["trainer"].update(max_steps=300, val_check_interval=100, save_interval=300, log_every_n_steps=25)
    training["logging"] = {"progress": "lines", "metrics_port": 9400}
    job["spec"].setdefault("pod", {})["env"] = [{"name": "OMP_NUM_THREADS", "value": "1"}]
    return job


def metrics_targets(pods: list[Any]) -> list[str]:
    """`ip:port` of every running pod's container port named `metrics` (the operator's, the trainers')."""
    return sorted(
        f"{pod.status.pod_ip}:{port.container_port}"
        for pod in pods
        if pod.status.phase == "Running" and pod.status.pod_ip
        for container in pod.spec.containers
        for port in container.ports or []
        if port.name == "metrics"
    )


# ----- serve: the long-running part --------------------------------------------------------------


def serve(state: Path) -> None:
    """Start the cluster, node and Prometheus; write state/ready.json; run until SIGTERM; tear down."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    images = project_image_archives()
    cluster = ControlPlane.start(workdir=state / "cluster")
    node: RealNode | None = None
    prometheus: PrometheusServer | None = None
    try:
        node = RealNode(cluster, state / "node", images=list(images.values())).start()
        prometheus = PrometheusServer(state / "prometheus", scrape_interval="5s").start()
        ready = {
            "kubeconfig": str(cluster.kubeconfig),
            "prometheus": prometheus.url,
            "bin": str(cluster.binaries.kubectl.parent),
            "trainer_image": archive_image_tags(images["trainer-cpu"])[0],
            "node": node.node_name,
        }
        (state / "ready.json").write_text(json.dumps(ready, indent=1))
        print(f"ready: {ready}", flush=True)
        # Debian's Prometheus has no Kubernetes service discovery: follow the pods' metrics ports here.
        v1 = kubernetes.client.CoreV1Api(cluster.client)
        targets: list[str] = []
        while not stop.wait(5):
            with contextlib.suppress(Exception):
                found = metrics_targets(v1.list_pod_for_all_namespaces().items)
                if found != targets:
                    prometheus.set_targets("kube-sft-pods", found)
                    targets = found
    finally:
        if prometheus is not None:
            prometheus.stop()
        leftovers: list[str] = []
        if node is not None:
            node.stop()
            leftovers = node.leftovers()
        cluster.stop()
        (state / "leftovers.json").write_text(json.dumps(leftovers))
        print(f"stopped; leftovers: {leftovers}", flush=True)


# ----- up / down ---------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _pid(state: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        pid = int((state / "serve.pid").read_text())
        return pid if _alive(pid) else None
    return None


def _tools(ready: dict[str, Any]) -> dict[str, str]:
    env = dict(os.environ, KUBECONFIG=ready["kubeconfig"])
    env["PATH"] = f"{ready['bin']}:{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def _run(argv: list[str], env: dict[str, str], check: bool = True, input: str | None = None) -> str:
    result = subprocess.run(argv, env=env, capture_output=True, text=True, input=input, check=False)
    if check and result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result.stdout


def _wait(what: str, timeout: float, check: Any) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(2)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def up() -> None:
    """Start (or find) the dev cluster, install the chart, run the demo SFTJob, print how to watch it."""
    state = state_dir()
    state.mkdir(parents=True, exist_ok=True)
    if _pid(state) is None:
        (state / "ready.json").unlink(missing_ok=True)
        log = (state / "serve.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "devcluster.dev_cluster", "serve"],
            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        (state / "serve.pid").write_text(str(process.pid))
        print(f"[dev-cluster] starting the control plane and a real node (log: {state / 'serve.log'})", flush=True)

        def ready_or_dead() -> bool:
            if process.poll() is not None:
                tail = (state / "serve.log").read_text(errors="replace")[-3000:]
                raise SystemExit(f"the dev cluster failed to start:\n{tail}")
            return (state / "ready.json").exists()

        _wait("the cluster and its node", UP_TIMEOUT, ready_or_dead)
    ready = json.loads((state / "ready.json").read_text())
    env = _tools(ready)
    repository, tag = ready["trainer_image"].rsplit(":", 1)
    print(
        "[dev-cluster] helm install kube-sft charts/kube-sft (operator image built from operator/Dockerfile)",
        flush=True,
    )
    _run(["helm", "upgrade", "--install", RELEASE, str(REPO_ROOT / "charts" / "kube-sft"), "--namespace",
          SYSTEM_NAMESPACE, "--create-namespace", "--set", "replicaCount=1", "--set", f"trainerImage.repository={repository}",
          "--set", f"trainerImage.tag={tag}", "--wait", "--timeout", "5m"], env)  # fmt: skip
    _run(["kubectl", "delete", "sftjob", JOB, "--ignore-not-found", "--wait=true"], env)
    _run(["kubectl", "apply", "-f", "-"], env, input=yaml.safe_dump(demo_job()))
    print(
        f"[dev-cluster] kubectl apply: SFTJob {JOB} (examples/sftjob-demo.yaml, 300 steps); waiting for it", flush=True
    )

    def finished() -> str | None:
        phase = _run(["kubectl", "get", "sftjob", JOB, "-o", "jsonpath={.status.phase}"], env, check=False).strip()
        return phase if phase in ("Succeeded", "Failed") else None

    phase = _wait(f"SFTJob {JOB} to finish", JOB_TIMEOUT, finished)
    print(_run(["kubectl", "get", "sftjobs"], env))
    print(_run(["kubectl", "sft", "logs", JOB], env, check=False)[-2500:])
    print(f"""[dev-cluster] SFTJob {JOB}: {phase}. The cluster keeps running; to use it:

    export KUBECONFIG={ready["kubeconfig"]}
    export PATH={ready["bin"]}:$PWD/.venv/bin:$PATH      # kubectl, helm, kubectl-sft
    kubectl get sftjobs -w
    kubectl sft logs {JOB}
    Prometheus: {ready["prometheus"]}      (e.g. kube_sft_trainer_loss, kube_sft_operator_leader)

and `make dev-cluster-down` removes it all.""")
    if phase != "Succeeded":
        raise SystemExit(1)


def down() -> None:
    """Stop the dev cluster (SIGTERM), check that nothing of its node is left, remove the state."""
    state = state_dir()
    pid = _pid(state)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        _wait("the dev cluster to stop", 120, lambda: not _alive(pid))
    leftovers = []
    with contextlib.suppress(OSError, ValueError):
        leftovers = json.loads((state / "leftovers.json").read_text())
    swept = sweep_stale_cgroups()  # a `serve` that was killed could not remove its node's cgroups
    if leftovers:
        raise SystemExit("[dev-cluster] stopped, but left behind:\n" + "\n".join(leftovers))
    if swept:
        print(f"[dev-cluster] removed the cgroups of a node that was killed: {swept}")
    subprocess.run(["rm", "-rf", str(state)], check=True)
    print("[dev-cluster] stopped; nothing left running or mounted")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m devcluster.dev_cluster", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "serve"])
    args = parser.parse_args()
    if args.command == "serve":
        serve(state_dir())
    elif args.command == "up":
        up()
    else:
        down()


if __name__ == "__main__":
    main()
