"""`kubectl sft`: the daily verbs for SFTJobs (installed as the `kubectl-sft` console script).

    kubectl sft status JOB            phase, progress, metrics, checkpoint, final model, last failure
    kubectl sft logs JOB [-f]         every rank's pod log, each line prefixed `[node-<rank>]`
    kubectl sft suspend JOB           spec.runPolicy.suspend=true (pods go, checkpoints stay)
    kubectl sft resume JOB            spec.runPolicy.suspend=false (resumes from the newest checkpoint)
    kubectl sft generate JOB -p TEXT  `sft generate` on status.finalModel, locally when its volume
                                      is reachable here, else prints the kubectl command for a Job

kubectl finds the plugin on PATH by its name; `-n/--namespace`, `--kubeconfig` and `--context` work
as in kubectl. Errors end in one line and a `PluginExit` code (docs/user-guide.md, "kubectl sft"). The pure parts (line prefixes, status text, patch bodies, the generation Job) are
plain functions; the verbs are thin calls to the Kubernetes API. No torch import: this module is
part of the operator package; `generate` runs the trainer's `sft` command as a separate process.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from enum import IntEnum
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

import typer
import yaml

from sft_operator.api import GROUP, PLURAL, VERSION
from sft_operator.render import DEFAULT_IMAGE, LABEL_ATTEMPT, LABEL_JOB, LABEL_RANK, TRAINER_CONTAINER
from sft_trainer.cli_common import VersionOption, examples, missing_extra_error, run_console_script

Object = dict[str, Any]

app = typer.Typer(name="kubectl-sft", no_args_is_help=True, add_completion=False, rich_markup_mode=None)


class PluginExit(IntEnum):
    """Exit codes of `kubectl sft` (`generate` run locally exits with `sft generate`'s own code)."""

    OK = 0
    FAILED = 1  # the request failed: no such SFTJob, no pods or final model yet, refused by the API server
    USAGE = 2  # a bad command line (Click's code)
    NO_CLUSTER = 3  # no usable kubeconfig, or the API server cannot be reached


# --- pure parts ----------------------------------------------------------------------------------


def prefix_line(rank: int | str, line: str) -> str:
    """One log line as `kubectl sft logs` prints it: `[node-<rank>] <line>`."""
    return f"[node-{rank}] {line}"


def prefix_lines(rank: int | str, text: str) -> list[str]:
    """Every line of a log text, prefixed with its node rank (no trailing empty line)."""
    return [prefix_line(rank, line) for line in text.splitlines()]


def pod_rank(pod: Object) -> int:
    """The node rank of a trainer pod, from its label (or its `-node-<rank>[-a<attempt>]` name)."""
    labels = pod.get("metadata", {}).get("labels") or {}
    raw = labels.get(LABEL_RANK)
    if raw is None:
        raw = str(pod.get("metadata", {}).get("name", "")).rpartition("-node-")[2].partition("-a")[0]
    try:
        return int(raw)
    except ValueError:
        return -1


def current_attempt_pods(pods: list[Object]) -> list[Object]:
    """The pods of the newest attempt, ordered by rank (older gangs may still be terminating)."""

    def attempt(pod: Object) -> int:
        raw = (pod.get("metadata", {}).get("labels") or {}).get(LABEL_ATTEMPT, "0")
        return int(raw) if str(raw).isdigit() else 0

    newest = max((attempt(pod) for pod in pods), default=0)
    return sorted((pod for pod in pods if attempt(pod) == newest), key=pod_rank)


def suspend_patch(suspend: bool) -> Object:
    """Merge patch of `kubectl sft suspend` (True) and `kubectl sft resume` (False)."""
    return {"spec": {"runPolicy": {"suspend": suspend}}}


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


def exit_code_meaning(code: int | None) -> str:
    """What a trainer exit code means (see sft_trainer.contract; 128+n is signal n)."""
    meanings = {
        0: "ok",
        1: "unexpected error (retried)",
        10: "invalid configuration (permanent)",
        11: "missing or malformed data (permanent)",
        12: "missing or unreadable model/tokenizer (permanent)",
        13: "non-finite loss (permanent)",
        14: "out of device memory (permanent)",
        15: "an extra is not installed in the image, e.g. kube-sft[trainer] (permanent)",
        70: "distributed timeout: a rank vanished (retried)",
        71: "interrupted by SIGTERM, checkpoint saved (retried)",
    }
    if code is None:
        return ""
    if code in meanings:
        return meanings[code]
    if code >= 128:
        return f"killed by signal {code - 128}" + (" (OOM killer or SIGKILL)" if code == 137 else "")
    return "transient (retried)" if 64 <= code < 128 else "permanent"


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


def mount_for(path: str, mounts: Iterable[tuple[str, Object]]) -> tuple[str, Object] | None:
    """The (mountPath, volume) whose mount path holds `path`, the deepest one first."""
    target = PurePosixPath(path)
    best: tuple[str, Object] | None = None
    for mount_path, volume in mounts:
        root = PurePosixPath(mount_path)
        if (target == root or root in target.parents) and (best is None or len(mount_path) > len(best[0])):
            best = (mount_path, volume)
    return best


def _storage_mounts(spec: Object) -> list[tuple[str, Object]]:
    """(mountPath, volume) of spec.storage's locations and spec.pod's own volumes."""
    found: list[tuple[str, Object]] = []
    for role, location in (spec.get("storage") or {}).items():
        volume: Object = {"name": f"sft-{role}"}
        if "persistentVolumeClaim" in location:
            volume["persistentVolumeClaim"] = {"claimName": location["persistentVolumeClaim"]["claimName"]}
        elif "hostPath" in location:
            volume["hostPath"] = {"path": location["hostPath"]["path"]}
        else:
            continue  # emptyDir: gone with the trainer pod
        if location.get("subPath"):
            volume["subPath"] = location["subPath"]
        found.append((location["mountPath"], volume))
    pod = spec.get("pod") or {}
    volumes = {volume.get("name"): volume for volume in pod.get("volumes") or []}
    for mount in pod.get("volumeMounts") or []:
        if mount.get("name") in volumes:
            found.append((mount["mountPath"], {**volumes[mount["name"]], "subPath": mount.get("subPath")}))
    return found


def generate_args(
    model: str, prompts: list[str], max_new_tokens: int, temperature: float, chat: dict[str, str] | None = None
) -> list[str]:
    """Arguments of `sft generate` for the prompts; `chat` may hold `system`, `label` and `history` (inline JSON)."""
    args = ["generate", "--model", model]
    for prompt in prompts:
        args += ["--prompt", prompt]
    for key, value in (chat or {}).items():
        args += [f"--{key}", value]
    return [*args, "--max-new-tokens", str(max_new_tokens), "--temperature", str(temperature)]


def chat_options(system: str | None, label: str | None, history: Path | None) -> dict[str, str]:
    """`sft generate`'s chat options; a history file is read here and passed inline (a Job cannot see it)."""
    options = {"system": system, "label": label, "history": history.read_text(encoding="utf-8") if history else None}
    return {key: value for key, value in options.items() if value is not None}


def generation_job(
    job: Object,
    prompts: list[str],
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    chat: dict[str, str] | None = None,
) -> Object:
    """A batch/v1 Job running `sft generate` on the SFTJob's final model, with its volume mounted read-only.

    Raises ValueError when the job has no final model or no persistent volume holds it.
    """
    meta, spec = job["metadata"], job.get("spec", {})
    final = (job.get("status") or {}).get("finalModel")
    if not final:
        raise ValueError(f"SFTJob {meta['name']} has no final model yet (phase {job_phase(job)})")
    found = mount_for(final, _storage_mounts(spec))
    if found is None:
        raise ValueError(f"no persistent volume of SFTJob {meta['name']} holds {final} (an emptyDir is gone)")
    mount_path, volume = found
    volume = dict(volume)
    sub_path = volume.pop("subPath", None)
    volume["name"] = "model"
    mount: Object = {"name": "model", "mountPath": mount_path, "readOnly": True}
    if sub_path:
        mount["subPath"] = sub_path
    gpus = min(int((spec.get("resources") or {}).get("gpusPerNode", 1)), 1)
    resource_name = (spec.get("resources") or {}).get("gpuResourceName", "nvidia.com/gpu")
    container: Object = {
        "name": "generate",
        "image": spec.get("image") or DEFAULT_IMAGE,
        "command": ["sft", *generate_args(final, prompts, max_new_tokens, temperature, chat)],
        "volumeMounts": [mount],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    if gpus:
        container["resources"] = {"limits": {resource_name: str(gpus)}}
    pod_spec: Object = {
        "restartPolicy": "Never",
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000},
        "containers": [container],
        "volumes": [volume],
    }
    pod = spec.get("pod") or {}
    for key in ("nodeSelector", "tolerations", "imagePullSecrets"):
        if pod.get(key):
            pod_spec[key] = pod[key]
    labels = {"app.kubernetes.io/name": "kube-sft", "app.kubernetes.io/component": "generate", LABEL_JOB: meta["name"]}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": f"{meta['name']}-generate",
            "namespace": meta.get("namespace", "default"),
            "labels": labels,
        },
        "spec": {"backoffLimit": 0, "ttlSecondsAfterFinished": 3600, "template": {"spec": pod_spec}},
    }


