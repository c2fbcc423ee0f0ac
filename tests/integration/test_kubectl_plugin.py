"""`kubectl sft` against a real API server, invoked through the real kubectl's plugin mechanism.

The SFTJob CRD is installed into the `kube_cluster` API server; a job is created from the Dolly
example and its status is written through the status subresource (as the operator and the
trainer's rank 0 do), then `kubectl sft status|suspend|resume|generate` read and change it.

`logs` reads real pod logs: pods labelled as the operator labels a job's gang run on the test node
agent, whose kubelet endpoint (devcluster/log_server.py) the API server proxies `pods/log` to.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from devcluster.controlplane import ControlPlane
from devcluster.node_agent import NodeAgent
from devcluster.procs import wait_until
from sft_operator.api import GROUP, PLURAL, VERSION
from sft_operator.render import LABEL_ATTEMPT, LABEL_JOB, LABEL_RANK, TRAINER_CONTAINER
from tests.builders import running_status

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "dolly" / "03-sftjob-8gpu.yaml"
VENV_BIN = Path(sys.executable).parent

RUNNING = running_status("dolly-2b", nodes=1)


def kubectl_sft(cluster: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    """`kubectl sft ARGS` with the real kubectl, which finds `kubectl-sft` on PATH (the venv's bin)."""
    env = cluster.tool_env()
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    argv = [str(cluster.binaries.kubectl), "sft", *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)


def custom_api(cluster: ControlPlane) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(cluster.client)


def read_job(cluster: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    job: dict[str, Any] = custom_api(cluster).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return job


def set_status(cluster: ControlPlane, namespace: str, name: str, status: dict[str, Any]) -> None:
    """Write the status subresource, as the operator and the trainer's rank 0 do."""
    body = {"status": status}
    custom_api(cluster).patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, body)


@pytest.fixture
def dolly_job(kube_cluster: ControlPlane, sftjob_crd: str, namespace: str) -> Iterator[str]:
    """The Dolly example SFTJob, created with the real kubectl in a fresh namespace."""
    kube_cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLE))
    yield "dolly-2b"


def test_kubectl_lists_the_plugin(kube_cluster: ControlPlane) -> None:
    env = kube_cluster.tool_env()
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(
        [str(kube_cluster.binaries.kubectl), "plugin", "list"], env=env, capture_output=True, text=True, check=False
    )
    assert str(VENV_BIN / "kubectl-sft") in result.stdout, result.stdout + result.stderr


def test_status_reads_what_the_status_subresource_holds(
    kube_cluster: ControlPlane, namespace: str, dolly_job: str
) -> None:
    fresh = kubectl_sft(kube_cluster, "status", dolly_job, "-n", namespace)
    assert fresh.returncode == 0, fresh.stderr
    assert "Phase:        Pending" in fresh.stdout
    assert "Last failure: -" in fresh.stdout

    set_status(kube_cluster, namespace, dolly_job, RUNNING)
    result = kubectl_sft(kube_cluster, "status", dolly_job, "-n", namespace)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert f"SFTJob:       {namespace}/dolly-2b" in text
    assert "Phase:        Running" in text
    assert "Resources:    1 node(s) x 8 GPU(s); pods: 1 running" in text
    assert "Progress:     step 120/600 (20.0%), epoch 0, ETA 12m30s, 1.2M tokens" in text
    assert "Metrics:      loss 1.235, val loss 1.5 (best 1.4), lr 5e-06, 12.3k tok/s" in text
    assert "Checkpoint:   step 100 at /output/dolly-2b/checkpoints/step-100" in text
    assert "Restarts:     1/3 (attempt 2)" in text
    assert "Last failure: PodFailed on rank 0 (pod dolly-2b-node-0), exit code 70: distributed timeout" in text

    raw = kubectl_sft(kube_cluster, "-n", namespace, "status", dolly_job, "-o", "yaml")
    assert raw.returncode == 0, raw.stderr
    assert yaml.safe_load(raw.stdout)["progress"]["step"] == 120


def test_status_of_a_missing_job_fails_with_a_message(
    kube_cluster: ControlPlane, sftjob_crd: str, namespace: str
) -> None:
    result = kubectl_sft(kube_cluster, "status", "nope", "-n", namespace)
    assert result.returncode == 1
    assert f"SFTJob {namespace}/nope not found" in result.stderr


