"""Rank 0 inside an SFTJob pod: progress into the SFTJob's status, and a summary into the termination message.

The operator injects SFT_JOB_NAME / SFT_JOB_NAMESPACE and a per-job ServiceAccount that may only
`get`/`patch` this job's `status`. A background thread merge-patches `status.progress`,
`status.metrics`, `status.latestCheckpoint` and `status.finalModel` at most every few seconds, so a
slow API server never slows training; failures are logged and retried with the next update, never
raised. On finish, the summary is also written to the termination-message file (the kubelet copies
it into the pod status), so the result survives a lost patch.
"""

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sft_trainer.config import SFTConfig
from sft_trainer.contract import (
    ENV_JOB_ATTEMPT,
    ENV_JOB_NAME,
    ENV_JOB_NAMESPACE,
    ENV_TERMINATION_MESSAGE_PATH,
    GROUP,
    PLURAL,
    TERMINATION_MESSAGE_LIMIT,
    TERMINATION_MESSAGE_PATH,
    VERSION,
)
from sft_trainer.report.events import CheckpointReport, RunSummary, StepReport, ValidationReport

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_INTERVAL_S = 5.0
FINAL_PATCH_TIMEOUT_S = 10.0

Patch = dict[str, Any]
Sender = Callable[[Patch], None]


def now_rfc3339() -> str:
    """Current UTC time as Kubernetes writes it."""
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def human_duration(seconds: float | None) -> str | None:
    """`1h02m`, `4m05s`, `12s`; None for unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return None
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _finite(value: float | None) -> float | None:
    """JSON has no NaN/inf: drop them rather than fail the patch."""
    return value if value is not None and math.isfinite(value) else None


def _camel(name: str) -> str:
    """`eval_exact_match` -> `evalExactMatch` (the status field names)."""
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def merge(into: Patch, update: Patch) -> Patch:
    """Deep-merge `update` into `into` (JSON merge-patch semantics without deletions)."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value
    return into


class StatusPatches:
    """Turns trainer events into SFTJob status fragments (pure; no I/O)."""

    def __init__(self, tokens: int = 0) -> None:
        self.tokens = tokens  # carried over from earlier attempts, so progress.tokens keeps counting

    def step(self, report: StepReport) -> Patch:
        """progress + metrics of one optimizer step."""
        self.tokens += report.tokens
        percent = 100.0 * report.step / report.total_steps if report.total_steps > 0 else 0.0
        return {
            "progress": {
                "step": report.step,
                "totalSteps": report.total_steps,
                "epoch": report.epoch,
                "percent": round(percent, 1),
                "etaSeconds": _finite(report.eta_s),
                "eta": human_duration(report.eta_s),
                "consumedSamples": report.consumed_samples,
                "tokens": self.tokens,
                "lastReportTime": now_rfc3339(),
            },
            "metrics": {
                "loss": _finite(report.loss),
                "lr": _finite(report.lr),
                "gradNorm": _finite(report.grad_norm),
                "tokensPerSecond": _finite(report.tokens_per_s),
                "mfu": _finite(report.mfu),
            },
        }

    def validation(self, report: ValidationReport) -> Patch:
        """Validation losses."""
        return {"metrics": {"valLoss": _finite(report.val_loss), "bestValLoss": _finite(report.best_val_loss)}}

    def checkpoint(self, report: CheckpointReport) -> Patch:
        """The newest checkpoint."""
        return {"latestCheckpoint": {"step": report.step, "path": report.path, "time": now_rfc3339()}}

    def finish(self, summary: RunSummary) -> Patch:
        """The end of the run: final model, last step, losses."""
        patch: Patch = {
            "progress": {"step": summary.step, "totalSteps": summary.total_steps, "lastReportTime": now_rfc3339()}
        }
        if summary.total_steps > 0:
            patch["progress"]["percent"] = round(100.0 * summary.step / summary.total_steps, 1)
        if summary.outcome == "succeeded":
            patch["progress"].update(etaSeconds=0.0, eta="0s")
        metrics = {"loss": _finite(summary.last_loss), "bestValLoss": _finite(summary.best_val_loss)}
        metrics.update({_camel(key): _finite(value) for key, value in (summary.eval_metrics or {}).items()})
        patch["metrics"] = {key: value for key, value in metrics.items() if value is not None}
        if summary.final_model:
            patch["finalModel"] = summary.final_model
        if summary.latest_checkpoint:
            patch["latestCheckpoint"] = {"step": summary.step, "path": summary.latest_checkpoint, "time": now_rfc3339()}
        return patch


def termination_message(summary: RunSummary) -> str:
    """The run summary as JSON, cut to what the kubelet keeps (the message is shortened first)."""
    data = asdict(summary)
    text = json.dumps(data, allow_nan=False, default=str) if _all_finite(data) else json.dumps(_clean(data))
    if len(text.encode()) > TERMINATION_MESSAGE_LIMIT:
        data["message"] = str(data["message"])[: max(0, TERMINATION_MESSAGE_LIMIT - len(text.encode()) - 16)] + "..."
        text = json.dumps(_clean(data))
    return text[:TERMINATION_MESSAGE_LIMIT]


def _all_finite(data: dict[str, Any]) -> bool:
    return all(not isinstance(value, float) or math.isfinite(value) for value in data.values())


def _clean(data: dict[str, Any]) -> dict[str, Any]:
    return {key: (_finite(value) if isinstance(value, float) else value) for key, value in data.items()}


