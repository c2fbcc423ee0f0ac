"""Every Kubernetes manifest under examples/ is accepted by a real API server with the real CRD.

The SFTJob CRD (crds/sftjob.yaml) is installed into the real kube-apiserver of the `kube_cluster`
fixture, then each example file goes through the real kubectl's `apply --dry-run=server`, which
runs the full admission chain (OpenAPI schema, CEL rules, defaulting) without persisting anything.
SFTJobs are also validated by the API models, whose cross-field rules (batch divisibility by the
data-parallel size, TP x PP dividing the world) the CRD cannot express. A deliberately broken copy
of an example proves the server really validates.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from devcluster.controlplane import ControlPlane
from sft_operator.api import KIND, SFTJob

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def manifest_documents(path: Path) -> list[dict[str, Any]]:
    """The Kubernetes objects in a YAML file (documents with apiVersion and kind; others ignored)."""
    documents = yaml.safe_load_all(path.read_text(encoding="utf-8"))
    return [doc for doc in documents if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc]


def example_manifests() -> list[Path]:
    """Every YAML file under examples/ holding at least one Kubernetes object (local run configs are not)."""
    files = sorted([*EXAMPLES.rglob("*.yaml"), *EXAMPLES.rglob("*.yml")])
    return [path for path in files if manifest_documents(path)]


MANIFESTS = example_manifests()


def dry_run(kube_cluster: ControlPlane, namespace: str, path: Path) -> subprocess.CompletedProcess[str]:
    """`kubectl apply --dry-run=server -f path` in the namespace (never raises)."""
    return kube_cluster.kubectl(
        "apply", "--dry-run=server", "--validate=strict", "-n", namespace, "-f", str(path), check=False
    )


def test_both_flows_are_complete() -> None:
    """Each flow has storage, data preparation, a one-node and a two-node SFTJob and a generation Job."""
    for flow in ("dolly", "oasst"):
        kinds: dict[str, list[dict[str, Any]]] = {}
        for path in (EXAMPLES / flow).glob("*.yaml"):
            for doc in manifest_documents(path):
                kinds.setdefault(doc["kind"], []).append(doc)
        jobs = [SFTJob.model_validate(doc) for doc in kinds.get(KIND, [])]
        assert sorted(job.spec.resources.num_nodes for job in jobs) == [1, 2], flow
        assert all(job.spec.resources.gpus_per_node == 8 for job in jobs), flow
        commands = [" ".join(doc_command(job)) for job in kinds.get("Job", [])]
        assert any(f"sft data convert {flow}" in command for command in commands), flow
        assert any(command.startswith("sft generate") for command in commands), flow
        assert kinds.get("PersistentVolumeClaim"), flow


def doc_command(job: dict[str, Any]) -> list[str]:
    """The first container's command + args of a batch/v1 Job, whitespace-normalised."""
    container = job["spec"]["template"]["spec"]["containers"][0]
    words = [*container.get("command", []), *container.get("args", [])]
    return " ".join(" ".join(words).replace("\\\n", " ").split()).split(" ")


def test_sftjob_examples_pass_the_api_models() -> None:
    """The operator's own validation (cross-field rules included) accepts every example SFTJob."""
    jobs = [doc for path in MANIFESTS for doc in manifest_documents(path) if doc["kind"] == KIND]
    assert len(jobs) >= 4
    for doc in jobs:
        job = SFTJob.model_validate(doc)
        assert job.spec.training.world_size == job.spec.resources.world_size


@pytest.mark.parametrize("path", MANIFESTS, ids=[str(p.relative_to(EXAMPLES)) for p in MANIFESTS])
def test_example_is_accepted_by_the_api_server(
    kube_cluster: ControlPlane, sftjob_crd: str, namespace: str, path: Path
) -> None:
    """The real API server accepts the file: schema, CEL rules and defaulting all pass."""
    result = dry_run(kube_cluster, namespace, path)
    assert result.returncode == 0, f"{path}: {result.stderr}"
    created = [line for line in result.stdout.splitlines() if "(server dry run)" in line]
    assert len(created) == len(manifest_documents(path)), result.stdout


SFTJOB_FILES = [path for path in MANIFESTS if any(doc["kind"] == KIND for doc in manifest_documents(path))]


@pytest.mark.parametrize("path", SFTJOB_FILES, ids=[str(p.relative_to(EXAMPLES)) for p in SFTJOB_FILES])
def test_the_operators_children_of_each_example_are_accepted(
    kube_cluster: ControlPlane, sftjob_crd: str, namespace: str, path: Path, tmp_path: Path
) -> None:
    """What the operator would create for the example passes the API server too.

    The SFTJob is created for real (no operator runs here), its children are rendered by the
    operator's pure `render` functions with the job's real UID; the supporting objects are created
    (pods need their ServiceAccount to exist) and the pods go through a server-side dry run.
    """
    from sft_operator import render
    from sft_operator.api import GROUP, PLURAL, VERSION

    (doc,) = [doc for doc in manifest_documents(path) if doc["kind"] == KIND]
    created = tmp_path / "sftjob.yaml"
    created.write_text(yaml.safe_dump(doc), encoding="utf-8")
    kube_cluster.kubectl("apply", "-n", namespace, "-f", str(created))
    custom = kubernetes.client.CustomObjectsApi(kube_cluster.client)
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, doc["metadata"]["name"])
    job = SFTJob.model_validate({key: stored[key] for key in ("apiVersion", "kind", "metadata", "spec")})
    supporting, pods = render.supporting_objects(job), render.pods(job)
    for name, objects, extra in (("supporting", supporting, ()), ("pods", pods, ("--dry-run=server",))):
        rendered = tmp_path / f"{name}.yaml"
        rendered.write_text(yaml.safe_dump_all(objects), encoding="utf-8")
        result = kube_cluster.kubectl("apply", *extra, "-n", namespace, "-f", str(rendered), check=False)
        assert result.returncode == 0, f"{path} ({name}): {result.stderr}"
    assert len(pods) == job.spec.resources.num_nodes


BROKEN = {
    "unknown-field": (("spec", "training", "trainer", "max_stepz"), 10, "max_stepz"),
    "gpus-out-of-range": (("spec", "resources", "gpusPerNode"), 99, "gpusPerNode"),
    "bad-precision": (("spec", "training", "trainer", "precision"), "fp7", "precision"),
    "batch-not-divisible": (("spec", "training", "trainer", "global_batch_size"), 100, "100 is not divisible by"),
    "tp-not-dividing": (("spec", "training", "parallelism", "tensor_model_parallel_size"), 3, "tensor_model_parallel"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_sftjob_is_rejected(
    kube_cluster: ControlPlane, sftjob_crd: str, namespace: str, tmp_path: Path, case: str
) -> None:
    """The dry run is a real check: a changed copy of an example is refused, naming the field."""
    keys, value, named = BROKEN[case]
    doc = manifest_documents(EXAMPLES / "dolly" / "03-sftjob-8gpu.yaml")[0]
    node = doc
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(doc), encoding="utf-8")
    result = dry_run(kube_cluster, namespace, broken)
    assert result.returncode != 0, result.stdout
    assert named in result.stderr, result.stderr