def test_suspend_and_resume_change_spec_run_policy_only(
    kube_cluster: ControlPlane, namespace: str, dolly_job: str
) -> None:
    set_status(kube_cluster, namespace, dolly_job, RUNNING)
    before = read_job(kube_cluster, namespace, dolly_job)
    assert before["spec"]["runPolicy"].get("suspend", False) is False

    result = kubectl_sft(kube_cluster, "suspend", dolly_job, "-n", namespace)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"sftjob.{GROUP}/dolly-2b suspended (phase: Running)"
    suspended = read_job(kube_cluster, namespace, dolly_job)
    assert suspended["spec"]["runPolicy"]["suspend"] is True
    assert suspended["metadata"]["generation"] == before["metadata"]["generation"] + 1
    assert suspended["status"] == before["status"]  # the spec patch never touches the status
    expected_spec = copy.deepcopy(before["spec"])
    expected_spec["runPolicy"]["suspend"] = True
    assert suspended["spec"] == expected_spec
    assert (
        "Phase:        Running (suspend requested)"
        in kubectl_sft(kube_cluster, "status", dolly_job, "-n", namespace).stdout
    )

    result = kubectl_sft(kube_cluster, "resume", dolly_job, "-n", namespace)
    assert result.returncode == 0, result.stderr
    assert "resumed" in result.stdout
    assert read_job(kube_cluster, namespace, dolly_job)["spec"]["runPolicy"]["suspend"] is False


def test_suspend_of_a_missing_job_fails(kube_cluster: ControlPlane, sftjob_crd: str, namespace: str) -> None:
    result = kubectl_sft(kube_cluster, "suspend", "nope", "-n", namespace)
    assert result.returncode == 1
    assert "not found" in result.stderr


def test_generate_before_the_model_exists_says_so(kube_cluster: ControlPlane, namespace: str, dolly_job: str) -> None:
    set_status(kube_cluster, namespace, dolly_job, RUNNING)
    result = kubectl_sft(kube_cluster, "generate", dolly_job, "-n", namespace, "--prompt", "hi")
    assert result.returncode == 1
    assert "has no final model yet (phase: Running)" in result.stderr


# --- generate on a real final model ---------------------------------------------------------------


