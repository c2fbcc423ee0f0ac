"""The Kubernetes side of `kubectl sft`: the API calls, the trainer pods of the newest attempt, and errors as one line."""

import os
import re
from collections.abc import Iterator
from enum import IntEnum
from pathlib import Path
from typing import Any

import typer

from sft_operator.api import GROUP, PLURAL, VERSION
from sft_operator.pods import pod_view
from sft_operator.render import LABEL_JOB, TRAINER_CONTAINER
from sft_trainer.cli_common import missing_extra_error

Object = dict[str, Any]


class PluginExit(IntEnum):
    """Exit codes of `kubectl sft` (`generate` run locally exits with `sft generate`'s own code)."""

    OK = 0
    FAILED = 1  # the request failed: no such SFTJob, no pods or final model yet, refused by the API server
    USAGE = 2  # a bad command line (Click's code)
    NO_CLUSTER = 3  # no usable kubeconfig, or the API server cannot be reached


def pod_rank(pod: Object) -> int:
    """The node rank of a trainer pod, from the operator's label (-1 without one), as the operator reads it."""
    return pod_view(pod).rank


def current_attempt_pods(pods: list[Object]) -> list[Object]:
    """The pods of the newest attempt, ordered by rank (older gangs may still be terminating)."""
    newest = max((pod_view(pod).attempt for pod in pods), default=0)
    return sorted((pod for pod in pods if pod_view(pod).attempt == newest), key=pod_rank)


def suspend_patch(suspend: bool) -> Object:
    """Merge patch of `kubectl sft suspend` (True) and `kubectl sft resume` (False)."""
    return {"spec": {"runPolicy": {"suspend": suspend}}}


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


def api_error_text(error: Exception) -> str:
    """The API server's message of a failed request (its Status body), else the error's reason."""
    import json

    body = getattr(error, "body", None)
    try:
        message = json.loads(body).get("message") if body else None
    except (ValueError, AttributeError):
        message = body if isinstance(body, str) else None
    return str(message or getattr(error, "reason", None) or error)


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