def generation_instructions(manifest: Object) -> str:
    """The shell commands that run the generation Job and show its answers."""
    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    body = yaml.safe_dump(manifest, sort_keys=False).rstrip()
    return (
        f"kubectl apply -n {namespace} -f - <<'EOF'\n{body}\nEOF\n"
        f"kubectl wait -n {namespace} --for=condition=complete --timeout=30m job/{name}\n"
        f"kubectl logs -n {namespace} job/{name}"
    )


def local_model_path(final: str, mount_map: dict[str, str]) -> Path | None:
    """Where `final` is on this machine: as is, or under a `--mount MOUNTPATH=LOCALDIR` mapping."""
    direct = Path(final)
    if (direct / "config.json").exists() or (direct / "sft.json").exists():
        return direct
    target = PurePosixPath(final)
    for mount_path, local in sorted(mount_map.items(), key=lambda item: -len(item[0])):
        root = PurePosixPath(mount_path)
        if target == root or root in target.parents:
            candidate = Path(local) / target.relative_to(root)
            if candidate.exists():
                return candidate
    return None


def parse_mounts(values: list[str]) -> dict[str, str]:
    """`/output=/mnt/sft-output` pairs -> {"/output": "/mnt/sft-output"}."""
    mapping = {}
    for value in values:
        mount_path, sep, local = value.partition("=")
        if not sep or not mount_path.startswith("/") or not local:
            raise typer.BadParameter(f"{value!r} is not MOUNTPATH=LOCALDIR")
        mapping[mount_path.rstrip("/") or "/"] = local
    return mapping


