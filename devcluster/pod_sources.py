"""The files behind a pod's volumes, as the node agent lays them out: one job, pod spec -> local paths.

Each volume becomes a local directory (hostPath and PersistentVolumeClaims as their own directory,
everything else under `<pod dir>/volumes/<name>`) filled from its source: ConfigMaps and Secrets
read from the API (a missing one raises `MissingSourceError`, and the agent waits, as the kubelet
does), the downward API, and service-account tokens from the TokenRequest API, bound to the pod.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

from kubernetes.client import ApiException

from devcluster.pod_run import AgentState, MissingSourceError, PodRun
from devcluster.pod_spec import PodStartError, container_named, resource_value, write_items


class PodSources(AgentState):
    """Volumes and the API objects behind them (ConfigMaps, Secrets, tokens, the pod's own fields)."""

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
        if volume.projected is not None:
            for projection in volume.projected.sources or []:
                self._write_source(pod, run, projection, path)
        else:
            self._write_source(pod, run, volume, path)
        return path

    def _write_source(self, pod: Any, run: PodRun, source: Any, path: Path) -> None:
        """Write one source's files into path: a configMap, secret or downwardAPI volume, or one source
        of a projected volume (those, or a serviceAccountToken). A secret volume names its Secret
        `secretName`, a projected one `name`."""
        namespace = pod.metadata.namespace
        token = getattr(source, "service_account_token", None)  # only in a projection
        if token is not None:
            value = self._pod_token(pod, token.audience, token.expiration_seconds or 3600)
            write_items(path, {token.path: value.encode()}, None)
        elif source.config_map is not None:
            ref = source.config_map
            data = {k: v.encode() for k, v in self._config_map(namespace, ref.name, bool(ref.optional)).items()}
            write_items(path, data, ref.items)
        elif source.secret is not None:
            ref = source.secret
            name = ref.secret_name if hasattr(ref, "secret_name") else ref.name
            write_items(path, self._secret(namespace, name, bool(ref.optional)), ref.items)
        elif source.downward_api is not None:
            write_items(path, self._downward(pod, run, source.downward_api.items), None)

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
