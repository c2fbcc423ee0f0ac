"""Pod networking for the node agent: one network namespace per pod on a private bridge.

As root, every pod of this test session gets its own network namespace (so two pods may both bind
0.0.0.0:8080, as on a real cluster), a veth pair onto the bridge `ksft<k>`, and an IP in
10.200.<k>.0/24 (the bridge is 10.200.<k>.1; k is chosen free per session). The host reaches pods
directly through the bridge (Prometheus scrapes pod IPs); pods reach each other over it; the API
server, which listens on 127.0.0.1 only, is reachable from pods as `kubernetes.default.svc:<port>`
(written into each pod's /etc/hosts as the bridge address) through a small TCP forwarder on
10.200.<k>.1:<port> -> 127.0.0.1:<port>. Nothing is routed or NATed further: pods reach no other
network. One network serves every agent of the process (2-node jobs across agents talk).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import shutil
import socket
import subprocess
import threading
import time

log = logging.getLogger("kube_sft.pod_network")
SUBNET_PREFIX = "10.200"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def network_namespaces_work() -> bool:
    """True if this process may create bridges, veths and network namespaces (root with iproute2)."""
    if os.environ.get("KUBE_SFT_AGENT_NETNS") == "0" or shutil.which("ip") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "--net", "--", "ip", "link", "set", "lo", "up"], capture_output=True)
    return probe.returncode == 0


class PodNetwork:
    """The bridge, the pod address pool and the API-server forwarders of one test session."""

    def __init__(self) -> None:
        self.index = self._free_index()
        self.bridge = f"ksft{self.index}"
        self.gateway = f"{SUBNET_PREFIX}.{self.index}.1"
        self.prefix = 24
        self._interfaces = itertools.count(1)
        self._forwarders: list[_Forwarder] = []
        self._users = 0
        self._lock = threading.Lock()
        _delete_stray_pod_ends()
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/{self.prefix}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    @staticmethod
    def _free_index() -> int:
        """A k whose bridge name and 10.200.k.0/24 subnet are unused on this machine."""
        routes = _ip("route").stdout
        start = os.getpid() % 200
        for offset in range(200):
            k = 20 + (start + offset) % 200
            if f"{SUBNET_PREFIX}.{k}." not in routes and _ip("link", "show", f"ksft{k}", check=False).returncode != 0:
                return k
        raise RuntimeError("no free 10.200.k.0/24 subnet for the pod network")

    def address_prefix(self) -> str:
        """The pod IPs' common prefix ("10.200.k.")."""
        return f"{SUBNET_PREFIX}.{self.index}."

    def interface_names(self) -> tuple[str, str]:
        """A fresh (host side, pod side) veth name pair, at most 15 characters each."""
        number = next(self._interfaces)
        return f"ks{self.index}h{number}", f"ks{self.index}p{number}"

    def attach(self, pid: int, host_side: str, pod_side: str) -> None:
        """Create the veth pair, plug the host end in the bridge, then move the other end into the network
        namespace of pid. In this order the pod's process starts (it waits for its end) only once the
        network is whole, so a pod that exits at once cannot take the veth pair with it while it is
        still being plugged in (seen under load: "Cannot find device ks<k>h<n>", the pod Failed)."""
        _wait_for_own_netns(pid)
        _ip("link", "add", host_side, "type", "veth", "peer", "name", pod_side)
        try:
            _ip("link", "set", host_side, "master", self.bridge, "up")
            _ip("link", "set", pod_side, "netns", str(pid))
        except subprocess.CalledProcessError:
            _ip("link", "del", host_side, check=False)
            raise

    def forward(self, port: int) -> None:
        """Make 127.0.0.1:port reachable from pods at gateway:port (once per port)."""
        with self._lock:
            if any(f.port == port for f in self._forwarders):
                return
            self._forwarders.append(_Forwarder(self.gateway, port))

    def acquire(self) -> PodNetwork:
        """Count one more agent using this network."""
        with self._lock:
            self._users += 1
        return self

    def release(self) -> bool:
        """One agent less; tear everything down with the last. True when torn down."""
        with self._lock:
            self._users -= 1
            if self._users > 0:
                return False
        for forwarder in self._forwarders:
            forwarder.close()
        _ip("link", "del", self.bridge, check=False)
        return True


def _delete_stray_pod_ends() -> None:
    """Delete pod-side veth ends (`ks<k>p<n>`) found in the host namespace: leaks of a crashed session."""
    for line in _ip("-o", "link", "show").stdout.splitlines():
        match = re.match(r"\d+: (ks\d+p\d+)@", line)
        if match:
            _ip("link", "del", match.group(1), check=False)


def _wait_for_own_netns(pid: int, timeout: float = 10.0) -> None:
    """Wait until `unshare` (pid) has entered its new network namespace: moving the veth earlier would
    leave it in the host's namespace."""
    host = os.readlink("/proc/self/ns/net")
    deadline = time.monotonic() + timeout
    while os.readlink(f"/proc/{pid}/ns/net") == host:
        if time.monotonic() > deadline:
            raise subprocess.CalledProcessError(1, ["unshare", "--net"], "", f"pid {pid} never left the host netns")
        time.sleep(0.005)


class _Forwarder:
    """A threaded TCP relay: listen on host:port, connect each client to 127.0.0.1:port."""

    def __init__(self, host: str, port: int) -> None:
        self.port = port
        self._server = socket.create_server((host, port), reuse_port=False)
        self._closed = False
        threading.Thread(target=self._accept, name=f"forward-{port}", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(src, dst), daemon=True).start()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._server.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)
    with contextlib.suppress(OSError):
        src.close()


_SHARED: PodNetwork | None = None
_SHARED_LOCK = threading.Lock()


def shared_network() -> PodNetwork:
    """The process-wide pod network, created on first use (each call acquires one reference)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = PodNetwork()
        return _SHARED.acquire()


def release_shared(network: PodNetwork) -> None:
    """Release one reference; the last one deletes the bridge."""
    global _SHARED
    with _SHARED_LOCK:
        if network.release() and _SHARED is network:
            _SHARED = None