def job_phase(job: Object) -> str:
    """The job's phase, `Pending` before the operator has written one."""
    return str((job.get("status") or {}).get("phase") or "Pending")


# --- Kubernetes access ---------------------------------------------------------------------------


class Cluster:
    """The API calls of the plugin, against the kubeconfig/context kubectl would use."""

    def __init__(self, kubeconfig: str | None, context: str | None, namespace: str | None) -> None:
        from kubernetes import client, config

        config_file = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
        try:
            self.api = config.new_client_from_config(config_file=config_file, context=context)
            contexts, active = config.list_kube_config_contexts(config_file=config_file)
            chosen = next((c for c in contexts if c["name"] == context), active) if context else active
            default_namespace = chosen.get("context", {}).get("namespace") or "default"
        except config.ConfigException as error:
            if config_file is not None or not os.environ.get("KUBERNETES_SERVICE_HOST"):
                where = config_file or "~/.kube/config (no --kubeconfig or KUBECONFIG given, not in a pod)"
                raise config.ConfigException(f"kubeconfig {where}: {error}") from None
            config.load_incluster_config()
            self.api = client.ApiClient()
            default_namespace = _incluster_namespace()
        self.namespace = namespace or default_namespace
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)

    def get_job(self, name: str) -> Object:
        """The SFTJob object (exits with a message when it does not exist)."""
        from kubernetes.client.exceptions import ApiException

        try:
            job: Object = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except ApiException as error:
            if error.status == 404:
                typer.echo(f"error: SFTJob {self.namespace}/{name} not found", err=True)
                raise typer.Exit(PluginExit.FAILED) from None
            raise
        return job

    def patch_job(self, name: str, patch: Object) -> Object:
        """Merge-patch the SFTJob's spec."""
        self.get_job(name)
        result: Object = self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, patch)
        return result

    def job_pods(self, name: str) -> list[Object]:
        """The job's trainer pods of the newest attempt, by rank."""
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=f"{LABEL_JOB}={name}")
        return current_attempt_pods([self.api.sanitize_for_serialization(pod) for pod in pods.items])

    def pod_log(self, pod: str, tail: int | None) -> str:
        """A pod's trainer log, as written (raw bytes decoded: the client would re-parse JSON-looking logs)."""
        response = self.core.read_namespaced_pod_log(
            pod, self.namespace, container=TRAINER_CONTAINER, tail_lines=tail, _preload_content=False
        )
        return str(response.data.decode(errors="replace"))

    def stream_pod_log(self, pod: str, tail: int | None) -> Iterator[str]:
        """A pod's trainer log, line by line, as it is written (kubectl logs -f)."""
        response = self.core.read_namespaced_pod_log(
            pod, self.namespace, container=TRAINER_CONTAINER, tail_lines=tail, follow=True, _preload_content=False
        )
        pending = b""
        for chunk in response.stream(4096):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.decode(errors="replace")
        if pending:
            yield pending.decode(errors="replace")


