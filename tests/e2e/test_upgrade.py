"""Install the previous chart, create jobs, upgrade to this chart (a changed CRD schema), uninstall: no job lost.

The commands are docs/user-guide.md's own: the test reads the bash blocks of its Install, Upgrade and
Uninstall sections and runs them one by one with the real helm and kubectl (only the chart's path is
pointed at the checkout in question). The previous chart is taken from git history at test time
(`git archive PREVIOUS_CHART_COMMIT charts/kube-sft`), never committed twice. It runs on a control plane
of its own: the session's cluster has the e2e harness's release, which owns the CRD.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tarfile
from io import BytesIO
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from kubernetes.client import ApiException

from devcluster.binaries import MissingBinariesError, find_binaries
from devcluster.controlplane import ControlPlane
from devcluster.procs import wait_until

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "user-guide.md"
CHART_PATH = "charts/kube-sft"
PREVIOUS_CHART_COMMIT = "e2a584e348d2ee71c6bfa257e1fab393513945d6"
"""Chart 0.1.0: the SFTJob CRD in crds/ (never upgraded by Helm), no `spec.training.evaluation` in its schema."""
CRD = "sftjobs.sft.kube-sft.io"
GROUP, VERSION, PLURAL = "sft.kube-sft.io", "v1alpha1", "sftjobs"
JOB_NAMESPACES = ("team-a", "team-b")


def guide_blocks(heading: str, text: str) -> list[list[list[str]]]:
    """The bash blocks of the guide's section whose `## ` heading contains `heading`: blocks of commands,
    each command an argv (comments and blank lines dropped, `\\` continuations joined)."""
    sections = re.split(r"(?m)^## ", text)
    (section,) = [s for s in sections if heading in s.splitlines()[0]]
    blocks = []
    for body in re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL):
        joined = body.replace("\\\n", " ")
        commands = [shlex.split(line, comments=True) for line in joined.splitlines()]
        blocks.append([argv for argv in commands if argv])
    return blocks


def previous_chart(destination: Path) -> Path:
    """The chart as of PREVIOUS_CHART_COMMIT, extracted from git history into `destination`."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", PREVIOUS_CHART_COMMIT, CHART_PATH],
        cwd=REPO, capture_output=True, check=False, timeout=60,
    )  # fmt: skip
    if archive.returncode != 0:
        pytest.fail(f"git archive {PREVIOUS_CHART_COMMIT} failed (a full clone is needed): {archive.stderr!r}")
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(destination, filter="data")
    return destination / CHART_PATH


def run_block(cluster: ControlPlane, block: list[list[str]], chart: Path, expect_failure: bool = False) -> list[str]:
    """Run one guide block's commands (helm or kubectl only); returns each command's stdout (its stderr
    when `expect_failure`: then every command must fail)."""
    outputs = []
    for argv in block:
        tool, *args = argv
        assert tool in ("helm", "kubectl"), f"the guide's block runs {tool}: only helm and kubectl are followed"
        args = [str(chart) if arg == CHART_PATH else arg for arg in args]
        result = (cluster.helm if tool == "helm" else cluster.kubectl)(*args, check=False)
        assert (result.returncode != 0) == expect_failure, f"`{shlex.join(argv)}`:\n{result.stdout}\n{result.stderr}"
        outputs.append(result.stderr if expect_failure else result.stdout)
    return outputs


def demo_job(name: str, **training: Any) -> str:
    """examples/sftjob-demo.yaml named `name`, with `training` merged into spec.training."""
    job = yaml.safe_load((REPO / "examples" / "sftjob-demo.yaml").read_text())
    job["metadata"]["name"] = name
    job["spec"]["training"].update(training)
    return yaml.safe_dump(job)


def apply_job(cluster: ControlPlane, namespace: str, manifest: str) -> None:
    """`kubectl apply` one job, retried while the API server's handler for a just-Established CRD warms up."""

    def applied() -> bool:
        result = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest, check=False)
        assert result.returncode == 0 or "ServiceUnavailable" in result.stderr, result.stderr
        return result.returncode == 0

    wait_until(applied, 30, f"kubectl apply of an SFTJob in {namespace}")


def stored_jobs(cluster: ControlPlane) -> dict[tuple[str, str], dict[str, Any]]:
    """(namespace, name) -> spec of every SFTJob in the cluster."""
    custom = kubernetes.client.CustomObjectsApi(cluster.client)
    items = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
    return {(job["metadata"]["namespace"], job["metadata"]["name"]): job["spec"] for job in items}


