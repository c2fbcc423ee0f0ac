"""Where progress leaves the process: one `FanOut` of `Reporter`s built from the config.

Rank 0 reports: console progress, `metrics.jsonl`, and optionally TensorBoard, Weights & Biases,
Prometheus (`logging.metrics_port`) and, inside an SFTJob pod, the status patch. Every sink is
plugged in one way: a module of `REPORTER_MODULES` whose `create_reporter(config)` returns its
`Reporter`, or None when it does not apply here. A sink the user asked for that cannot be built
fails the run; the sinks that switch themselves on from the pod's environment (`SELF_ENABLED`)
are logged and skipped instead (a missing `prometheus_client`, an unreachable API server).
"""

import importlib
import logging

from sft_trainer.config.schema import SFTConfig
from sft_trainer.report.events import CheckpointReport, Reporter, RunSummary, StepReport, ValidationReport
from sft_trainer.report.metrics_file import METRICS_FILE

__all__ = [
    "METRICS_FILE",
    "CheckpointReport",
    "FanOut",
    "Reporter",
    "RunSummary",
    "StepReport",
    "ValidationReport",
    "build_reporters",
]

log = logging.getLogger(__name__)
#: Every sink, in fan-out order.
REPORTER_MODULES = (
    "sft_trainer.report.metrics_file",
    "sft_trainer.report.console",
    "sft_trainer.report.tensorboard_logger",
    "sft_trainer.report.wandb_logger",
    "sft_trainer.report.prometheus",
    "sft_trainer.report.kubernetes",
)
SELF_ENABLED = frozenset({"sft_trainer.report.prometheus", "sft_trainer.report.kubernetes"})


class FanOut:
    """A `Reporter` that forwards to several; a failing sink is logged and never stops training."""

    def __init__(self, reporters: list[Reporter]) -> None:
        self.reporters = reporters

    def _each(self, method: str, event: object) -> None:
        for reporter in self.reporters:
            try:
                getattr(reporter, method)(event)
            except Exception:
                log.exception("reporter %s failed in %s", type(reporter).__name__, method)

    def step(self, report: StepReport) -> None:
        """Forward a step."""
        self._each("step", report)

    def validation(self, report: ValidationReport) -> None:
        """Forward a validation."""
        self._each("validation", report)

    def checkpoint(self, report: CheckpointReport) -> None:
        """Forward a checkpoint."""
        self._each("checkpoint", report)

    def finish(self, summary: RunSummary) -> None:
        """Forward the end of the run."""
        self._each("finish", summary)


def build_reporters(config: SFTConfig, is_rank_zero: bool) -> FanOut:
    """The reporters this process feeds (none but rank 0's)."""
    if not is_rank_zero:
        return FanOut([])
    reporters = []
    for name in REPORTER_MODULES:
        reporter = _optional_reporter(name, config) if name in SELF_ENABLED else _reporter(name, config)
        if reporter is not None:
            reporters.append(reporter)
    return FanOut(reporters)


def _reporter(module_name: str, config: SFTConfig) -> Reporter | None:
    """`module.create_reporter(config)`; errors propagate."""
    reporter: Reporter | None = importlib.import_module(module_name).create_reporter(config)
    return reporter


def _optional_reporter(module_name: str, config: SFTConfig) -> Reporter | None:
    """`module.create_reporter(config)` if the module exists; errors are logged, not raised."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            log.warning("cannot import %s: %s", module_name, error)
        return None
    factory = getattr(module, "create_reporter", None)
    if factory is None:
        return None
    try:
        reporter: Reporter | None = factory(config)
    except Exception:
        log.exception("%s.create_reporter failed; continuing without it", module_name)
        return None
    return reporter