def _incluster_namespace() -> str:
    path = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    return path.read_text().strip() if path.exists() else "default"


class _State:
    """Connection options given before the verb (`kubectl sft -n ns status job`)."""

    options: tuple[str | None, str | None, str | None] = (None, None, None)


def _cluster(namespace: str | None, kubeconfig: str | None = None, context: str | None = None) -> Cluster:
    """A Cluster from the verb's options, falling back to those given before the verb."""
    before_kubeconfig, before_context, before_namespace = _State.options
    return Cluster(kubeconfig or before_kubeconfig, context or before_context, namespace or before_namespace)


NamespaceOption = Annotated[str | None, typer.Option("--namespace", "-n", help="Namespace of the SFTJob.")]
KubeconfigOption = Annotated[str | None, typer.Option("--kubeconfig", help="Path of the kubeconfig.")]
ContextOption = Annotated[str | None, typer.Option("--context", help="kubeconfig context to use.")]


@app.callback(
    epilog=examples(
        "kubectl sft status dolly-2b -n team-a",
        "kubectl sft logs dolly-2b -f --tail 20",
        "kubectl sft suspend dolly-2b",
        "kubectl sft generate dolly-2b -p 'When did Virgin Australia start operating?'",
    )
)
def main_options(
    namespace: NamespaceOption = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
    version: VersionOption = False,
) -> None:
    """Daily verbs for kube-sft SFTJobs: status, logs, suspend, resume, generate.

    Exit codes: 0 ok, 1 the request failed, 2 bad usage, 3 no reachable cluster.
    """
    _State.options = (kubeconfig, context, namespace)


JobName = Annotated[str, typer.Argument(help="Name of the SFTJob.")]


