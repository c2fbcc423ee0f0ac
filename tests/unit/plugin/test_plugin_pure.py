"""The pure parts of `kubectl sft`: log prefixes, status text, patch bodies, the generation Job."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from sft_operator.kubectl_plugin.cluster import current_attempt_pods, pod_rank, suspend_patch
from sft_operator.kubectl_plugin.generation import (
    generation_instructions,
    generation_job,
    local_model_path,
    mount_for,
    parse_mounts,
)
from sft_operator.kubectl_plugin.text import format_status, metrics_text, prefix_line, prefix_lines, progress_text
from sft_operator.render import LABEL_ATTEMPT, LABEL_JOB, LABEL_RANK
from sft_trainer.contract import ExitCode, exit_code_meaning
from tests.builders import running_status

ROOT = Path(__file__).resolve().parents[3]


def a_pod(name: str, rank: int | None, attempt: int = 0) -> dict[str, Any]:
    labels = {LABEL_JOB: "j", LABEL_ATTEMPT: str(attempt)}
    if rank is not None:
        labels[LABEL_RANK] = str(rank)
    return {"metadata": {"name": name, "labels": labels}}


def an_sftjob(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    base = yaml.safe_load((ROOT / "examples" / "dolly" / "03-sftjob-2node.yaml").read_text())
    base["metadata"]["namespace"] = "team-a"
    base["spec"].update(spec)
    base["status"] = status or {}
    return base


# --- logs ----------------------------------------------------------------------------------------


def test_each_line_gets_its_node_rank() -> None:
    assert prefix_line(1, "step 3 loss 1.2") == "[node-1] step 3 loss 1.2"
    assert prefix_lines(0, "a\nb\n") == ["[node-0] a", "[node-0] b"]
    assert prefix_lines(2, "") == []


def test_blank_lines_inside_a_log_are_kept_and_prefixed() -> None:
    assert prefix_lines(3, "x\n\ny") == ["[node-3] x", "[node-3] ", "[node-3] y"]


def test_rank_comes_from_the_operators_label() -> None:
    # As the operator reads it (status.pod_view): the label, never the name; -1 without one.
    assert pod_rank(a_pod("dolly-node-7", 3)) == 3
    assert pod_rank(a_pod("dolly-node-7", None)) == -1
    assert pod_rank({"metadata": {"name": "stray"}}) == -1


def test_only_the_newest_attempt_is_shown_in_rank_order() -> None:
    pods = [a_pod("j-node-1", 1, 2), a_pod("j-node-0", 0, 1), a_pod("j-node-0", 0, 2), a_pod("j-node-10", 10, 2)]
    newest = current_attempt_pods(pods)
    assert [(pod_rank(p), p["metadata"]["labels"][LABEL_ATTEMPT]) for p in newest] == [(0, "2"), (1, "2"), (10, "2")]
    assert current_attempt_pods([]) == []


# --- suspend / resume ----------------------------------------------------------------------------


def test_suspend_and_resume_patch_only_run_policy_suspend() -> None:
    assert suspend_patch(True) == {"spec": {"runPolicy": {"suspend": True}}}
    assert suspend_patch(False) == {"spec": {"runPolicy": {"suspend": False}}}


# --- status --------------------------------------------------------------------------------------

RUNNING = running_status("dolly-2b-2node", nodes=2, failed_rank=1, gradNorm=0.8123, mfu=0.41)


def test_status_shows_phase_progress_metrics_and_last_failure() -> None:
    text = format_status(an_sftjob(RUNNING))
    assert "SFTJob:       team-a/dolly-2b-2node" in text
    assert "Phase:        Running" in text
    assert "Resources:    2 node(s) x 8 GPU(s); pods: 2 running" in text
    assert "Progress:     step 120/600 (20.0%), epoch 0, ETA 12m30s, 1.2M tokens" in text
    assert "Metrics:      loss 1.235, val loss 1.5 (best 1.4), lr 5e-06, grad norm 0.812, 12.3k tok/s, MFU 41%" in text
    assert "Checkpoint:   step 100 at /output/dolly-2b/checkpoints/step-100" in text
    assert "Restarts:     1/3 (attempt 2)" in text
    assert "Last failure: PodFailed on rank 1 (pod dolly-2b-2node-node-1), exit code 70: distributed timeout" in text
    assert "retried at 2026-11-28T04:00:00Z\n    NCCL watchdog timeout" in text


def test_status_of_a_new_job_has_no_progress_yet() -> None:
    text = format_status(an_sftjob())
    assert "Phase:        Pending" in text
    assert "Progress" not in text and "Metrics" not in text
    assert text.endswith("Last failure: -")


def test_status_of_a_finished_job_names_its_final_model() -> None:
    status = {"phase": "Succeeded", "finalModel": "/output/dolly-2b/final", "reason": "Completed"}
    text = format_status(an_sftjob(status))
    assert "Phase:        Succeeded (Completed)" in text
    assert "Final model:  /output/dolly-2b/final" in text


def test_a_requested_suspension_shows_before_the_operator_acts() -> None:
    job = an_sftjob({"phase": "Running"})
    job["spec"]["runPolicy"]["suspend"] = True
    assert "Phase:        Running (suspend requested)" in format_status(job)
    job["status"]["phase"] = "Suspended"
    assert "Phase:        Suspended\n" in format_status(job)


def test_progress_percent_is_derived_when_missing() -> None:
    assert progress_text({"step": 5, "totalSteps": 20}) == "step 5/20 (25.0%), epoch 0"
    assert progress_text({"step": 0, "totalSteps": 0}) == "step 0/?, epoch 0"


def test_metrics_text_skips_what_is_not_reported() -> None:
    assert metrics_text({}) == "-"
    assert metrics_text({"loss": 2.0}) == "loss 2"


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (ExitCode.CONFIG_ERROR, "invalid configuration (permanent)"),
        (ExitCode.DATA_ERROR, "missing or malformed data (permanent)"),
        (ExitCode.OUT_OF_MEMORY, "out of device memory"),
        (ExitCode.DISTRIBUTED_TIMEOUT, "retried"),
        (ExitCode.INTERRUPTED, "SIGTERM"),
        (137, "killed by signal 9 (OOM killer or SIGKILL)"),
        (143, "killed by signal 15"),
        (99, "transient (retried)"),
        (42, "permanent"),
    ],
)
def test_exit_codes_are_explained(code: int, words: str) -> None:
    assert words in exit_code_meaning(int(code))


def test_every_trainer_exit_code_has_its_own_explanation() -> None:
    for code in ExitCode:
        assert exit_code_meaning(int(code)) not in ("permanent", "transient (retried)"), code


# --- generate ------------------------------------------------------------------------------------


def test_the_deepest_mount_holding_the_model_wins() -> None:
    mounts = [("/output", {"name": "a"}), ("/output/runs", {"name": "b"}), ("/out", {"name": "c"})]
    assert mount_for("/output/runs/x/final", mounts) == ("/output/runs", {"name": "b"})
    assert mount_for("/output/final", mounts) == ("/output", {"name": "a"})
    assert mount_for("/outputs/final", mounts) is None


def test_generation_job_mounts_the_output_claim_read_only() -> None:
    job = an_sftjob({"phase": "Succeeded", "finalModel": "/output/dolly-2b/final"})
    manifest = generation_job(job, ["Hello?", "Why?"], max_new_tokens=64)
    assert manifest["metadata"] == {
        "name": "dolly-2b-2node-generate",
        "namespace": "team-a",
        "labels": {
            "app.kubernetes.io/name": "kube-sft",
            "app.kubernetes.io/component": "generate",
            LABEL_JOB: "dolly-2b-2node",
        },
    }
    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == [
        "sft",
        "generate",
        "--model",
        "/output/dolly-2b/final",
        "--prompt",
        "Hello?",
        "--prompt",
        "Why?",
        "--max-new-tokens",
        "64",
        "--temperature",
        "0.0",
    ]
    assert container["volumeMounts"] == [{"name": "model", "mountPath": "/output", "readOnly": True}]
    # The trainer pods' own volume (render.storage_volume), mounted read-only.
    assert pod["volumes"] == [
        {"name": "model", "persistentVolumeClaim": {"claimName": "sft-output", "readOnly": False}}
    ]
    assert container["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["restartPolicy"] == "Never"


def test_generation_job_uses_the_jobs_image_and_a_subpath() -> None:
    job = an_sftjob({"finalModel": "/output/run/final"}, image="registry.example/trainer:1")
    job["spec"]["storage"]["output"]["subPath"] = "team-a"
    job["spec"]["resources"]["gpusPerNode"] = 0
    manifest = generation_job(job, ["x"])
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example/trainer:1"
    assert container["volumeMounts"][0]["subPath"] == "team-a"
    assert "resources" not in container


def test_generation_job_needs_a_final_model_on_a_persistent_volume() -> None:
    with pytest.raises(ValueError, match="no final model yet"):
        generation_job(an_sftjob({"phase": "Running"}), ["x"])
    with pytest.raises(ValueError, match="no persistent volume"):
        generation_job(an_sftjob({"finalModel": "/scratch/final"}), ["x"])


def test_generation_instructions_apply_wait_and_read_the_log() -> None:
    manifest = generation_job(an_sftjob({"finalModel": "/output/dolly-2b/final"}), ["Hi"])
    text = generation_instructions(manifest)
    lines = text.splitlines()
    assert lines[0] == "kubectl apply -n team-a -f - <<'EOF'"
    assert lines[-3] == "EOF"
    assert lines[-2] == "kubectl wait -n team-a --for=condition=complete --timeout=30m job/dolly-2b-2node-generate"
    assert lines[-1] == "kubectl logs -n team-a job/dolly-2b-2node-generate"
    assert yaml.safe_load("\n".join(lines[1:-3])) == manifest


def test_the_printed_generation_job_is_valid_yaml_for_a_shell(tmp_path: Path) -> None:
    manifest = generation_job(an_sftjob({"finalModel": "/output/dolly-2b/final"}), ["It's $HOME `x`"])
    script = generation_instructions(manifest).split("\n", 1)[1].rsplit("\nEOF", 1)[0]
    out = subprocess.run(
        ["bash", "-c", f"cat <<'EOF'\n{script}\nEOF"], capture_output=True, text=True, check=True
    ).stdout
    assert yaml.safe_load(out)["spec"]["template"]["spec"]["containers"][0]["command"][5] == "It's $HOME `x`"


def test_local_model_path_as_is_or_through_a_mount_mapping(tmp_path: Path) -> None:
    final = tmp_path / "run" / "final"
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")
    assert local_model_path(str(final), {}) == final
    assert local_model_path("/output/run/final", {"/output": str(tmp_path)}) == final
    assert local_model_path("/output/run/final", {"/elsewhere": str(tmp_path)}) is None
    assert local_model_path("/output/run/final", {}) is None


def test_mount_options_are_parsed_and_checked() -> None:
    assert parse_mounts(["/output/=/mnt/out", "/models=/m"]) == {"/output": "/mnt/out", "/models": "/m"}
    with pytest.raises(typer.BadParameter):
        parse_mounts(["output=/mnt"])
    with pytest.raises(typer.BadParameter):
        parse_mounts(["/output"])


def test_the_plugin_imports_no_torch() -> None:
    code = "import sys, sft_operator.kubectl_plugin.commands; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_following_interleaves_whole_prefixed_lines_of_every_rank() -> None:
    import functools
    from collections.abc import Callable, Iterator

    from sft_operator.kubectl_plugin.commands import _follow_all

    def lines_of(rank: int) -> Iterator[str]:
        return iter([f"line {i} of {rank}" for i in range(50)])

    printed: list[str] = []
    streams: dict[int, Callable[[], Iterator[str]]] = {rank: functools.partial(lines_of, rank) for rank in range(3)}
    _follow_all(streams, printed.append)
    assert len(printed) == 150
    for rank in range(3):
        mine = [line for line in printed if line.startswith(f"[node-{rank}] ")]
        assert mine == [f"[node-{rank}] line {i} of {rank}" for i in range(50)]


def test_api_errors_are_reported_by_the_servers_message() -> None:
    from kubernetes.client.exceptions import ApiException

    from sft_operator.kubectl_plugin.cluster import api_error_text

    error = ApiException(status=400, reason="Bad Request")
    error.body = '{"kind":"Status","message":"container \\"trainer\\" in pod \\"j-node-0\\" is waiting to start"}'
    assert api_error_text(error) == 'container "trainer" in pod "j-node-0" is waiting to start'
    plain = ApiException(status=500, reason="Internal Server Error")
    assert api_error_text(plain) == "Internal Server Error"
    odd = ApiException(status=502, reason="Bad Gateway")
    odd.body = "upstream down"
    assert api_error_text(odd) == "upstream down"
