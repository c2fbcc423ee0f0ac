"""A pod's containers as local process groups: the node agent's pod lifecycle, start to exit.

Init containers in order, then the first container (restarted in place with back-off as
restartPolicy says), each as a process group: in a private mount namespace with every volume at its
mountPath (pod_exec.py) when the agent may make one, else with mount paths rewritten; plugged into
the pod network when the agent has one; activeDeadlineSeconds enforced; SIGTERM, grace, SIGKILL on
deletion.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from devcluster.pod_env import PodEnv
from devcluster.pod_run import (
    DEFAULT_TERMINATION_PATH,
    DeletedWhileWaitingError,
    MissingSourceError,
    PodRun,
    transient_api_error,
)
from devcluster.pod_spec import PodStartError, expand, now, rewrite_paths
from devcluster.pod_status import PodStatus
from devcluster.procs import die_with_parent, kill_group

log = logging.getLogger("kube_sft.node_agent")
T = TypeVar("T")
POD_EXEC = Path(__file__).with_name("pod_exec.py")


class PodProcesses(PodEnv, PodStatus):
    """Start, run, restart, wait for and kill the processes of the pods bound to the node."""

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