@app.command()
def status(
    name: JobName,
    output: Annotated[str, typer.Option("--output", "-o", help="text, yaml or json (the raw status).")] = "text",
    namespace: NamespaceOption = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
) -> None:
    """Phase, progress, newest metrics, checkpoint, final model and the last failure of an SFTJob."""
    job = _cluster(namespace, kubeconfig, context).get_job(name)
    if output == "text":
        typer.echo(format_status(job))
    elif output in ("yaml", "json"):
        import json

        data = job.get("status") or {}
        typer.echo(yaml.safe_dump(data, sort_keys=False) if output == "yaml" else json.dumps(data, indent=2))
    else:
        raise typer.BadParameter(f"unknown output format {output!r}: text, yaml or json")


def _set_suspend(cluster: Cluster, name: str, suspend: bool) -> None:
    job = cluster.patch_job(name, suspend_patch(suspend))
    state = "suspended" if job["spec"]["runPolicy"]["suspend"] else "resumed"
    typer.echo(f"sftjob.{GROUP}/{name} {state} (phase: {job_phase(job)})")


@app.command()
def suspend(
    name: JobName, namespace: NamespaceOption = None, kubeconfig: KubeconfigOption = None, context: ContextOption = None
) -> None:
    """Suspend a job: its pods are deleted, its checkpoints kept (spec.runPolicy.suspend=true)."""
    _set_suspend(_cluster(namespace, kubeconfig, context), name, True)


@app.command()
def resume(
    name: JobName, namespace: NamespaceOption = None, kubeconfig: KubeconfigOption = None, context: ContextOption = None
) -> None:
    """Resume a suspended job from its newest checkpoint (spec.runPolicy.suspend=false)."""
    _set_suspend(_cluster(namespace, kubeconfig, context), name, False)