class KubernetesStatusReporter:
    """A `Reporter` that keeps the SFTJob's status current; it never raises into the training loop."""

    def __init__(
        self,
        send: Sender,
        termination_path: Path | None,
        min_interval_s: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        tokens_so_far: int = 0,
    ) -> None:
        self.send = send
        self.termination_path = termination_path
        self.min_interval_s = min_interval_s
        self.clock = clock
        self.patches = StatusPatches(tokens_so_far)
        self._pending: Patch = {}
        self._last_sent = -math.inf
        self._lock = threading.Condition()
        self._closed = False
        self._failures = 0
        self._thread = threading.Thread(target=self._run, name="sftjob-status", daemon=True)
        self._thread.start()

    # --- Reporter ---------------------------------------------------------------------------------

    def step(self, report: StepReport) -> None:
        """Queue a step's progress and metrics."""
        self._queue(self.patches.step, report)

    def validation(self, report: ValidationReport) -> None:
        """Queue validation losses."""
        self._queue(self.patches.validation, report)

    def checkpoint(self, report: CheckpointReport) -> None:
        """Queue the newest checkpoint."""
        self._queue(self.patches.checkpoint, report)

    def finish(self, summary: RunSummary) -> None:
        """Write the termination message, then send everything left, synchronously."""
        try:
            self._write_termination_message(summary)
            with self._lock:
                merge(self._pending, self.patches.finish(summary))
                self._closed = True
                self._lock.notify_all()
            self._thread.join(FINAL_PATCH_TIMEOUT_S)
        except Exception:
            log.exception("finishing the SFTJob status failed")

    # --- internals --------------------------------------------------------------------------------

    def _queue(self, build: Callable[[Any], Patch], event: object) -> None:
        try:
            fragment = build(event)
            with self._lock:
                merge(self._pending, fragment)
                self._lock.notify_all()
        except Exception:
            log.exception("cannot queue an SFTJob status update")

    def _run(self) -> None:
        """Send the merged pending patch at most every `min_interval_s`; once more after finish()."""
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._lock.wait()
                wait = self._last_sent + self.min_interval_s - self.clock()
                if wait > 0 and not self._closed:
                    self._lock.wait(wait)
                    continue
                patch, self._pending = self._pending, {}
                closed = self._closed
            if patch:
                self._send(patch)
            if closed:
                return

    def _send(self, patch: Patch) -> None:
        self._last_sent = self.clock()
        try:
            self.send(patch)
            self._failures = 0
        except Exception as error:
            self._failures += 1
            if self._failures in (1, 10) or self._failures % 100 == 0:
                log.warning("SFTJob status patch failed (%d in a row): %s", self._failures, error)
            with self._lock:
                self._pending = merge(patch, self._pending)  # newer values win; retried next time

    def _write_termination_message(self, summary: RunSummary) -> None:
        if self.termination_path is None:
            return
        try:
            self.termination_path.write_text(termination_message(summary), encoding="utf-8")
        except OSError as error:
            log.warning("cannot write the termination message to %s: %s", self.termination_path, error)


def status_client(job: str, namespace: str, service_account_dir: Path) -> tuple[Sender, Callable[[], Patch]]:
    """(send, read): merge-patch / get the job's status subresource with the pod's service-account token."""
    from kubernetes import client
    from kubernetes.config.incluster_config import InClusterConfigLoader

    configuration = client.Configuration()
    InClusterConfigLoader(
        token_filename=str(service_account_dir / "token"), cert_filename=str(service_account_dir / "ca.crt")
    ).load_and_set(configuration)  # re-reads the token file when it rotates
    configuration.retries = 1
    api = client.CustomObjectsApi(client.ApiClient(configuration))

    def send(patch: Patch) -> None:
        api.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, job, {"status": patch}, _request_timeout=10
        )

    def read() -> Patch:
        body = api.get_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, job, _request_timeout=3)
        status: Patch = body.get("status") or {}
        return status

    return send, read


def tokens_so_far(read: Callable[[], Patch]) -> int:
    """`status.progress.tokens` written by an earlier attempt (0 when unknown)."""
    try:
        tokens = (read().get("progress") or {}).get("tokens", 0)
    except Exception as error:
        log.warning("cannot read the SFTJob status: %s", error)
        return 0
    return tokens if isinstance(tokens, int) and tokens > 0 else 0


def create_reporter(config: SFTConfig) -> KubernetesStatusReporter | None:
    """The reporter when running in an SFTJob pod (SFT_JOB_NAME set and an API server reachable), else None."""
    del config  # the job is named by the pod's environment, not by the training config
    env = os.environ
    job, namespace = env.get(ENV_JOB_NAME), env.get(ENV_JOB_NAMESPACE)
    termination = env.get(ENV_TERMINATION_MESSAGE_PATH) or env.get("KUBE_SFT_TERMINATION_MESSAGE_PATH")
    if not job or not namespace:
        return None
    termination_path: Path | None = Path(termination or TERMINATION_MESSAGE_PATH)
    if termination_path is not None and not termination_path.parent.is_dir():
        termination_path = None
    send: Sender
    tokens = 0
    if env.get("KUBERNETES_SERVICE_HOST"):
        service_account_dir = Path(env.get("KUBE_SFT_SERVICEACCOUNT_DIR") or SERVICE_ACCOUNT_DIR)
        send, read = status_client(job, namespace, service_account_dir)
        if env.get(ENV_JOB_ATTEMPT, "0") != "0":
            tokens = tokens_so_far(read)
    else:
        log.warning(f"{ENV_JOB_NAME} is set but no API server is reachable: status is not patched")

        def send(patch: Patch) -> None:
            del patch

    interval = float(env.get("SFT_STATUS_INTERVAL_SECONDS", DEFAULT_INTERVAL_S))
    return KubernetesStatusReporter(send, termination_path, min_interval_s=interval, tokens_so_far=tokens)
