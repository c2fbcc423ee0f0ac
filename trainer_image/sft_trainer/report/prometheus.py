"""Trainer metrics for Prometheus on `logging.metrics_port` (rank 0), labelled with the SFTJob.

Series (every one used by the chart's dashboard and alerts; a test checks the names):
  kube_sft_trainer_step / _total_steps / _epoch                      gauges
  kube_sft_trainer_loss / _val_loss / _best_val_loss                 gauges
  kube_sft_trainer_learning_rate / _grad_norm                        gauges
  kube_sft_trainer_tokens_per_second / _mfu                          gauges
  kube_sft_trainer_tokens_total                                      counter
  kube_sft_trainer_data_wait_seconds                                 histogram (per step)
  kube_sft_trainer_checkpoint_duration_seconds                       histogram
  kube_sft_trainer_last_step_timestamp_seconds                       gauge (stall alerts)
  kube_sft_trainer_finished                                          gauge, 1 succeeded / -1 failed
Labels: `sftjob` and `sftjob_namespace` (not `job`/`namespace`, which Prometheus owns).
"""

import logging
import math
import os
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from sft_trainer.config import SFTConfig
from sft_trainer.contract import ENV_JOB_NAME, ENV_JOB_NAMESPACE, ENV_POD_IP
from sft_trainer.report.events import CheckpointReport, RunSummary, StepReport, ValidationReport

log = logging.getLogger(__name__)
LABELS = ("sftjob", "sftjob_namespace")
PREFIX = "kube_sft_trainer"


class TrainerMetrics:
    """The trainer's metric families in their own registry (several runs in one process stay separate)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)

        def gauge(name: str, text: str) -> Gauge:
            return Gauge(f"{PREFIX}_{name}", text, LABELS, registry=self.registry)

        self.step = gauge("step", "Optimizer steps done.")
        self.total_steps = gauge("total_steps", "Optimizer steps planned.")
        self.epoch = gauge("epoch", "Current epoch.")
        self.loss = gauge("loss", "Training loss of the last step (token-normalised over the global batch).")
        self.val_loss = gauge("val_loss", "Validation loss of the last validation.")
        self.best_val_loss = gauge("best_val_loss", "Best validation loss so far.")
        self.learning_rate = gauge("learning_rate", "Learning rate of the last step.")
        self.grad_norm = gauge("grad_norm", "Global gradient norm of the last step (before clipping).")
        self.tokens_per_second = gauge("tokens_per_second", "Training throughput (tokens/s, all ranks).")
        self.mfu = gauge("mfu", "Model FLOPs utilisation of the last step (0-1).")
        self.last_step_time = gauge("last_step_timestamp_seconds", "Unix time of the last optimizer step.")
        self.finished = gauge("finished", "1 after success, -1 after failure, 0 while running.")
        self.tokens = Counter(
            f"{PREFIX}_tokens", "Tokens trained on (padding excluded).", LABELS, registry=self.registry
        )
        self.data_wait = Histogram(
            f"{PREFIX}_data_wait_seconds",
            "Time a step waited for its input batch.",
            LABELS,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0),
            registry=self.registry,
        )
        self.checkpoint_seconds = Histogram(
            f"{PREFIX}_checkpoint_duration_seconds",
            "Time to write one checkpoint.",
            LABELS,
            buckets=(0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0),
            registry=self.registry,
        )


def _set(gauge: Gauge, labels: tuple[str, str], value: float | None) -> None:
    if value is not None and math.isfinite(value):
        gauge.labels(*labels).set(value)


class PrometheusReporter:
    """A `Reporter` updating `TrainerMetrics`; serving them is `serve()`'s job."""

    def __init__(self, job: str, namespace: str, metrics: TrainerMetrics | None = None) -> None:
        self.metrics = metrics or TrainerMetrics()
        self.labels = (job, namespace)

    def step(self, report: StepReport) -> None:
        """Per-step gauges, token counter and data-wait histogram."""
        m, labels = self.metrics, self.labels
        _set(m.step, labels, report.step)
        _set(m.total_steps, labels, report.total_steps)
        _set(m.epoch, labels, report.epoch)
        _set(m.loss, labels, report.loss)
        _set(m.learning_rate, labels, report.lr)
        _set(m.grad_norm, labels, report.grad_norm)
        _set(m.tokens_per_second, labels, report.tokens_per_s)
        _set(m.mfu, labels, report.mfu)
        _set(m.last_step_time, labels, time.time())
        _set(m.finished, labels, 0)
        m.tokens.labels(*labels).inc(max(report.tokens, 0))
        m.data_wait.labels(*labels).observe(max(report.data_wait_s, 0.0))

    def validation(self, report: ValidationReport) -> None:
        """Validation losses."""
        _set(self.metrics.val_loss, self.labels, report.val_loss)
        _set(self.metrics.best_val_loss, self.labels, report.best_val_loss)

    def checkpoint(self, report: CheckpointReport) -> None:
        """Checkpoint write time."""
        self.metrics.checkpoint_seconds.labels(*self.labels).observe(max(report.seconds, 0.0))

    def finish(self, summary: RunSummary) -> None:
        """Mark the run finished (the process exits soon; a scrape may still catch it)."""
        _set(self.metrics.finished, self.labels, 1 if summary.outcome == "succeeded" else -1)
        _set(self.metrics.step, self.labels, summary.step)


def job_labels(config: SFTConfig) -> tuple[str, str]:
    """The SFTJob's name and namespace in a pod; the run name and `local` elsewhere."""
    return os.environ.get(ENV_JOB_NAME) or config.name, os.environ.get(ENV_JOB_NAMESPACE) or "local"


def create_reporter(config: SFTConfig) -> PrometheusReporter | None:
    """Serve /metrics on logging.metrics_port (bound to the pod IP when known), else None."""
    port = config.logging.metrics_port
    if port is None:
        return None
    job, namespace = job_labels(config)
    reporter = PrometheusReporter(job, namespace)
    address = os.environ.get(ENV_POD_IP) or "0.0.0.0"
    start_http_server(port, addr=address, registry=reporter.metrics.registry)
    log.info("serving trainer metrics on http://%s:%d/metrics", address, port)
    return reporter
