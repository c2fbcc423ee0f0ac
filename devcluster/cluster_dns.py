"""A tiny cluster DNS for the real test node: the A records CoreDNS would serve, read from the API.

The kubelet points every pod's resolv.conf at it (`clusterDNS`). It answers
    <service>.<namespace>.svc.cluster.local               the Service's cluster IP
    <hostname>.<subdomain>.<namespace>.svc.cluster.local  the newest live pod with that hostname
                                                          and subdomain (a gang's `MASTER_ADDR`)
and NXDOMAIN for everything else (the test pods reach no other network). Only what the pods of
this project look up; pure parsing/encoding functions, one UDP thread.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kubernetes

log = logging.getLogger("kube_sft.cluster_dns")
CLUSTER_DOMAIN = "cluster.local"
TYPE_A, TYPE_AAAA, CLASS_IN = 1, 28, 1
NOERROR, FORMERR, NXDOMAIN = 0, 1, 3
TTL_SECONDS = 2


@dataclass(frozen=True)
class Question:
    """The one question of a DNS query."""

    id: int
    name: str
    qtype: int
    raw: bytes  # the question section as received (echoed in the answer)


def parse_query(packet: bytes) -> Question:
    """The first question of a DNS query packet; ValueError when it is not one."""
    if len(packet) < 12:
        raise ValueError("short DNS header")
    ident, flags, qdcount = struct.unpack("!HHH", packet[:6])
    if flags & 0x8000 or qdcount < 1:
        raise ValueError("not a query")
    labels: list[str] = []
    offset = 12
    while True:
        if offset >= len(packet):
            raise ValueError("truncated name")
        length = packet[offset]
        offset += 1
        if length == 0:
            break
        if length > 63:
            raise ValueError("compressed or bad label in a question")
        labels.append(packet[offset : offset + length].decode("ascii", "replace"))
        offset += length
    if offset + 4 > len(packet):
        raise ValueError("truncated question")
    qtype, _qclass = struct.unpack("!HH", packet[offset : offset + 4])
    return Question(ident, ".".join(labels).lower(), qtype, packet[12 : offset + 4])


def encode_answer(question: Question, addresses: list[str], rcode: int = NOERROR) -> bytes:
    """A response to `question` with one A record per address (none for other types)."""
    answers = [a for a in addresses if question.qtype == TYPE_A]
    header = struct.pack("!HHHHHH", question.id, 0x8400 | 0x0100 | 0x0080 | rcode, 1, len(answers), 0, 0)
    records = b"".join(
        struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, TTL_SECONDS, 4) + ipaddress.IPv4Address(a).packed
        for a in answers
    )
    return header + question.raw + records


def split_cluster_name(name: str, domain: str = CLUSTER_DOMAIN) -> list[str] | None:
    """`a.b.ns.svc.<domain>` -> ["a", "b", "ns"]; None for a name outside the cluster's services."""
    suffix = f".svc.{domain}"
    if not name.endswith(suffix):
        return None
    parts = name[: -len(suffix)].split(".")
    return parts if 2 <= len(parts) <= 3 and all(parts) else None


def newest_live_pod_ip(pods: list[Any], hostname: str, subdomain: str) -> str | None:
    """The pod IP of the newest pod with that hostname and subdomain that is neither deleting nor done."""
    live = [
        p
        for p in pods
        if p.spec.hostname == hostname
        and p.spec.subdomain == subdomain
        and p.status.pod_ip
        and not p.metadata.deletion_timestamp
        and p.status.phase not in ("Succeeded", "Failed")
    ]
    if not live:
        return None
    return str(max(live, key=lambda p: p.metadata.creation_timestamp).status.pod_ip)


class ClusterDNS:
    """A UDP DNS server on host:port answering from the API server. start() / stop()."""

    def __init__(self, api_client: kubernetes.client.ApiClient, host: str, port: int = 53) -> None:
        self.v1 = kubernetes.client.CoreV1Api(api_client)
        self.address = (host, port)
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def resolve(self, name: str) -> list[str] | None:
        """The A records of a cluster name; None when it does not exist."""
        parts = split_cluster_name(name)
        if parts is None:
            return None
        if len(parts) == 2:
            service, namespace = parts
            try:
                found = self.v1.read_namespaced_service(service, namespace)
            except kubernetes.client.ApiException:
                return None
            ip = found.spec.cluster_ip
            return [ip] if ip and ip != "None" else self._pods_of_subdomain(namespace, service)
        hostname, subdomain, namespace = parts
        pods = self.v1.list_namespaced_pod(namespace).items
        ip = newest_live_pod_ip(pods, hostname, subdomain)
        return [ip] if ip else None

    def _pods_of_subdomain(self, namespace: str, subdomain: str) -> list[str] | None:
        pods = self.v1.list_namespaced_pod(namespace).items
        ips = [
            str(p.status.pod_ip)
            for p in pods
            if p.spec.subdomain == subdomain and p.status.pod_ip and not p.metadata.deletion_timestamp
        ]
        return ips or None

    def answer(self, packet: bytes, resolve: Callable[[str], list[str] | None] | None = None) -> bytes | None:
        """The response packet to one query packet (None for garbage)."""
        try:
            question = parse_query(packet)
        except ValueError:
            return None
        try:
            addresses = (resolve or self.resolve)(question.name)
        except Exception as error:  # an API hiccup: the client retries
            log.warning("resolving %s failed: %s", question.name, error)
            return None
        if addresses is None:
            return encode_answer(question, [], NXDOMAIN)
        return encode_answer(question, addresses)

    def start(self) -> ClusterDNS:
        """Bind and serve in a daemon thread."""
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(self.address)
        self._socket.settimeout(0.5)
        self._thread = threading.Thread(target=self._serve, name="cluster-dns", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        assert self._socket is not None
        while not self._stopped.is_set():
            try:
                packet, client = self._socket.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            response = self.answer(packet)
            if response is not None:
                with contextlib.suppress(OSError):
                    self._socket.sendto(response, client)

    def stop(self) -> None:
        """Stop the thread and close the socket."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