@pytest.fixture(scope="module")
def final_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny) final model: a few steps of the project's demo run on the CPU."""
    output = tmp_path_factory.mktemp("tiny-run")
    overrides = [
        f"output_dir={output}",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.save_interval=2",
        "data.synthetic.train_examples=128",
        "data.synthetic.validation_examples=8",
        "logging.progress=none",
    ]
    sft = [str(VENV_BIN / "sft"), "train", "--config", str(ROOT / "examples" / "local" / "demo.yaml"), *overrides]
    result = subprocess.run(sft, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (output / "final" / "sft.json").exists()
    return output / "final"


@pytest.mark.slow
def test_generate_runs_locally_when_the_volume_is_mounted_here(
    kube_cluster: ControlPlane, namespace: str, dolly_job: str, final_model: Path
) -> None:
    """`--mount /output=<dir>`: the job's /output/dolly-2b/final is found here and `sft generate` runs."""
    set_status(kube_cluster, namespace, dolly_job, {"phase": "Succeeded", "finalModel": "/output/dolly-2b/final"})
    local_root = final_model.parent.parent / "mounted-output"
    (local_root / "dolly-2b").mkdir(parents=True, exist_ok=True)
    if not (local_root / "dolly-2b" / "final").exists():
        shutil.copytree(final_model, local_root / "dolly-2b" / "final")
    result = kubectl_sft(
        kube_cluster,
        "generate",
        dolly_job,
        "-n",
        namespace,
        "--mount",
        f"/output={local_root}",
        "--prompt",
        "12+34=",
        "--max-new-tokens",
        "3",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "kubectl apply" not in result.stdout  # it ran here instead of printing a Job
    assert len(result.stdout.splitlines()) == 1  # one answer for one prompt


@pytest.mark.slow
def test_generate_prints_a_job_that_really_answers_in_the_cluster(
    kube_cluster: ControlPlane, node_agent: NodeAgent, namespace: str, dolly_job: str, final_model: Path
) -> None:
    """Not reachable here: the printed kubectl commands run `sft generate` as a Job on the output claim."""
    v1 = kubernetes.client.CoreV1Api(kube_cluster.client)
    claim = {
        "metadata": {"name": "sft-output"},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    v1.create_namespaced_persistent_volume_claim(namespace, claim)

    def bound_path() -> str | None:
        pvc = v1.read_namespaced_persistent_volume_claim("sft-output", namespace)
        if pvc.status.phase != "Bound":
            return None
        return str(v1.read_persistent_volume(pvc.spec.volume_name).spec.host_path.path)

    volume_dir = Path(wait_until(bound_path, 60, "claim sft-output bound", interval=0.5))
    shutil.copytree(final_model, volume_dir / "dolly-2b" / "final")
    set_status(kube_cluster, namespace, dolly_job, {"phase": "Succeeded", "finalModel": "/output/dolly-2b/final"})

    printed = kubectl_sft(kube_cluster, "generate", dolly_job, "-n", namespace, "-p", "12+34=", "--max-new-tokens", "3")
    assert printed.returncode == 0, printed.stderr
    assert "is not reachable here" in printed.stderr
    apply_line, rest = printed.stdout.split("\n", 1)
    assert apply_line == f"kubectl apply -n {namespace} -f - <<'EOF'"
    manifest_text, commands = rest.split("\nEOF\n", 1)
    assert commands.splitlines() == [
        f"kubectl wait -n {namespace} --for=condition=complete --timeout=30m job/dolly-2b-generate",
        f"kubectl logs -n {namespace} job/dolly-2b-generate",
    ]
    kube_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest_text)

    batch = kubernetes.client.BatchV1Api(kube_cluster.client)

    def finished() -> str | None:
        job = batch.read_namespaced_job("dolly-2b-generate", namespace)
        if job.status.succeeded:
            return "succeeded"
        return "failed" if job.status.failed else None

    outcome = wait_until(finished, 240, "generation Job finished", interval=1.0)
    pods = v1.list_namespaced_pod(namespace, label_selector="job-name=dolly-2b-generate").items
    log = node_agent.logs(namespace, pods[0].metadata.name)
    assert outcome == "succeeded", log[-3000:]
    assert "Traceback" not in log


# --- logs through the API server's pods/log proxy ------------------------------------------------


def gang_pod(job: str, rank: int, attempt: int, script: str) -> dict[str, Any]:
    """A pod labelled as the operator labels rank `rank` of attempt `attempt` of `job`."""
    labels = {LABEL_JOB: job, LABEL_RANK: str(rank), LABEL_ATTEMPT: str(attempt)}
    container = {"name": TRAINER_CONTAINER, "image": "trainer", "command": [sys.executable, "-u", "-c", script]}
    return {
        "metadata": {"name": f"{job}-node-{rank}" + ("" if attempt else "-old"), "labels": labels},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1, "containers": [container]},
    }


def start_gang(cluster: ControlPlane, namespace: str, job: str, script: str, attempt: int = 1) -> list[str]:
    """Rank 0 and 1 of the current attempt, plus a stale rank-0 pod of attempt 0; returns their names."""
    v1 = kubernetes.client.CoreV1Api(cluster.client)
    names = []
    for rank, pod_attempt in ((0, attempt), (1, attempt), (0, 0)):
        body = gang_pod(job, rank, pod_attempt, script.replace("RANK", str(rank)).replace("ATTEMPT", str(pod_attempt)))
        names.append(v1.create_namespaced_pod(namespace, body).metadata.name)
    return names


def wait_finished(cluster: ControlPlane, namespace: str, names: list[str]) -> None:
    v1 = kubernetes.client.CoreV1Api(cluster.client)

    def done() -> bool:
        return all(v1.read_namespaced_pod(n, namespace).status.phase == "Succeeded" for n in names)

    wait_until(done, 120, f"pods {names} Succeeded", interval=0.5)


def test_logs_prefix_every_rank_of_the_newest_attempt(
    kube_cluster: ControlPlane, node_agent: NodeAgent, namespace: str, dolly_job: str
) -> None:
    script = "for i in range(3): print(f'step {i} from rank RANK attempt ATTEMPT')"
    wait_finished(kube_cluster, namespace, start_gang(kube_cluster, namespace, dolly_job, script))

    result = kubectl_sft(kube_cluster, "logs", dolly_job, "-n", namespace)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        *(f"[node-0] step {i} from rank 0 attempt 1" for i in range(3)),
        *(f"[node-1] step {i} from rank 1 attempt 1" for i in range(3)),
    ]
    one = kubectl_sft(kube_cluster, "logs", dolly_job, "-n", namespace, "--rank", "1", "--tail", "1")
    assert one.stdout.splitlines() == ["[node-1] step 2 from rank 1 attempt 1"], one.stderr


def test_logs_follow_streams_every_rank_until_the_pods_end(
    kube_cluster: ControlPlane, node_agent: NodeAgent, namespace: str, dolly_job: str
) -> None:
    script = "import time\nfor i in range(4):\n    print(f'tick {i} rank RANK')\n    time.sleep(1)"
    names = start_gang(kube_cluster, namespace, dolly_job, script)
    v1 = kubernetes.client.CoreV1Api(kube_cluster.client)
    wait_until(
        lambda: all(v1.read_namespaced_pod(n, namespace).status.phase in ("Running", "Succeeded") for n in names[:2]),
        60,
        "the gang running",
        interval=0.2,
    )
    result = kubectl_sft(kube_cluster, "logs", dolly_job, "-n", namespace, "-f")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for rank in (0, 1):
        assert [line for line in lines if line.startswith(f"[node-{rank}] ")] == [
            f"[node-{rank}] tick {i} rank {rank}" for i in range(4)
        ]
    assert len(lines) == 8


def test_logs_of_a_job_without_pods_say_so(kube_cluster: ControlPlane, namespace: str, dolly_job: str) -> None:
    result = kubectl_sft(kube_cluster, "logs", dolly_job, "-n", namespace)
    assert result.returncode == 1
    assert f"SFTJob {namespace}/dolly-2b has no pods (phase: Pending)" in result.stderr
