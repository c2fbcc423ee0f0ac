"""A test-only node agent: a small kubelet stand-in that runs each pod bound to its node as a local process.

This module is the agent itself: the Node (registration, Lease, heartbeat), the pod watch and pod
deletion. The pods' parts are classes by role over one state (pod_run.py): pod_sources.py
(volumes), pod_env.py (env, /etc/hosts), pod_status.py (status writes), pod_process.py (processes).

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

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client import ApiException

from devcluster.local_volumes import LocalVolumeProvisioner
from devcluster.log_server import LogServer
from devcluster.pod_network import PodNetwork, network_namespaces_work, release_shared, shared_network
from devcluster.pod_process import PodProcesses
from devcluster.pod_run import MAX_GRACE_SECONDS, PodRun, transient_api_error
from devcluster.pod_spec import ALLOCATOR, allocator_for, micro_now, now
from devcluster.procs import kill_group

log = logging.getLogger("kube_sft.node_agent")


def mount_namespaces_work() -> bool:
    """True if this process may make private mount namespaces with bind mounts (root, util-linux unshare)."""
    if os.environ.get("KUBE_SFT_AGENT_REAL_MOUNTS") == "0" or shutil.which("unshare") is None:
        return False
    with tempfile.TemporaryDirectory() as target:
        probe = ["unshare", "--mount", "--propagation", "private", "--", "mount", "--bind", "/", target]
        return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0


class NodeAgent(PodProcesses):
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