@pytest.fixture
def cluster() -> Any:
    """A control plane for this test alone."""
    try:
        binaries = find_binaries()
    except MissingBinariesError as error:
        pytest.fail(str(error), pytrace=False)
    with ControlPlane.start(binaries=binaries) as plane:
        yield plane


def test_guide_install_upgrade_uninstall_keeps_every_job(cluster: ControlPlane, tmp_path: Path) -> None:
    text = GUIDE.read_text(encoding="utf-8")
    (install, *_) = guide_blocks("Install kube-sft", text)
    (upgrade,) = guide_blocks("Upgrade", text)
    uninstall, remove = guide_blocks("Uninstall", text)
    old_chart = previous_chart(tmp_path / "previous")
    new_version = yaml.safe_load((REPO / CHART_PATH / "Chart.yaml").read_text())["version"]
    assert yaml.safe_load((old_chart / "Chart.yaml").read_text())["version"] != new_version

    # Install the previous chart as the guide says, and submit jobs in two namespaces (same names in both).
    run_block(cluster, install, old_chart)
    for namespace in JOB_NAMESPACES:
        cluster.kubectl("create", "namespace", namespace)
        for name in ("first", "second"):
            apply_job(cluster, namespace, demo_job(name))
    before = stored_jobs(cluster)
    assert len(before) == 4
    # The previous schema has no spec.training.evaluation: kubectl's strict validation refuses it.
    with_evaluation = demo_job("evaluated", evaluation={"max_examples": 10})
    refused = cluster.kubectl("apply", "-n", "team-a", "-f", "-", input=with_evaluation, check=False)
    assert refused.returncode != 0 and "evaluation" in refused.stderr, refused.stderr

    # Without the guide's adoption commands Helm refuses the unowned CRD and changes nothing.
    (helm_upgrade,) = [argv for argv in upgrade if argv[:2] == ["helm", "upgrade"]]
    (refusal,) = run_block(cluster, [helm_upgrade], REPO / CHART_PATH, expect_failure=True)
    assert "invalid ownership metadata" in refusal, refusal
    assert stored_jobs(cluster) == before

    # Upgrade as the guide says: the CRD moves to the new schema, every job is kept unchanged.
    (*_, listing) = run_block(cluster, upgrade, REPO / CHART_PATH)
    assert all(f"{ns}   {name}" in re.sub(r" +", "   ", listing) for ns, name in before), listing
    assert stored_jobs(cluster) == before
    releases = json.loads(cluster.helm("list", "--namespace", "kube-sft-system", "--output", "json").stdout)
    assert [(r["chart"], r["status"]) for r in releases] == [(f"kube-sft-{new_version}", "deployed")], releases
    ext = kubernetes.client.ApiextensionsV1Api(cluster.client)
    crd = ext.read_custom_resource_definition(CRD)
    assert crd.metadata.annotations["helm.sh/resource-policy"] == "keep"
    wait_until(
        lambda: cluster.kubectl("apply", "-n", "team-a", "-f", "-", input=with_evaluation, check=False).returncode == 0,
        30, "the upgraded CRD to accept spec.training.evaluation",
    )  # fmt: skip
    custom = kubernetes.client.CustomObjectsApi(cluster.client)
    evaluated = custom.get_namespaced_custom_object(GROUP, VERSION, "team-a", PLURAL, "evaluated")
    assert evaluated["spec"]["training"]["evaluation"]["max_examples"] == 10
    after_upgrade = stored_jobs(cluster)

    # Uninstall as the guide says: the release goes, the CRD and every job stay.
    (_, listing) = run_block(cluster, uninstall, REPO / CHART_PATH)
    assert cluster.helm("list", "--namespace", "kube-sft-system", "--short").stdout.strip() == ""
    assert stored_jobs(cluster) == after_upgrade and len(after_upgrade) == 5
    assert "evaluated" in listing

    # Remove for good: the CRDs, and every job with them.
    run_block(cluster, remove, REPO / CHART_PATH)

    def crd_gone() -> bool:
        try:
            ext.read_custom_resource_definition(CRD)
        except ApiException as error:
            return error.status == 404
        return False

    wait_until(crd_gone, 60, "the SFTJob CRD deleted")
