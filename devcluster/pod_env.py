"""A container's environment as the node agent builds it, and the pod's /etc/hosts: pod spec -> process env.

The kubelet's env sources (value, fieldRef, resourceFieldRef, configMapKeyRef, secretKeyRef,
envFrom, `$(VAR)` expansion), KUBERNETES_SERVICE_HOST/PORT, the agent's own KUBE_SFT_* variables
(node_agent.py's docstring lists them), and pod host names in MASTER_ADDR replaced by the pod IP the
agent reserves for that host name.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from devcluster.pod_run import DEFAULT_TERMINATION_PATH, KUBERNETES_SERVICE_NAME, SA_MOUNT, PodRun
from devcluster.pod_sources import PodSources
from devcluster.pod_spec import dns_names, expand, resource_value, rewrite_paths

RESOLVED_ENV = ("MASTER_ADDR",)


class PodEnv(PodSources):
    """The env and /etc/hosts of a pod's containers."""

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
