"""The `kubectl sft` verbs (Typer): thin calls to `cluster`, `text` and `generation`, and the console script."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated

import typer
import yaml

from sft_operator.api import GROUP
from sft_operator.kubectl_plugin.cluster import (
    Cluster,
    Object,
    PluginExit,
    api_error_text,
    cluster_error,
    pod_rank,
    suspend_patch,
)
from sft_operator.kubectl_plugin.generation import (
    chat_options,
    generate_args,
    generation_instructions,
    generation_job,
    local_model_path,
    parse_mounts,
)
from sft_operator.kubectl_plugin.text import format_status, job_phase, prefix_line
from sft_trainer.cli_common import VersionOption, examples, run_console_script

app = typer.Typer(name="kubectl-sft", no_args_is_help=True, add_completion=False, rich_markup_mode=None)


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


def main() -> None:
    """The `kubectl-sft` console script: cluster errors end in one line and a `PluginExit` code."""
    run_console_script(app, "kubectl sft", cluster_error)


if __name__ == "__main__":
    main()
