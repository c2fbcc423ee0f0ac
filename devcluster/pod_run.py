"""What the node agent keeps for each pod it runs (`PodRun`) and the state its parts share (`AgentState`).

The agent (node_agent.py) is built from parts by role, each a class over the same state:
pod_sources.py (volumes and the ConfigMaps / Secrets / tokens behind them), pod_env.py (a
container's env and /etc/hosts), pod_status.py (the pod status it writes), pod_process.py (a pod's
containers as local process groups). `AgentState` declares that shared state with its types;
`NodeAgent.__init__` sets it.
"""

from __future__ import annotations

import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
import urllib3
from kubernetes.client import ApiException

from devcluster.pod_network import PodNetwork
from devcluster.pod_spec import IPAllocator, PodStartError

SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
MAX_GRACE_SECONDS = 30
KUBERNETES_SERVICE_NAME = "kubernetes.default.svc"


def transient_api_error(exc: Exception) -> bool:
    """An API call that failed because the API server (or etcd behind it) is down, restarting or
    overloaded: a connection error, 429 or a 5xx. Such a call is retried, as the kubelet retries."""
    if isinstance(exc, ApiException):
        return exc.status is None or exc.status == 429 or exc.status >= 500
    return isinstance(exc, (OSError, urllib3.exceptions.HTTPError))


@dataclass
class PodRun:
    """One pod this agent runs."""

    namespace: str
    name: str
    uid: str
    ip: str
    directory: Path
    log_path: Path
    termination_path: Path = Path()
    proc: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    deleting: bool = False
    finished: bool = False
    restarts: int = 0
    read_only_volumes: set[str] = field(default_factory=set)
    extra_hosts: dict[str, str] = field(default_factory=dict)
    interfaces: tuple[str, str] = ("", "")
    host_network: bool = False
    hostname: str = ""
    last_exit: dict[str, Any] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class MissingSourceError(PodStartError):
    """A ConfigMap or Secret the pod needs does not exist (yet): the agent waits for it."""


class DeletedWhileWaitingError(Exception):
    """The pod was deleted (or the agent stopped) before it could start."""


class AgentState:
    """The node agent's state, as every part of it reads it (set by `NodeAgent.__init__`)."""

    api: kubernetes.client.ApiClient
    v1: kubernetes.client.CoreV1Api
    server: str
    workdir: Path
    node_name: str
    real_mounts: bool
    network: PodNetwork | None
    ips: IPAllocator
    host_ip: str
    runs: dict[str, PodRun]
    _runs_lock: threading.Lock
    _stop: threading.Event
