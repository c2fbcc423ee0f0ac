"""Pure pieces of the node agent: pod IP pools, env expansion, path rewriting, status fragments."""

from __future__ import annotations

import os
import re
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


class PodStartError(Exception):
    """The pod cannot be started (missing command, unsupported field, binary...)."""


def now() -> str:
    """RFC 3339 time, as the API stores it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    """MicroTime, as Lease.spec.renewTime needs."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class IPAllocator:
    """Hands out <prefix>2-254 (127.0.0.x or 10.200.k.x), one per (namespace, pod name), per process.

    The first address depends on the PID, so two test sessions on one machine rarely hand out the same one.
    """

    def __init__(self, prefix: str = "127.0.0.") -> None:
        self.prefix = prefix
        self._lock = threading.Lock()
        self._by_pod: dict[tuple[str, str], str] = {}
        self._active: set[tuple[str, str]] = set()

    def reserve(self, namespace: str, name: str) -> str:
        """The address of pod namespace/name, reserving a free one on first use."""
        with self._lock:
            key = (namespace, name)
            if key not in self._by_pod:
                self._by_pod[key] = self._free_address()
            return self._by_pod[key]

    def mark_active(self, namespace: str, name: str, active: bool) -> None:
        """Record whether a process of this pod runs (inactive reservations may be recycled)."""
        with self._lock:
            (self._active.add if active else self._active.discard)((namespace, name))

    def hosts(self, namespace: str) -> dict[str, str]:
        """Pod name -> address for one namespace."""
        with self._lock:
            return {name: ip for (ns, name), ip in self._by_pod.items() if ns == namespace}

    def _free_address(self) -> str:
        used = set(self._by_pod.values())
        first = os.getpid() % 253  # start elsewhere than a concurrent test session on this machine
        for index in range(253):
            candidate = f"{self.prefix}{2 + (first + index) % 253}"
            if candidate not in used:
                return candidate
        for key in [k for k in self._by_pod if k not in self._active]:
            del self._by_pod[key]
        if len(self._by_pod) >= 253:
            raise RuntimeError(f"all 253 pod addresses {self.prefix}2-254 are in use")
        return self._free_address()


ALLOCATOR = IPAllocator()  # 127.0.0.x pod IPs when pods share the host network
_ALLOCATORS: dict[str, IPAllocator] = {ALLOCATOR.prefix: ALLOCATOR}


def allocator_for(prefix: str) -> IPAllocator:
    """The process-wide allocator of one address prefix."""
    return _ALLOCATORS.setdefault(prefix, IPAllocator(prefix))


def pod_conditions(ready: bool) -> list[dict[str, Any]]:
    stamp = now()
    flag = "True" if ready else "False"
    return [
        {"type": "Initialized", "status": "True", "lastTransitionTime": stamp},
        {"type": "ContainersReady", "status": flag, "lastTransitionTime": stamp},
        {"type": "Ready", "status": flag, "lastTransitionTime": stamp},
    ]


def dns_names(pod: Any) -> list[str]:
    """The names cluster DNS would give a pod: `<hostname>.<subdomain>.<ns>.svc.cluster.local` and shorter."""
    hostname = pod.spec.hostname or pod.metadata.name
    if not pod.spec.subdomain:
        return [hostname]
    base = f"{hostname}.{pod.spec.subdomain}"
    namespace = pod.metadata.namespace
    return [f"{base}.{namespace}.svc.cluster.local", f"{base}.{namespace}.svc", f"{base}.{namespace}", base, hostname]


def write_items(directory: Path, data: dict[str, bytes], items: list[Any] | None) -> None:
    """Write key files into directory; `items` (key -> path) selects and renames like the kubelet."""
    selected = {item.path: data[item.key] for item in items if item.key in data} if items else data
    for relative, content in selected.items():
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)


def container_named(pod: Any, name: str | None) -> Any:
    for container in pod.spec.containers:
        if name in (None, "", container.name):
            return container
    raise PodStartError(f"no container {name}")


def resource_value(container: Any, resource: str) -> str:
    """limits.cpu / requests.memory ... of a container, as the downward API would give (cpu rounded up)."""
    kind, _, name = resource.partition(".")
    section = getattr(container.resources, kind, None) if container.resources else None
    value = str((section or {}).get(name, "0"))
    if name == "cpu" and value.endswith("m"):
        return str(max(1, -(-int(value[:-1]) // 1000)))
    return value


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion; $$(VAR) escapes it; unknown references stay as written."""

    def replace(match: re.Match[str]) -> str:
        escaped, name = match.group(1), match.group(2)
        if escaped is not None:
            return f"$({escaped})"
        return env.get(name, match.group(0))

    return re.sub(r"\$\$\(([A-Za-z_][\w.-]*)\)|\$\(([A-Za-z_][\w.-]*)\)", replace, value)


def rewrite_paths(value: str, mounts: dict[str, Path]) -> str:
    """Replace each mount path (longest first) where it starts a path inside value by its local path."""
    for mount_path in sorted(mounts, key=len, reverse=True):
        pattern = r"(?:^|(?<=[=:,\s\"']))" + re.escape(mount_path.rstrip("/")) + r"(?=/|$|[\s,:;\"'])"
        value = re.sub(pattern, str(mounts[mount_path]).replace("\\", "\\\\"), value)
    return value
