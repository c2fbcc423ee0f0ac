"""The trainer-side reporters: SFTJob status patches, termination message, Prometheus metrics."""

import json
import threading
from pathlib import Path

from sft_operator.api import SFTJobStatus
from sft_trainer.report import kubernetes as k8s_report
from sft_trainer.report.events import CheckpointReport, RunSummary, StepReport, ValidationReport
from sft_trainer.report.prometheus import PrometheusReporter, TrainerMetrics


def step(n: int, loss: float = 2.0) -> StepReport:
    return StepReport(
        step=n,
        total_steps=40,
        epoch=0,
        consumed_samples=8 * n,
        loss=loss,
        lr=1e-4,
        grad_norm=0.5,
        tokens=1000,
        tokens_per_s=5000.0,
        elapsed_s=float(n),
        eta_s=3725.0,
        data_wait_s=0.01,
        mfu=0.4,
    )


SUMMARY = RunSummary(
    outcome="succeeded",
    step=40,
    total_steps=40,
    exit_code=0,
    message="done",
    last_loss=1.2,
    best_val_loss=1.3,
    final_model="/output/run/final",
    latest_checkpoint="/output/run/checkpoints/step-40",
)


def test_status_fragments_fit_the_status_schema() -> None:
    patches = k8s_report.StatusPatches()
    merged: dict = {}
    for fragment in (
        patches.step(step(1)),
        patches.step(step(2, loss=float("nan"))),
        patches.validation(ValidationReport(step=2, val_loss=1.5, best_val_loss=1.5)),
        patches.checkpoint(CheckpointReport(step=2, path="/output/ckpt", seconds=1.0)),
        patches.finish(SUMMARY),
    ):
        k8s_report.merge(merged, fragment)
    status = SFTJobStatus.model_validate(merged)  # extra="forbid": a misspelt key fails here
    assert status.progress is not None and status.progress.step == 40 and status.progress.tokens == 2000
    assert status.progress.percent == 100.0
    assert status.metrics is not None and status.metrics.val_loss == 1.5 and status.metrics.mfu == 0.4
    assert status.final_model == "/output/run/final"
    assert status.latest_checkpoint is not None and status.latest_checkpoint.path.endswith("step-40")


def test_eta_is_human_readable() -> None:
    assert k8s_report.human_duration(3725) == "1h02m"
    assert k8s_report.human_duration(65) == "1m05s"
    assert k8s_report.human_duration(None) is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_patches_are_throttled_and_merged(tmp_path: Path) -> None:
    sent: list[dict] = []
    arrived = threading.Event()

    def send(patch: dict) -> None:
        sent.append(patch)
        arrived.set()

    clock = FakeClock()
    reporter = k8s_report.KubernetesStatusReporter(send, tmp_path / "term", min_interval_s=1000, clock=clock)
    reporter.step(step(1))
    assert arrived.wait(5)
    for n in range(2, 30):
        reporter.step(step(n))
    assert len(sent) == 1  # throttled: the next patch waits for the interval (or finish)
    reporter.finish(SUMMARY)
    assert len(sent) == 2
    assert sent[1]["progress"]["step"] == 40 and sent[1]["finalModel"] == "/output/run/final"
    summary = json.loads((tmp_path / "term").read_text())
    assert summary["final_model"] == "/output/run/final" and summary["outcome"] == "succeeded"


def test_a_failing_api_server_never_raises_and_keeps_the_update(tmp_path: Path) -> None:
    calls: list[dict] = []

    def send(patch: dict) -> None:
        calls.append(patch)
        raise ConnectionError("api server down")

    reporter = k8s_report.KubernetesStatusReporter(send, tmp_path / "term", min_interval_s=0.0)
    reporter.step(step(1))
    reporter.validation(ValidationReport(step=1, val_loss=1.0, best_val_loss=1.0))
    reporter.finish(SUMMARY)  # must not raise
    assert calls and calls[-1]["progress"]["step"] == 40
    assert json.loads((tmp_path / "term").read_text())["exit_code"] == 0


def test_termination_message_fits_the_kubelet_limit() -> None:
    long = RunSummary(
        outcome="failed", step=3, total_steps=9, exit_code=11, message="x" * 10000, last_loss=float("nan")
    )
    text = k8s_report.termination_message(long)
    assert len(text.encode()) <= k8s_report.TERMINATION_MESSAGE_LIMIT
    parsed = json.loads(text)
    assert parsed["exit_code"] == 11 and parsed["last_loss"] is None


def test_no_reporter_outside_a_pod(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("SFT_JOB_NAME", raising=False)
    assert k8s_report.create_reporter(None) is None  # type: ignore[arg-type]


def test_prometheus_reporter_exports_labelled_series() -> None:
    metrics = TrainerMetrics()
    reporter = PrometheusReporter("demo", "team-a", metrics)
    reporter.step(step(3))
    reporter.validation(ValidationReport(step=3, val_loss=1.5, best_val_loss=1.4))
    reporter.checkpoint(CheckpointReport(step=3, path="/x", seconds=2.0))
    reporter.finish(SUMMARY)
    labels = {"sftjob": "demo", "sftjob_namespace": "team-a"}
    value = metrics.registry.get_sample_value
    assert value("kube_sft_trainer_step", labels) == 40
    assert value("kube_sft_trainer_loss", labels) == 2.0
    assert value("kube_sft_trainer_val_loss", labels) == 1.5
    assert value("kube_sft_trainer_tokens_total", labels) == 1000
    assert value("kube_sft_trainer_checkpoint_duration_seconds_count", labels) == 1
    assert value("kube_sft_trainer_data_wait_seconds_sum", labels) == 0.01
    assert value("kube_sft_trainer_finished", labels) == 1


def test_tokens_carry_over_from_an_earlier_attempt() -> None:
    assert k8s_report.tokens_so_far(lambda: {"progress": {"tokens": 5000}}) == 5000
    assert k8s_report.tokens_so_far(lambda: {}) == 0

    def broken() -> dict:
        raise ConnectionError("down")

    assert k8s_report.tokens_so_far(broken) == 0
    assert k8s_report.StatusPatches(5000).step(step(1))["progress"]["tokens"] == 6000
