"""The text `kubectl sft status` and `kubectl sft logs` print, from the SFTJob and log lines (pure)."""

from typing import Any

from sft_trainer.contract import exit_code_meaning

Object = dict[str, Any]


def prefix_line(rank: int | str, line: str) -> str:
    """One log line as `kubectl sft logs` prints it: `[node-<rank>] <line>`."""
    return f"[node-{rank}] {line}"


def prefix_lines(rank: int | str, text: str) -> list[str]:
    """Every line of a log text, prefixed with its node rank (no trailing empty line)."""
    return [prefix_line(rank, line) for line in text.splitlines()]


def _number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def progress_text(progress: Object) -> str:
    """`step 120/600 (20.0%), epoch 0, ETA 12m30s, 1.2M tokens`."""
    step, total = progress.get("step", 0), progress.get("totalSteps", 0)
    percent = progress.get("percent")
    if percent is None and total:
        percent = 100.0 * step / total
    parts = [f"step {step}/{total or '?'}" + (f" ({percent:.1f}%)" if percent is not None else "")]
    parts.append(f"epoch {progress.get('epoch', 0)}")
    eta = progress.get("eta") or (_duration(progress["etaSeconds"]) if progress.get("etaSeconds") else None)
    if eta:
        parts.append(f"ETA {eta}")
    tokens = progress.get("tokens")
    if tokens:
        parts.append(f"{_si(tokens)} tokens")
    return ", ".join(parts)


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{unit}"
    return str(value)


def metrics_text(metrics: Object) -> str:
    """`loss 1.234, val loss 1.456 (best 1.400), lr 5e-06, grad norm 0.8, 12.3k tok/s, MFU 41%`."""
    parts = []
    for key, label in (("loss", "loss"), ("valLoss", "val loss")):
        if metrics.get(key) is not None:
            parts.append(f"{label} {_number(metrics[key])}")
    if metrics.get("bestValLoss") is not None and parts:
        parts[-1] += f" (best {_number(metrics['bestValLoss'])})"
    if metrics.get("lr") is not None:
        parts.append(f"lr {metrics['lr']:.3g}")
    if metrics.get("gradNorm") is not None:
        parts.append(f"grad norm {_number(metrics['gradNorm'], 3)}")
    if metrics.get("tokensPerSecond") is not None:
        parts.append(f"{_si(round(metrics['tokensPerSecond'], 1))} tok/s")
    if metrics.get("mfu") is not None:
        parts.append(f"MFU {100 * metrics['mfu']:.0f}%")
    return ", ".join(parts) or "-"


def failure_text(failure: Object) -> str:
    """`PodFailed on rank 1 (pod x-node-1), exit code 11: missing data (permanent), not retried: <message>`."""
    text = str(failure.get("reason", "Unknown"))
    if failure.get("rank") is not None:
        text += f" on rank {failure['rank']}"
    if failure.get("pod"):
        text += f" (pod {failure['pod']})"
    code = failure.get("exitCode")
    if code is not None:
        text += f", exit code {code}: {exit_code_meaning(int(code))}"
    text += ", retried" if failure.get("retryable") else ", not retried"
    if failure.get("time"):
        text += f" at {failure['time']}"
    if failure.get("message"):
        text += f"\n    {failure['message'].strip()}"
    return text


def format_status(job: Object) -> str:
    """The `kubectl sft status` text of an SFTJob object (as read from the API server)."""
    meta, spec, status = job.get("metadata", {}), job.get("spec", {}), job.get("status") or {}
    resources = spec.get("resources", {})
    phase = status.get("phase") or "Pending"
    if spec.get("runPolicy", {}).get("suspend") and phase not in ("Succeeded", "Failed"):
        phase = f"{phase} (suspend requested)" if phase != "Suspended" else phase
    lines = [f"SFTJob:       {meta.get('namespace', 'default')}/{meta.get('name', '?')}"]
    lines.append(f"Phase:        {phase}" + (f" ({status['reason']})" if status.get("reason") else ""))
    if status.get("message"):
        lines.append(f"Message:      {status['message']}")
    nodes, gpus = resources.get("numNodes", 1), resources.get("gpusPerNode", 1)
    replicas = status.get("replicas") or {}
    pods = ", ".join(f"{replicas[k]} {k}" for k in ("running", "pending", "succeeded", "failed") if replicas.get(k))
    lines.append(f"Resources:    {nodes} node(s) x {gpus} GPU(s)" + (f"; pods: {pods}" if pods else ""))
    runtime = status.get("runtime")
    if runtime:
        chosen = "default runtime" if runtime.get("isDefault") else "spec.runtimeRef"
        lines.append(
            f"Runtime:      {runtime.get('name')} (resourceVersion {runtime.get('resourceVersion')}, {chosen}, "
            f"attempt {runtime.get('attempt', 0)})"
        )
    if status.get("progress"):
        lines.append(f"Progress:     {progress_text(status['progress'])}")
    if status.get("metrics"):
        lines.append(f"Metrics:      {metrics_text(status['metrics'])}")
    checkpoint = status.get("latestCheckpoint")
    if checkpoint:
        lines.append(f"Checkpoint:   step {checkpoint.get('step')} at {checkpoint.get('path')}")
    if status.get("finalModel"):
        lines.append(f"Final model:  {status['finalModel']}")
    backoff = spec.get("runPolicy", {}).get("backoffLimit", 3)
    lines.append(f"Restarts:     {status.get('restarts', 0)}/{backoff} (attempt {status.get('attempt', 0)})")
    if status.get("nextAttemptTime"):
        lines.append(f"Next attempt: {status['nextAttemptTime']}")
    failure = status.get("lastFailure")
    lines.append(f"Last failure: {failure_text(failure) if failure else '-'}")
    return "\n".join(lines)


def job_phase(job: Object) -> str:
    """The job's phase, `Pending` before the operator has written one."""
    return str((job.get("status") or {}).get("phase") or "Pending")
