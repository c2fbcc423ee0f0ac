"""A test-only node agent: a small kubelet stand-in that runs each pod bound to its node as a local process.

What it does, like a kubelet:
- registers a Node (Ready; allocatable cpu/memory/pods and `nvidia.com/gpu`), renews its Lease in
  kube-node-lease and the Ready condition's heartbeat;
- watches pods bound to the node; for each, gives it an IP 127.0.0.x (unique while the agent runs),
  materialises its volumes in a per-pod directory (configMap, secret, emptyDir, hostPath, downwardAPI,
  projected: including the service-account token, requested from the TokenRequest API and bound to
  the pod), runs init containers in order and then the first container's command + args as a local
  process group with the pod's env (value, fieldRef, resourceFieldRef, configMapKeyRef,
  secretKeyRef, envFrom, `$(VAR)` expansion) and KUBERNETES_SERVICE_HOST/PORT;
- writes the pod status: Pending -> Running (podIP, containerStatuses) -> Succeeded/Failed with the
  exit code and `terminated.message` from the container's terminationMessagePath file (or the log
  tail with FallbackToLogsOnError); enforces activeDeadlineSeconds;
- on pod deletion, SIGTERMs the process group, waits the grace period, SIGKILLs, then removes the pod.

What it cannot do, and how tests see it instead:
- Mounts: as root, each pod runs in its own private mount namespace (`unshare --mount`, see
  pod_exec.py) where every volume is bind-mounted at its real mountPath, the service-account token at
  /var/run/secrets/kubernetes.io/serviceaccount and the termination-message file at its
  terminationMessagePath (default /dev/termination-log), so unmodified programs
  (`load_incluster_config()`, kopf's in-cluster login) work. The empty mount-point directories/files
  are created on the host's root filesystem. Without that privilege (or with
  KUBE_SFT_AGENT_REAL_MOUNTS=0) the agent falls back to rewriting every mount path found in the
  command, args, env values and workingDir to the local directory `<pod dir>/volumes/<name>`.
  Either way these env vars say where things are:
    KUBE_SFT_SERVICEACCOUNT_DIR        the pod's service-account token directory
    KUBE_SFT_TERMINATION_MESSAGE_PATH  the file behind terminationMessagePath
    KUBE_SFT_MOUNTS                    JSON {mountPath: path the process can open}
    KUBE_SFT_POD_DIR                   the pod's scratch directory (the default working directory)
- There is no cluster DNS and no network namespace: every pod shares the host's network, with its own
  loopback address 127.0.0.x as podIP. With real mounts, each pod's /etc/hosts names every pod of its
  namespace (`<hostname>.<subdomain>[.<ns>.svc.cluster.local]`) by its IP, as of the pod's start. A process should bind to its pod IP (env from fieldRef
  status.podIP), not 0.0.0.0, when two pods use the same port. Pod host names
  (`<hostname>.<subdomain>...`) cannot resolve: if MASTER_ADDR (or any env var named in the pod's
  KUBE_SFT_TEST_RESOLVE_ENV, comma separated) is such a name, the agent replaces it with the IP it
  reserves for the pod of that hostname in the same namespace (reserved ahead, so a worker that starts
  before rank 0 gets the address rank 0 will have). KUBE_SFT_TEST_HOSTS lists `host=ip` pairs
  (comma separated) for every pod of the namespace the agent knows.
- PersistentVolumeClaims: the agent makes a default StorageClass `kube-sft-local` and provisions each
  Pending claim of it as a hostPath PersistentVolume, the directory `<agent dir>/pvc/<namespace>/<claim>`
  (the PV controller binds them); it is shared by every pod that mounts the claim, like ReadWriteMany.
- hostNetwork pods run in the host's network namespace, with podIP = hostIP.
- Only the first container runs (sidecars are not started); restartPolicy Always/OnFailure restarts
  it in place with back-off (restartCount, lastState); probes are not run (Ready follows Running); images
  are ignored, so a pod needs an explicit `command`, and PATH starts with this Python's bin directory
  (the repository's .venv), so `sft`, `python` and `kopf` are the checkout's.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import kubernetes
import urllib3
from kubernetes.client import ApiException

from devcluster.local_volumes import LocalVolumeProvisioner
from devcluster.log_server import LogServer
from devcluster.pod_network import PodNetwork, network_namespaces_work, release_shared, shared_network
from devcluster.pod_spec import (
    ALLOCATOR,
    PodStartError,
    allocator_for,
    container_named,
    dns_names,
    expand,
    micro_now,
    now,
    pod_conditions,
    resource_value,
    rewrite_paths,
    write_items,
)
from devcluster.procs import die_with_parent, kill_group

log = logging.getLogger("kube_sft.node_agent")
T = TypeVar("T")

SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
MAX_TERMINATION_MESSAGE = 4096
MAX_GRACE_SECONDS = 30
RESOLVED_ENV = ("MASTER_ADDR",)
POD_EXEC = Path(__file__).with_name("pod_exec.py")
KUBERNETES_SERVICE_NAME = "kubernetes.default.svc"


def transient_api_error(exc: Exception) -> bool:
    """An API call that failed because the API server (or etcd behind it) is down, restarting or
    overloaded: a connection error, 429 or a 5xx. Such a call is retried, as the kubelet retries."""
    if isinstance(exc, ApiException):
        return exc.status is None or exc.status == 429 or exc.status >= 500
    return isinstance(exc, (OSError, urllib3.exceptions.HTTPError))


def mount_namespaces_work() -> bool:
    """True if this process may make private mount namespaces with bind mounts (root, util-linux unshare)."""
    if os.environ.get("KUBE_SFT_AGENT_REAL_MOUNTS") == "0" or shutil.which("unshare") is None:
        return False
    with tempfile.TemporaryDirectory() as target:
        probe = ["unshare", "--mount", "--propagation", "private", "--", "mount", "--bind", "/", target]
        return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0


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


class NodeAgent:
    """Registers one Node and runs the pods the scheduler binds to it. start() / stop()."""

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        server: str,
        ca_file: Path,
        workdir: Path,
        node_name: str = "kube-sft-node-0",
        gpus: int = 8,
        cpu: str = "16",
        memory: str = "64Gi",
        max_pods: int = 110,
        labels: dict[str, str] | None = None,
        heartbeat_seconds: float = 10.0,
        provision_volumes: bool = True,
        real_mounts: bool | None = None,
        network_namespaces: bool | None = None,
    ) -> None:
        self.api = api_client
        self.v1 = kubernetes.client.CoreV1Api(api_client)
        self.server = server
        self.ca_file = ca_file
        self.workdir = workdir
        self.node_name = node_name
        self.capacity = {"cpu": cpu, "memory": memory, "pods": str(max_pods), "nvidia.com/gpu": str(gpus)}
        self.capacity["ephemeral-storage"] = "100Gi"
        self.labels = {
            "kubernetes.io/hostname": node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            **(labels or {}),
        }
        self.heartbeat_seconds = heartbeat_seconds
        self.provision_volumes = provision_volumes
        self.real_mounts = mount_namespaces_work() if real_mounts is None else real_mounts
        wanted = network_namespaces_work() if network_namespaces is None else network_namespaces
        self.network_namespaces = self.real_mounts and wanted
        self.network: PodNetwork | None = None
        self.ips = ALLOCATOR
        self.host_ip = "127.0.0.1"
        self.runs: dict[str, PodRun] = {}
        self._runs_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.log_server: LogServer | None = None
        self.volumes: LocalVolumeProvisioner | None = None

    # ----- lifecycle ------------------------------------------------------------------------

    def start(self) -> NodeAgent:
        """Register the node, then watch pods and heartbeat in background threads."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.network_namespaces:
            self.network = shared_network()
            self.network.forward(int(self.server.rsplit(":", 1)[1]))
            self.ips = allocator_for(self.network.address_prefix())
            self.host_ip = self.network.gateway
        self.log_server = LogServer(self._locate_log, self.workdir).start()
        self._register_node()
        self._renew_lease()
        loops = [(self._watch_loop, "watch"), (self._heartbeat_loop, "heartbeat")]
        if self.provision_volumes:
            self.volumes = LocalVolumeProvisioner(self.api, self.workdir / "pvc").start()
        for target, name in loops:
            thread = threading.Thread(target=target, name=f"node-agent-{self.node_name}-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop watching, kill every pod process (SIGTERM then SIGKILL) and delete the Node."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        with self._runs_lock:
            runs = list(self.runs.values())
        for run in runs:
            run.deleting = True
            self._kill(run, grace=2)
        if self.volumes is not None:
            self.volumes.stop()
        with contextlib.suppress(ApiException):
            self.v1.delete_node(self.node_name)
        if self.log_server is not None:
            self.log_server.stop()
        if self.network is not None:
            release_shared(self.network)
            self.network = None

    # ----- queries for tests ----------------------------------------------------------------

    def find_run(self, namespace: str, name: str) -> PodRun | None:
        """The newest run of pod namespace/name, if this agent started one."""
        with self._runs_lock:
            matches = [r for r in self.runs.values() if (r.namespace, r.name) == (namespace, name)]
        return matches[-1] if matches else None

    def logs(self, namespace: str, name: str) -> str:
        """The combined stdout/stderr of the pod's process (this agent has no `kubectl logs`)."""
        run = self.find_run(namespace, name)
        if run is None or not run.log_path.exists():
            return ""
        return run.log_path.read_text(errors="replace")

    def _locate_log(self, namespace: str, name: str) -> tuple[Path | None, Callable[[], bool]]:
        run = self.find_run(namespace, name)
        if run is None:
            return None, lambda: False
        return run.log_path, lambda: run.proc is not None and run.proc.poll() is None

    def kill(self, namespace: str, name: str, sig: signal.Signals = signal.SIGKILL) -> int:
        """Chaos: signal the pod's process group (as if the container crashed); return its PID.

        With restartPolicy Never the pod then ends Failed with exit code 128+sig; with Always or
        OnFailure the agent restarts the container in place, like the kubelet.
        """
        run = self.find_run(namespace, name)
        if run is None or run.proc is None or run.proc.poll() is not None:
            raise LookupError(f"pod {namespace}/{name} has no running process on {self.node_name}")
        kill_group(run.proc.pid, sig)
        return run.proc.pid

    def all_logs(self) -> str:
        """Every pod log this agent wrote, concatenated (for secret-leak checks)."""
        with self._runs_lock:
            paths = [r.log_path for r in self.runs.values()]
        return "\n".join(p.read_text(errors="replace") for p in paths if p.exists())

    # ----- node -----------------------------------------------------------------------------

    def _register_node(self) -> None:
        body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.node_name, "labels": self.labels}}
        try:
            self.v1.create_node(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            self.v1.patch_node(self.node_name, {"metadata": {"labels": self.labels}})
        self.v1.patch_node_status(self.node_name, self._node_status())

    def _node_status(self) -> dict[str, Any]:
        stamp = now()
        ready = {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "kube-sft test node agent is posting ready status",
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": stamp,
        }
        pressure = [
            {"type": t, "status": "False", "reason": f"KubeletHas{r}", "lastHeartbeatTime": stamp,
             "lastTransitionTime": stamp}
            for t, r in (("MemoryPressure", "SufficientMemory"), ("DiskPressure", "NoDiskPressure"),
                         ("PIDPressure", "SufficientPID"))
        ]  # fmt: skip
        return {
            "status": {
                "capacity": self.capacity,
                "allocatable": self.capacity,
                "conditions": [ready, *pressure],
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": self.node_name}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": self.log_server.port if self.log_server else 0}},
                "nodeInfo": {
                    "machineID": self.node_name, "systemUUID": self.node_name, "bootID": self.node_name,
                    "kernelVersion": os.uname().release, "osImage": "kube-sft test node agent",
                    "containerRuntimeVersion": "local-process://0", "kubeletVersion": "v0.0.0-kube-sft-agent",
                    "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
                },
            }
        }  # fmt: skip

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                self._renew_lease()
                stamp = now()
                conditions = [{"type": "Ready", "status": "True", "lastHeartbeatTime": stamp}]
                self.v1.patch_node_status(self.node_name, {"status": {"conditions": conditions}})
            except Exception as exc:
                log.warning("node heartbeat failed: %s", exc)

    def _renew_lease(self) -> None:
        coord = kubernetes.client.CoordinationV1Api(self.api)
        spec = {"holderIdentity": self.node_name, "leaseDurationSeconds": 40, "renewTime": micro_now()}
        try:
            coord.patch_namespaced_lease(self.node_name, "kube-node-lease", {"spec": spec})
        except ApiException as exc:
            if exc.status != 404:
                raise
            owner = self.v1.read_node(self.node_name)
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": self.node_name,
                    "ownerReferences": [
                        {"apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": owner.metadata.uid}
                    ],
                },
                "spec": spec,
            }
            coord.create_namespaced_lease("kube-node-lease", body)

    # ----- pod watch ------------------------------------------------------------------------

    def _watch_loop(self) -> None:
        selector = f"spec.nodeName={self.node_name}"
        while not self._stop.is_set():
            try:
                pods = self.v1.list_pod_for_all_namespaces(field_selector=selector)
                self._resync(pods.items)
                watcher = kubernetes.watch.Watch()
                for event in watcher.stream(
                    self.v1.list_pod_for_all_namespaces,
                    field_selector=selector,
                    resource_version=pods.metadata.resource_version,
                    timeout_seconds=5,
                ):
                    if self._stop.is_set():
                        watcher.stop()
                        break
                    self._handle(event["type"], event["object"])
            except Exception as exc:
                if not self._stop.is_set():
                    log.warning("pod watch failed (relisting): %s", exc)
                    time.sleep(0.5)

    def _resync(self, pods: list[Any]) -> None:
        live = {p.metadata.uid for p in pods}
        with self._runs_lock:
            gone = [r for uid, r in self.runs.items() if uid not in live and not r.finished]
        for run in gone:
            run.deleting = True
            threading.Thread(target=self._kill, args=(run, MAX_GRACE_SECONDS), daemon=True).start()
        for pod in pods:
            self._handle("MODIFIED", pod)

    def _handle(self, event_type: str, pod: Any) -> None:
        uid = pod.metadata.uid
        with self._runs_lock:
            run = self.runs.get(uid)
        if event_type == "DELETED":
            if run is not None and not run.finished:
                run.deleting = True
                threading.Thread(target=self._kill, args=(run, MAX_GRACE_SECONDS), daemon=True).start()
            return
        if pod.metadata.deletion_timestamp is not None:
            if run is None or not run.deleting:
                self._begin_deletion(pod, run)
            return
        if run is None and pod.status.phase in (None, "Pending"):
            self._start_pod(pod)

    # ----- pod start ------------------------------------------------------------------------

    def _start_pod(self, pod: Any) -> None:
        meta = pod.metadata
        directory = self.workdir / "pods" / f"{meta.namespace}_{meta.name}_{meta.uid[:8]}"
        directory.mkdir(parents=True, exist_ok=True)
        host_network = bool(pod.spec.host_network)
        ip = self.host_ip if host_network else self.ips.reserve(meta.namespace, meta.name)
        run = PodRun(meta.namespace, meta.name, meta.uid, ip, directory, directory / "container.log")
        run.host_network = host_network
        run.hostname = pod.spec.hostname or meta.name
        with self._runs_lock:
            self.runs[meta.uid] = run
        threading.Thread(target=self._run_pod, args=(pod, run), name=f"pod-{meta.name}", daemon=True).start()

    def _run_pod(self, pod: Any, run: PodRun) -> None:
        """Run init containers, then the first container; write every status transition."""
        try:
            mounts = self._until_sources_exist(
                pod, run, "ContainerCreating", lambda: self._materialise_volumes(pod, run)
            )
            for init in pod.spec.init_containers or []:
                code = self._run_container(pod, run, init, mounts, main=False)
                if code != 0 or run.deleting:
                    self._finish(pod, run, code, reason="Error", init_name=init.name)
                    return
            code = self._run_main(pod, run, mounts)
        except DeletedWhileWaitingError:
            return
        except PodStartError as exc:
            log.warning("pod %s/%s cannot start: %s", run.namespace, run.name, exc)
            run.log_path.write_text(f"kube-sft node agent: {exc}\n")
            self._finish(pod, run, 128, reason="StartError", message=str(exc))
            return
        except Exception as exc:
            log.exception("pod %s/%s failed in the agent", run.namespace, run.name)
            self._finish(pod, run, 128, reason="StartError", message=f"node agent error: {exc}")
            return
        if not run.deleting:
            self._finish(pod, run, code)

    def _until_sources_exist(self, pod: Any, run: PodRun, reason: str, prepare: Callable[[], T]) -> T:
        """Retry `prepare` while a ConfigMap/Secret it needs is missing, as the kubelet does (pod stays Pending)."""
        reported = ""
        while True:
            try:
                return prepare()
            except MissingSourceError as exc:
                if str(exc) != reported:
                    reported = str(exc)
                    self._patch_status(run, self._waiting_status(pod, reason, reported))
            except Exception as exc:  # the API server is restarting: the kubelet retries, the pod waits
                if not transient_api_error(exc):
                    raise
                log.warning("pod %s/%s waits for the API server: %s", run.namespace, run.name, exc)
            if run.deleting or self._stop.wait(1.0):
                raise DeletedWhileWaitingError(run.name)

    def _waiting_status(self, pod: Any, reason: str, message: str) -> dict[str, Any]:
        container = pod.spec.containers[0]
        waiting = {"reason": reason, "message": message}
        status = {"name": container.name, "image": container.image or "", "imageID": "", "ready": False,
                  "restartCount": 0, "state": {"waiting": waiting}}  # fmt: skip
        return {"status": {"phase": "Pending", "containerStatuses": [status]}}

    def _run_main(self, pod: Any, run: PodRun, mounts: dict[str, Path]) -> int:
        """Run the first container, restarting it (with back-off) as restartPolicy Always/OnFailure say."""
        policy = pod.spec.restart_policy or "Always"
        while True:
            code = self._run_container(pod, run, pod.spec.containers[0], mounts, main=True)
            restart = policy == "Always" or (policy == "OnFailure" and code != 0)
            if run.deleting or run.finished or not restart:
                return code
            run.restarts += 1
            run.last_exit = {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "finishedAt": now()}
            waiting = {"waiting": {"reason": "CrashLoopBackOff"}, "running": None, "terminated": None}
            self._patch_status(run, self._running_status(pod, run, state=waiting, ready=False))
            if self._stop.wait(min(10.0, 2.0 ** (run.restarts - 1))):
                return code

    def _run_container(self, pod: Any, run: PodRun, container: Any, mounts: dict[str, Path], main: bool) -> int:
        """Start one container's process, mark the pod Running for the main one, and wait for it."""
        if not container.command:
            raise PodStartError(f"container {container.name} has no command (the test node agent ignores images)")
        term_path = run.directory / f"termination-{container.name}"
        term_path.write_bytes(b"")
        run.termination_path = term_path
        term_target = container.termination_message_path or DEFAULT_TERMINATION_PATH
        mount_map = {m.mount_path: self._mount_source(m, mounts) for m in container.volume_mounts or []}
        mount_map[term_target] = term_path
        rewrite = {} if self.real_mounts else mount_map
        env = self._until_sources_exist(
            pod, run, "CreateContainerConfigError", lambda: self._container_env(pod, run, container, mount_map, rewrite)
        )
        argv = [rewrite_paths(expand(a, env), rewrite) for a in [*container.command, *(container.args or [])]]
        cwd = rewrite_paths(container.working_dir, rewrite) if container.working_dir else str(run.directory)
        if self.real_mounts:
            mount_map["/etc/hosts"] = self._hosts_file(pod, run)
            argv = self._in_mount_namespace(run, container, mounts, mount_map, argv, cwd)
            cwd = str(run.directory)
        Path(cwd).mkdir(parents=True, exist_ok=True)
        with run.lock:
            if run.deleting:
                return 137
            with run.log_path.open("ab") as log_file:
                try:
                    run.proc = subprocess.Popen(
                        argv, env=env, cwd=cwd, stdout=log_file, stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent,
                    )  # fmt: skip
                except OSError as exc:
                    raise PodStartError(f"cannot run {argv[0]!r}: {exc}") from exc
            self._connect(run)
            self.ips.mark_active(run.namespace, run.name, True)
        if main:
            run.started_at = now()
            self._patch_status(run, self._running_status(pod, run))
        return self._wait(pod, run)

    def _in_mount_namespace(
        self,
        run: PodRun,
        container: Any,
        volumes: dict[str, Path],
        mount_map: dict[str, Path],
        argv: list[str],
        cwd: str,
    ) -> list[str]:
        """argv that runs the command in a private mount namespace with every volume at its mountPath."""
        read_only = {
            m.mount_path for m in container.volume_mounts or [] if m.read_only or m.name in run.read_only_volumes
        }
        mounts = [[str(src), target, target in read_only] for target, src in mount_map.items()]
        spec_path = run.directory / f"exec-{container.name}.json"
        network = None
        if self.network is not None and not run.host_network:
            run.interfaces = self.network.interface_names()
            network = {"interface": run.interfaces[1], "ip": run.ip, "prefix": str(self.network.prefix),
                       "gateway": self.network.gateway}  # fmt: skip
        hostname = run.hostname if network else None  # own UTS namespace: gethostname() is the pod's
        spec = {"mounts": mounts, "argv": argv, "cwd": cwd, "network": network, "hostname": hostname}
        spec_path.write_text(json.dumps(spec))
        unshare = ["unshare", "--mount", *(["--net", "--uts"] if network else []), "--propagation", "private", "--"]
        return [*unshare, sys.executable, str(POD_EXEC), str(spec_path)]

    def _connect(self, run: PodRun) -> None:
        """Plug the new process's network namespace into the pod network (it waits for its veth)."""
        if self.network is None or run.proc is None or run.host_network:
            return
        try:
            self.network.attach(run.proc.pid, *run.interfaces)
        except subprocess.CalledProcessError as exc:
            kill_group(run.proc.pid, signal.SIGKILL)
            raise PodStartError(f"cannot connect the pod network: {exc.stderr}") from exc

    def _wait(self, pod: Any, run: PodRun) -> int:
        """Wait for the process, enforcing activeDeadlineSeconds; return a kubelet-style exit code."""
        assert run.proc is not None
        deadline = pod.spec.active_deadline_seconds
        try:
            code = run.proc.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            self._kill(run, grace=2)
            self._patch_status(run, {"status": {"phase": "Failed", "reason": "DeadlineExceeded",
                                                "message": f"Pod was active on the node longer than the specified deadline ({deadline}s)"}})  # fmt: skip
            run.deleting = run.finished = True
            return 137
        finally:
            kill_group(run.proc.pid, signal.SIGKILL)  # like a container's cgroup: no process outlives it
            self.ips.mark_active(run.namespace, run.name, False)
        return 128 - code if code < 0 else code

    # ----- env and paths --------------------------------------------------------------------

    def _container_env(
        self, pod: Any, run: PodRun, container: Any, mount_map: dict[str, Path], rewrite: dict[str, Path]
    ) -> dict[str, str]:
        """The process env; paths in values are rewritten by `rewrite` (empty with real mounts)."""
        where = {k: (k if self.real_mounts else str(v)) for k, v in mount_map.items()}
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG" and not k.startswith("KUBERNETES_")}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        host, port = self.server.removeprefix("https://").rsplit(":", 1)
        if self.network is not None:  # /etc/hosts maps it to the bridge, where the API server is forwarded
            host = KUBERNETES_SERVICE_NAME
        env.update({
            "HOSTNAME": pod.spec.hostname or run.name,
            "KUBERNETES_SERVICE_HOST": host,
            "KUBERNETES_SERVICE_PORT": port,
            "KUBERNETES_SERVICE_PORT_HTTPS": port,
            "KUBE_SFT_POD_DIR": str(run.directory),
            "KUBE_SFT_TERMINATION_MESSAGE_PATH": where[container.termination_message_path or DEFAULT_TERMINATION_PATH],
            "KUBE_SFT_MOUNTS": json.dumps(where),
        })  # fmt: skip
        if SA_MOUNT in where:
            env["KUBE_SFT_SERVICEACCOUNT_DIR"] = where[SA_MOUNT]
        for source in container.env_from or []:
            env.update(self._env_from(pod, source))
        for var in container.env or []:
            value = self._env_value(pod, run, container, var)
            if value is not None:
                env[var.name] = rewrite_paths(expand(value, env), rewrite)
        self._resolve_hosts(pod, run, env)
        return env

    def _env_value(self, pod: Any, run: PodRun, container: Any, var: Any) -> str | None:
        if var.value_from is None:
            return None if var.value is None else var.value
        source = var.value_from
        if source.field_ref is not None:
            return self._field(pod, run, source.field_ref.field_path)
        if source.resource_field_ref is not None:
            return resource_value(container, source.resource_field_ref.resource)
        if source.config_map_key_ref is not None:
            ref = source.config_map_key_ref
            data = self._config_map(pod.metadata.namespace, ref.name, bool(ref.optional))
            return data.get(ref.key)
        if source.secret_key_ref is not None:
            ref = source.secret_key_ref
            secret = self._secret(pod.metadata.namespace, ref.name, bool(ref.optional))
            return secret[ref.key].decode() if ref.key in secret else None
        return None

    def _env_from(self, pod: Any, source: Any) -> dict[str, str]:
        prefix = source.prefix or ""
        if source.config_map_ref is not None:
            ref = source.config_map_ref
            return {
                prefix + k: v for k, v in self._config_map(pod.metadata.namespace, ref.name, bool(ref.optional)).items()
            }
        if source.secret_ref is not None:
            ref = source.secret_ref
            data = self._secret(pod.metadata.namespace, ref.name, bool(ref.optional))
            return {prefix + k: v.decode() for k, v in data.items()}
        return {}

    def _field(self, pod: Any, run: PodRun, path: str) -> str:
        meta = pod.metadata
        simple = {
            "metadata.name": meta.name,
            "metadata.namespace": meta.namespace,
            "metadata.uid": meta.uid,
            "spec.nodeName": self.node_name,
            "spec.serviceAccountName": pod.spec.service_account_name or "default",
            "status.podIP": run.ip,
            "status.podIPs": run.ip,
            "status.hostIP": self.host_ip,
            "status.hostIPs": self.host_ip,
        }
        if path in simple:
            return str(simple[path])
        match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if match:
            return str((getattr(meta, match.group(1)) or {}).get(match.group(2), ""))
        if path in ("metadata.labels", "metadata.annotations"):
            items = getattr(meta, path.split(".")[1]) or {}
            return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
        raise PodStartError(f"fieldRef {path} is not supported by the test node agent")

    def _resolve_hosts(self, pod: Any, run: PodRun, env: dict[str, str]) -> None:
        """Replace pod host names in MASTER_ADDR (and KUBE_SFT_TEST_RESOLVE_ENV vars) by pod IPs."""
        namespace = pod.metadata.namespace
        names = [*RESOLVED_ENV, *filter(None, env.get("KUBE_SFT_TEST_RESOLVE_ENV", "").split(","))]
        for name in names:
            value = env.get(name, "")
            if value and not re.fullmatch(r"[\d.]+|localhost", value):
                env[name] = self.ips.reserve(namespace, self._pod_for_hostname(namespace, value.split(".")[0]))
                run.extra_hosts[value] = env[name]
        env["KUBE_SFT_TEST_HOSTS"] = ",".join(f"{h}={ip}" for h, ip in sorted(self.ips.hosts(namespace).items()))

    def _hosts_file(self, pod: Any, run: PodRun) -> Path:
        """An /etc/hosts naming every pod of the namespace (`<hostname>.<subdomain>.<ns>.svc...`) by its IP."""
        namespace = pod.metadata.namespace
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        if self.network is not None:
            names = [
                "kubernetes",
                "kubernetes.default",
                KUBERNETES_SERVICE_NAME,
                f"{KUBERNETES_SERVICE_NAME}.cluster.local",
            ]
            lines.append(f"{self.network.gateway}\t{' '.join(names)}")
        for other in self.v1.list_namespaced_pod(namespace).items:
            mine = other.metadata.uid == pod.metadata.uid
            ip = run.ip if mine else self.ips.reserve(namespace, other.metadata.name)
            lines.append(f"{ip}\t{' '.join(dns_names(other))}")
        lines.extend(f"{ip}\t{name}" for name, ip in run.extra_hosts.items())  # named before the pod exists
        path = run.directory / "hosts"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _pod_for_hostname(self, namespace: str, hostname: str) -> str:
        """The name of the live pod whose spec.hostname is hostname, the newest if several (a restarted
        gang's pod beside its terminating predecessor); else hostname itself (pods are named so)."""
        live = [
            pod
            for pod in self.v1.list_namespaced_pod(namespace).items
            if pod.spec.hostname == hostname and pod.metadata.deletion_timestamp is None
        ]
        if not live:
            return hostname
        return str(max(live, key=lambda pod: pod.metadata.creation_timestamp).metadata.name)

    # ----- volumes --------------------------------------------------------------------------

    def _materialise_volumes(self, pod: Any, run: PodRun) -> dict[str, Path]:
        """Create each volume's local directory (or file tree); return volume name -> local path."""
        paths: dict[str, Path] = {}
        for volume in pod.spec.volumes or []:
            paths[volume.name] = self._volume_path(pod, run, volume)
            if volume.config_map or volume.secret or volume.downward_api or volume.projected:
                run.read_only_volumes.add(volume.name)
        return paths

    def _volume_path(self, pod: Any, run: PodRun, volume: Any) -> Path:
        namespace = pod.metadata.namespace
        if volume.host_path is not None:
            path = Path(volume.host_path.path)
            if volume.host_path.type in ("DirectoryOrCreate", None, ""):
                path.mkdir(parents=True, exist_ok=True)
            return path
        if volume.persistent_volume_claim is not None:
            path = self.workdir / "pvc" / namespace / volume.persistent_volume_claim.claim_name
            path.mkdir(parents=True, exist_ok=True)
            return path
        path = run.directory / "volumes" / volume.name
        path.mkdir(parents=True, exist_ok=True)
        if volume.config_map is not None:
            source = volume.config_map
            data = {k: v.encode() for k, v in self._config_map(namespace, source.name, bool(source.optional)).items()}
            write_items(path, data, source.items)
        elif volume.secret is not None:
            source = volume.secret
            write_items(path, self._secret(namespace, source.secret_name, bool(source.optional)), source.items)
        elif volume.downward_api is not None:
            write_items(path, self._downward(pod, run, volume.downward_api.items), None)
        elif volume.projected is not None:
            for projection in volume.projected.sources or []:
                self._project(pod, run, projection, path)
        return path

    def _project(self, pod: Any, run: PodRun, projection: Any, path: Path) -> None:
        namespace = pod.metadata.namespace
        if projection.service_account_token is not None:
            source = projection.service_account_token
            token = self._pod_token(pod, source.audience, source.expiration_seconds or 3600)
            write_items(path, {source.path: token.encode()}, None)
        elif projection.config_map is not None:
            source = projection.config_map
            data = {k: v.encode() for k, v in self._config_map(namespace, source.name, bool(source.optional)).items()}
            write_items(path, data, source.items)
        elif projection.secret is not None:
            source = projection.secret
            write_items(path, self._secret(namespace, source.name, bool(source.optional)), source.items)
        elif projection.downward_api is not None:
            write_items(path, self._downward(pod, run, projection.downward_api.items), None)

    def _pod_token(self, pod: Any, audience: str | None, expiration: int) -> str:
        """A service-account token bound to this pod, from the TokenRequest API (as the kubelet gets it)."""
        spec: dict[str, Any] = {
            "expirationSeconds": max(expiration, 600),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod.metadata.name, "uid": pod.metadata.uid},
        }
        if audience:
            spec["audiences"] = [audience]
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        account = pod.spec.service_account_name or "default"
        result = self.v1.create_namespaced_service_account_token(account, pod.metadata.namespace, body)
        return str(result.status.token)

    def _downward(self, pod: Any, run: PodRun, items: list[Any] | None) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for item in items or []:
            if item.field_ref is not None:
                out[item.path] = self._field(pod, run, item.field_ref.field_path).encode()
            elif item.resource_field_ref is not None:
                container = container_named(pod, item.resource_field_ref.container_name)
                out[item.path] = resource_value(container, item.resource_field_ref.resource).encode()
        return out

    def _mount_source(self, mount: Any, volumes: dict[str, Path]) -> Path:
        if mount.name not in volumes:
            raise PodStartError(f"volumeMount {mount.name} names no volume")
        base = volumes[mount.name]
        return base / mount.sub_path if mount.sub_path else base

    def _config_map(self, namespace: str, name: str, optional: bool) -> dict[str, str]:
        try:
            return dict(self.v1.read_namespaced_config_map(name, namespace).data or {})
        except ApiException as exc:
            if exc.status == 404 and optional:
                return {}
            raise MissingSourceError(f'configmap "{name}" not found') from exc

    def _secret(self, namespace: str, name: str, optional: bool) -> dict[str, bytes]:
        try:
            data = self.v1.read_namespaced_secret(name, namespace).data or {}
        except ApiException as exc:
            if exc.status == 404 and optional:
                return {}
            raise MissingSourceError(f'secret "{name}" not found') from exc
        return {k: base64.b64decode(v) for k, v in data.items()}

    # ----- status ---------------------------------------------------------------------------

    def _patch_status(self, run: PodRun, body: dict[str, Any], final: bool = False) -> None:
        """Write a pod status; while the API server is unreachable or restarting, try again (as the
        kubelet's status manager re-syncs) until it is written, the pod is gone or the agent stops.
        A non-final status is given up once the pod has finished (the terminal status supersedes it)."""
        delay = 0.25
        while True:
            try:
                self.v1.patch_namespaced_pod_status(run.name, run.namespace, body)
                return
            except Exception as exc:
                if isinstance(exc, ApiException) and exc.status == 404:
                    return
                if not transient_api_error(exc):
                    log.warning("status patch of %s/%s failed: %s", run.namespace, run.name, exc)
                    return
                log.warning("status patch of %s/%s failed (again in %.1fs): %s", run.namespace, run.name, delay, exc)
            if (not final and run.finished) or self._stop.wait(delay):
                return
            delay = min(delay * 2, 4.0)

    def _running_status(
        self, pod: Any, run: PodRun, state: dict[str, Any] | None = None, ready: bool = True
    ) -> dict[str, Any]:
        container = pod.spec.containers[0]
        state = state or {"running": {"startedAt": run.started_at}, "terminated": None, "waiting": None}
        return {
            "status": {
                "phase": "Running",
                "hostIP": self.host_ip,
                "hostIPs": [{"ip": self.host_ip}],
                "podIP": run.ip,
                "podIPs": [{"ip": run.ip}],
                "startTime": run.started_at,
                "conditions": pod_conditions(ready=ready),
                "containerStatuses": [{
                    "name": container.name, "image": container.image or "", "imageID": "",
                    "containerID": f"local-process://{run.proc.pid if run.proc else 0}",
                    "ready": ready, "started": ready, "restartCount": run.restarts,
                    "state": state,
                    "lastState": {"terminated": run.last_exit} if run.last_exit else {},
                }],
            }
        }  # fmt: skip

    def _finish(
        self, pod: Any, run: PodRun, code: int, reason: str | None = None, message: str | None = None,
        init_name: str | None = None,
    ) -> None:  # fmt: skip
        """Write the terminal status: Succeeded for exit 0, else Failed, with exit code and message."""
        container = pod.spec.containers[0]
        reason = reason or ("Completed" if code == 0 else "Error")
        if message is None:
            message = self._termination_message(container, run, code)
        terminated = {"exitCode": code, "reason": reason, "startedAt": run.started_at or now(), "finishedAt": now()}
        if message:
            terminated["message"] = message
        status = {
            "name": container.name, "image": container.image or "", "imageID": "", "ready": False,
            "started": False, "restartCount": run.restarts,
            "state": {"terminated": terminated, "running": None, "waiting": None},
            "lastState": {"terminated": run.last_exit} if run.last_exit else {},
        }  # fmt: skip
        body: dict[str, Any] = {
            "status": {
                "phase": "Succeeded" if code == 0 else "Failed",
                "podIP": run.ip,
                "podIPs": [{"ip": run.ip}],
                "hostIP": self.host_ip,
                "startTime": run.started_at or now(),
                "conditions": pod_conditions(ready=False),
                "containerStatuses": [status],
            }
        }
        if init_name is not None:
            body["status"]["initContainerStatuses"] = [{**status, "name": init_name}]
        run.finished = True
        self._patch_status(run, body, final=True)

    def _termination_message(self, container: Any, run: PodRun, code: int) -> str:
        try:
            message = run.termination_path.read_text(errors="replace")[:MAX_TERMINATION_MESSAGE]
        except OSError:
            message = ""
        if not message and code != 0 and container.termination_message_policy == "FallbackToLogsOnError":
            lines = run.log_path.read_text(errors="replace").splitlines()[-80:] if run.log_path.exists() else []
            message = "\n".join(lines)[-2048:]
        return message

    # ----- deletion -------------------------------------------------------------------------

    def _begin_deletion(self, pod: Any, run: PodRun | None) -> None:
        grace = min(pod.metadata.deletion_grace_period_seconds or 0, MAX_GRACE_SECONDS)
        if run is not None:
            run.deleting = True
        threading.Thread(target=self._delete_pod, args=(pod, run, grace), daemon=True).start()

    def _delete_pod(self, pod: Any, run: PodRun | None, grace: float) -> None:
        if run is not None and not run.finished:
            code = self._kill(run, grace)
            self._finish(pod, run, code, reason="Error" if code else "Completed")
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": pod.metadata.uid}}
        delay = 0.25
        while True:  # retried while the API server is away: else the pod stays Terminating for ever
            try:
                self.v1.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, body=body)
                return
            except Exception as exc:
                if isinstance(exc, ApiException) and exc.status in (404, 409):
                    return
                log.warning("final delete of %s/%s failed: %s", pod.metadata.namespace, pod.metadata.name, exc)
                if not transient_api_error(exc) or self._stop.wait(delay):
                    return
            delay = min(delay * 2, 4.0)

    def _kill(self, run: PodRun, grace: float) -> int:
        """SIGTERM the pod's process group, SIGKILL after grace seconds; return the exit code."""
        with run.lock:
            proc = run.proc
        if proc is None:
            return 137
        if proc.poll() is None:
            kill_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                kill_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        code = proc.returncode
        return 128 - code if code < 0 else code