def _follow_all(streams: Mapping[int, Callable[[], Iterator[str]]], echo: Callable[[str], None]) -> None:
    """Print every rank's lines as they come, one thread per rank, whole lines only."""
    lock = threading.Lock()

    def pump(rank: int, lines: Callable[[], Iterator[str]]) -> None:
        for line in lines():
            with lock:
                echo(prefix_line(rank, line))

    threads = [threading.Thread(target=pump, args=item, daemon=True) for item in streams.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@app.command()
def logs(
    name: JobName,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream new lines of every rank.")] = False,
    tail: Annotated[int | None, typer.Option("--tail", help="Lines of each pod's log to show first.")] = None,
    rank: Annotated[int | None, typer.Option("--rank", help="Only this node rank.")] = None,
    namespace: NamespaceOption = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
) -> None:
    """Every rank's trainer log (the newest attempt's pods), each line prefixed `[node-<rank>]`."""
    cluster = _cluster(namespace, kubeconfig, context)
    pods = [pod for pod in cluster.job_pods(name) if rank is None or pod_rank(pod) == rank]
    if not pods:
        typer.echo(
            f"error: SFTJob {cluster.namespace}/{name} has no pods (phase: {job_phase(cluster.get_job(name))})",
            err=True,
        )
        raise typer.Exit(PluginExit.FAILED)
    failed: list[str] = []

    def lines_of(pod: Object) -> Iterator[str]:
        from kubernetes.client.exceptions import ApiException

        pod_name = pod["metadata"]["name"]
        try:
            if follow:
                yield from cluster.stream_pod_log(pod_name, tail)
            else:
                yield from cluster.pod_log(pod_name, tail).splitlines()
        except ApiException as error:
            failed.append(pod_name)
            typer.echo(prefix_line(pod_rank(pod), f"log not available: {api_error_text(error)}"), err=True)

    if follow:
        streams = {pod_rank(pod): functools.partial(lines_of, pod) for pod in pods}
        _follow_all(streams, typer.echo)
    else:
        for pod in pods:
            for line in lines_of(pod):
                typer.echo(prefix_line(pod_rank(pod), line))
    if failed:
        raise typer.Exit(PluginExit.FAILED)


def api_error_text(error: Exception) -> str:
    """The API server's message of a failed request (its Status body), else the error's reason."""
    import json

    body = getattr(error, "body", None)
    try:
        message = json.loads(body).get("message") if body else None
    except (ValueError, AttributeError):
        message = body if isinstance(body, str) else None
    return str(message or getattr(error, "reason", None) or error)


def _sft_command() -> list[str]:
    """The trainer's CLI on this machine: `sft`, else this Python's `-m sft_trainer.cli`."""
    found = shutil.which("sft")
    return [found] if found else [sys.executable, "-m", "sft_trainer.cli"]


@app.command()
def generate(
    name: JobName,
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="User text; repeat for several.")],
    mount: Annotated[
        list[str] | None,
        typer.Option("--mount", help="MOUNTPATH=LOCALDIR: where a job volume is mounted on this machine."),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 128,
    temperature: Annotated[float, typer.Option(min=0.0, help="0: greedy.")] = 0.0,
    system: Annotated[
        str | None, typer.Option(help="Chat system prompt (default: the one training used most; '' for none).")
    ] = None,
    label: Annotated[
        str | None, typer.Option(help="NeMo SteerLM label of the answer (default: training's most used; '' none).")
    ] = None,
    history: Annotated[
        Path | None, typer.Option(help="JSON file of earlier turns (NeMo `conversations` or HF `messages`).")
    ] = None,
    namespace: NamespaceOption = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
) -> None:
    """Answer prompts with a finished job's final model (status.finalModel).

    The model is prompted as in training: its template, and for chat models the system prompt and
    label training used most (or --system / --label) after the --history turns. When the model's
    directory is reachable here (the same path, or through --mount), `sft generate` runs locally;
    otherwise the kubectl commands of a generation Job are printed (the history travels inline).
    """
    try:
        chat = chat_options(system, label, history)
    except OSError as error:
        typer.echo(f"error: --history {history}: {error.strerror}", err=True)
        raise typer.Exit(PluginExit.FAILED) from None
    job = _cluster(namespace, kubeconfig, context).get_job(name)
    final = (job.get("status") or {}).get("finalModel")
    if not final:
        typer.echo(f"error: SFTJob {name} has no final model yet (phase: {job_phase(job)})", err=True)
        raise typer.Exit(PluginExit.FAILED)
    local = local_model_path(final, parse_mounts(mount or []))
    if local is not None:
        argv = [*_sft_command(), *generate_args(str(local), prompt, max_new_tokens, temperature, chat)]
        raise typer.Exit(subprocess.run(argv, check=False).returncode)
    try:
        manifest = generation_job(job, prompt, max_new_tokens, temperature, chat)
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(PluginExit.FAILED) from None
    typer.echo(f"# {final} is not reachable here; run `sft generate` in the cluster:", err=True)
    typer.echo(generation_instructions(manifest))


def cluster_error(error: BaseException) -> tuple[str, int] | None:
    """(one-line message, exit code) of an error any verb can meet talking to the cluster; None for others."""
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config import ConfigException
    from urllib3.exceptions import MaxRetryError

    if isinstance(error, ConfigException):
        return f"no usable cluster: {error}", PluginExit.NO_CLUSTER
    if isinstance(error, MaxRetryError):
        pool = getattr(error, "pool", None)
        server = f"{pool.scheme}://{pool.host}:{pool.port}" if pool is not None else "the API server"
        reason = re.sub(r"^<?[\w.]*Connection[^:]*: ", "", str(error.reason))  # drop the connection's repr
        return f"cannot reach the Kubernetes API server {server}: {reason}", PluginExit.NO_CLUSTER
    if isinstance(error, ApiException):
        return f"the API server refused the request: {api_error_text(error)}", PluginExit.FAILED
    return missing_extra_error(error)


def main() -> None:
    """The `kubectl-sft` console script: cluster errors end in one line and a `PluginExit` code."""
    run_console_script(app, "kubectl sft", cluster_error)


if __name__ == "__main__":
    main()
