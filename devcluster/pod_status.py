"""The pod status the node agent writes: Pending (waiting) -> Running -> Succeeded / Failed.

Status bodies follow the kubelet's (containerStatuses with state, lastState and restartCount; the
terminated message from the container's terminationMessagePath file, or the log tail with
FallbackToLogsOnError). A write is retried while the API server is away, as the kubelet's status
manager re-syncs.
"""

from __future__ import annotations

import logging
from typing import Any

from kubernetes.client import ApiException

from devcluster.pod_run import AgentState, PodRun, transient_api_error
from devcluster.pod_spec import now, pod_conditions

log = logging.getLogger("kube_sft.node_agent")
MAX_TERMINATION_MESSAGE = 4096


class PodStatus(AgentState):
    """Status bodies of a pod and their writing."""

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

    def _waiting_status(self, pod: Any, reason: str, message: str) -> dict[str, Any]:
        container = pod.spec.containers[0]
        waiting = {"reason": reason, "message": message}
        status = {"name": container.name, "image": container.image or "", "imageID": "", "ready": False,
                  "restartCount": 0, "state": {"waiting": waiting}}  # fmt: skip
        return {"status": {"phase": "Pending", "containerStatuses": [status]}}
