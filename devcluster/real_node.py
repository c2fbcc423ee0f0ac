"""A real node for the test cluster: kubelet + containerd + runc + a CNI bridge, in namespaces of its own.

    node = RealNode(cluster, workdir, images=[archive, ...]).start()   # Ready, images imported
    node.logs(namespace, pod); node.kill(namespace, pod); node.all_logs(); node.stop()

How it fits on a shared test machine without leaving anything behind (issue 17):
- the node is one process tree started with `unshare --mount --pid --net --fork --kill-child`
  (node_script.sh is its PID 1): tmpfs over /run, /var/lib and /var/log, the host-wide sysctls the
  kubelet writes bind-mounted over by files, its own network namespace; the daemons' data
  (containerd's root, the kubelet's root, pod logs, IPAM leases) in `workdir`;
- the link to the host is a veth pair (host end `ksftn<k>` 10.202.k.1, node end 10.202.k.2); pods
  get 10.201.k.0/24 on the node's CNI bridge, routed from the host, so tests and Prometheus reach
  pod IPs; the API server (127.0.0.1 only) is forwarded on 10.202.k.1 and the `kubernetes` Service's
  cluster IP is DNATed to it inside the node; cluster_dns.py on 10.202.k.1:53 answers pod names;
- stop(): SIGTERM to the node's PID 1 (the kubelet, then containerd stop; the kernel kills every
  other process of the namespace: shims, containers), which takes every mount and network device with
  it; then the cgroups under the kubelet's `cgroupRoot` are removed and the Node object deleted.
`leftovers()` lists anything of this node's still on the host (tests/integration/test_real_node.py checks it is empty).

Cold set-up (binaries, pause image) is `make node-bins` (hack/node/build.sh); the project images are
hack/images/build.sh's docker-archives, imported into the node's containerd at start.

This module is the node's lifecycle (start, stop, leftovers) and what tests read from it (logs,
kill). Its parts: node_images.py (binaries and images, the golden containerd root), node_config.py
(the daemons' config files), node_cgroups.py (the kubelet's cgroupRoot).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import kubernetes
import yaml
from kubernetes.client import ApiException

from devcluster.certs import sign
from devcluster.cluster_dns import ClusterDNS
from devcluster.controlplane import ControlPlane, kubeconfig_dict
from devcluster.local_volumes import LocalVolumeProvisioner
from devcluster.node_cgroups import cgroup_dirs, make_cgroups, remove_cgroups, sweep_stale_cgroups
from devcluster.node_config import cni_config, containerd_config, kubelet_config
from devcluster.node_images import NodeBinaries, find_node_binaries, golden_root
from devcluster.pod_network import _Forwarder, _wait_for_own_netns
from devcluster.procs import ManagedProcess, log_tail, wait_until

NODE_SCRIPT = Path(__file__).with_name("node_script.sh")
API_SERVICE_IP = "10.0.0.1"
K8S_NAMESPACE = "k8s.io"  # containerd's namespace of the CRI
# Host-wide sysctls the kubelet writes at start; node_script.sh bind-mounts files over them.
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)


def free_node_index() -> int:
    """A k whose 10.201.k.0/24 and 10.202.k.0/24 subnets and `ksftn<k>` link are unused here."""
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True, check=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    start = os.getpid() % 200
    for offset in range(200):
        k = 20 + (start + offset) % 200
        if f"10.201.{k}." not in routes and f"10.202.{k}." not in routes and f" ksftn{k}:" not in links:
            return k
    raise RuntimeError("no free 10.201.k.0/24 subnet for a real node")


def parse_cri_log(text: str) -> str:
    """The container output of a CRI log file (`<time> <stream> <P|F> <text>` lines)."""
    out: list[str] = []
    for line in text.splitlines():
        parts = line.split(" ", 3)
        if len(parts) < 3:
            continue
        content = parts[3] if len(parts) == 4 else ""
        out.append(content if parts[2] == "P" else content + "\n")
    return "".join(out)


class RealNode:
    """One real node (kubelet + containerd) registered with `cluster`. start() / stop()."""

    def __init__(
        self,
        cluster: ControlPlane,
        workdir: Path,
        images: Sequence[Path] = (),
        node_name: str = "kube-sft-real-node-0",  # never a node agent's name (kube-sft-node-<n>)
        binaries: NodeBinaries | None = None,
    ) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.images = list(images)
        self.node_name = node_name
        self.binaries = binaries or find_node_binaries()
        sweep_stale_cgroups()
        self.index = free_node_index()
        self.link = f"ksftn{self.index}"
        self.host_ip = f"10.202.{self.index}.1"
        self.node_ip = f"10.202.{self.index}.2"
        self.pod_cidr = f"10.201.{self.index}.0/24"
        self.cgroup_name = f"kube-sft-node-{os.getpid()}-{self.index}"
        self.v1 = kubernetes.client.CoreV1Api(cluster.client)
        self.process: ManagedProcess | None = None
        self.started_in = 0.0
        self._forwarder: _Forwarder | None = None
        self._dns: ClusterDNS | None = None
        self._volumes: LocalVolumeProvisioner | None = None
        self._keeper: threading.Thread | None = None
        self._stop = threading.Event()
        self._host_sysctls = {name: Path(f"/proc/sys/{name}").read_text() for name in KUBELET_SYSCTLS}

    # ----- lifecycle ------------------------------------------------------------------------

    def start(self, timeout: float = 120) -> RealNode:
        """Start containerd, import the images, start the kubelet; return once the Node is Ready."""
        t0 = time.monotonic()
        for sub in ("logs", "sysctl", "cni", "cni-ipam", "pod-logs", "kept-logs", "kubelet", "kubelet-pki"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        self._write_configs()
        self._link_golden_root()
        make_cgroups(self.cgroup_name)
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "NODE_DIR": str(self.workdir),
            "NODE_NAME": self.node_name,
            "NODE_IP": self.node_ip,
            "NODE_HOST_IP": self.host_ip,
            "NODE_POD_CIDR": self.pod_cidr,
            "NODE_API_SERVICE_IP": API_SERVICE_IP,
            "NODE_API_PORT": self.cluster.server.rsplit(":", 1)[1],
            "NODE_CONTAINERD": str(self.binaries.containerd),
            "NODE_KUBELET": str(self.binaries.kubelet),
        }
        argv = [
            "unshare",
            "--mount",
            "--pid",
            "--net",
            "--fork",
            "--mount-proc",
            "--kill-child",
            "bash",
            str(NODE_SCRIPT),
        ]
        self.process = ManagedProcess("node", argv, self.workdir / "logs", env=env)
        try:
            self._connect_network()
            self._dns = ClusterDNS(self.cluster.api_client(), self.host_ip).start()
            self._wait_file("containerd.ready", 60, "containerd")
            self._volumes = LocalVolumeProvisioner(self.cluster.client, self.workdir / "pvc").start()
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        self._keeper = threading.Thread(target=self._keep_logs_loop, name="real-node-logs", daemon=True)
        self._keeper.start()
        self.started_in = time.monotonic() - t0
        return self

    def _write_configs(self) -> None:
        kubelet_cert = sign(
            self.cluster.pki.ca, self.workdir / "kubelet-pki", "node-client",
            f"/O=system:nodes/CN=system:node:{self.node_name}", ["extendedKeyUsage=clientAuth"],
        )  # fmt: skip
        user = {"client-certificate": str(kubelet_cert.cert), "client-key": str(kubelet_cert.key)}
        # The node has its own network: the API server is the `kubernetes` Service's address there
        # (node_script.sh DNATs it to the forwarder), which the serving certificate names.
        config = kubeconfig_dict(f"https://{API_SERVICE_IP}:443", self.cluster.pki.ca.cert, user)
        (self.workdir / "kubelet.kubeconfig").write_text(yaml.safe_dump(config))
        (self.workdir / "kubelet.yaml").write_text(yaml.safe_dump(kubelet_config(self)))
        (self.workdir / "resolv.conf").write_text(f"nameserver {self.host_ip}\n")
        (self.workdir / "containerd.toml").write_text(
            containerd_config(self.workdir, self.binaries.cni_dir, self.binaries.pause_image)
        )
        cni = cni_config(f"cni{self.index}", self.pod_cidr, self.workdir / "cni-ipam")
        (self.workdir / "cni" / "10-kube-sft.conflist").write_text(json.dumps(cni, indent=1))

    def _connect_network(self) -> None:
        assert self.process is not None
        _wait_for_own_netns(self.process.proc.pid)
        ip = ["ip"]
        subprocess.run([*ip, "link", "add", self.link, "type", "veth", "peer", "name", "eth0", "netns",
                        str(self.process.proc.pid)], check=True, capture_output=True)  # fmt: skip
        subprocess.run([*ip, "addr", "add", f"{self.host_ip}/24", "dev", self.link], check=True, capture_output=True)
        subprocess.run([*ip, "link", "set", self.link, "up"], check=True, capture_output=True)
        subprocess.run([*ip, "route", "add", self.pod_cidr, "via", self.node_ip], check=True, capture_output=True)
        self._forwarder = _Forwarder(self.host_ip, int(self.cluster.server.rsplit(":", 1)[1]))

    def _wait_file(self, name: str, timeout: float, what: str) -> None:
        assert self.process is not None
        process = self.process
        wait_until(lambda: process.check_alive() or (self.workdir / name).exists(), timeout, what, interval=0.1)

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `ctr` against this node's containerd (namespace k8s.io)."""
        argv = [str(self.binaries.ctr), "--address", str(self.workdir / "containerd.sock"), "-n", K8S_NAMESPACE, *args]
        return subprocess.run(argv, capture_output=True, text=True, check=check)

    def _link_golden_root(self) -> None:
        """containerd's root with the images already imported: hard links to the golden root."""
        golden = golden_root(self.binaries, [self.binaries.pause_archive, *self.images])
        target = self.workdir / "containerd"
        if subprocess.run(["cp", "-al", str(golden), str(target)], capture_output=True, check=False).returncode:
            shutil.rmtree(target, ignore_errors=True)  # another file system: copies
            subprocess.run(["cp", "-a", str(golden), str(target)], check=True, capture_output=True)
        # The bolt databases change while containerd runs: real copies, never links.
        for database in target.rglob("*.db"):
            copy = database.with_suffix(".copy")
            shutil.copyfile(database, copy)
            copy.replace(database)

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        process = self.process

        def ready() -> bool:
            process.check_alive()
            node = self.v1.read_node(self.node_name)
            conditions = node.status.conditions or []
            return not node.spec.taints and any(c.type == "Ready" and c.status == "True" for c in conditions)

        try:
            wait_until(ready, timeout, f"node {self.node_name} Ready without taints", interval=0.5)
        except (TimeoutError, RuntimeError) as error:
            kubelet = log_tail(self.workdir / "logs" / "kubelet.log", 30)
            raise RuntimeError(f"{error}\n--- kubelet.log ---\n{kubelet}") from None

    def stop(self) -> None:
        """Stop the node (SIGTERM to its PID 1), remove its cgroups and delete the Node object."""
        self._stop.set()
        if self._keeper is not None:
            self._keeper.join(timeout=5)
            self._keep_logs()
        if self.process is not None:
            self.process.stop(grace=30)
        for service in (self._volumes, self._dns, self._forwarder):
            if service is not None:
                with contextlib.suppress(Exception):
                    service.stop() if not isinstance(service, _Forwarder) else service.close()
        remove_cgroups(self.cgroup_name)
        with contextlib.suppress(ApiException):
            self.v1.delete_node(self.node_name)

    def leftovers(self) -> list[str]:
        """What of this node is still on the host: processes, mounts, links, routes, cgroups, sysctls."""
        found: list[str] = []
        marker = str(self.workdir)
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if marker in cmdline:
                    found.append(f"process {pid}: {cmdline[:200]}")
        for line in (
            Path("/proc/1/mountinfo").read_text().splitlines() + Path("/proc/self/mountinfo").read_text().splitlines()
        ):
            if marker in line or self.cgroup_name in line:
                found.append(f"mount: {line}")
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=False).stdout
        found += [
            f"link: {line}" for line in links.splitlines() if f" {self.link}" in line or f" cni{self.index}:" in line
        ]
        routes = subprocess.run(["ip", "route"], capture_output=True, text=True, check=False).stdout
        found += [f"route: {line}" for line in routes.splitlines() if f"10.201.{self.index}." in line]
        found += [f"cgroup: {path}" for path in cgroup_dirs(self.cgroup_name)]
        for name, value in self._host_sysctls.items():
            now = Path(f"/proc/sys/{name}").read_text()
            if now != value:
                found.append(f"sysctl {name}: {value.strip()} -> {now.strip()}")
        return found

    # ----- what tests use (as the node agent offered) ----------------------------------------

    def _pod_log_dirs(self, namespace: str, name: str) -> list[Path]:
        dirs: list[Path] = []
        for root in (self.workdir / "pod-logs", self.workdir / "kept-logs"):
            dirs += sorted(root.glob(f"{namespace}_{name}_*"))
        return dirs

    def logs(self, namespace: str, name: str) -> str:
        """The pod's containers' output (every container and restart, oldest first), kept after deletion."""
        texts: dict[str, str] = {}
        for directory in self._pod_log_dirs(namespace, name):
            for path in sorted(directory.glob("*/*.log"), key=_log_order):
                key = f"{directory.name}/{path.parent.name}/{path.name}"
                with contextlib.suppress(OSError):
                    texts[key] = parse_cri_log(path.read_text(errors="replace"))
        return "".join(texts.values())

    def all_logs(self) -> str:
        """Every container output of this node's pods, concatenated (for secret-leak checks)."""
        self._keep_logs()
        names = {tuple(d.name.split("_")[:2]) for d in (self.workdir / "kept-logs").iterdir()}
        return "\n".join(self.logs(namespace, name) for namespace, name in sorted(names))

    def container_id(self, namespace: str, name: str) -> str:
        """The containerd ID of the pod's first running container."""
        pod = self.v1.read_namespaced_pod(name, namespace)
        for status in pod.status.container_statuses or []:
            if status.container_id and status.state and status.state.running:
                return str(status.container_id).split("://", 1)[1]
        raise LookupError(f"pod {namespace}/{name} has no running container on {self.node_name}")

    def kill(self, namespace: str, name: str, sig: signal.Signals = signal.SIGKILL) -> int:
        """Chaos: signal the pod's container (as if it crashed); returns its PID in the node.

        With restartPolicy Never the pod ends Failed (exit code 128+sig); otherwise the kubelet
        restarts the container in place.
        """
        container = self.container_id(namespace, name)
        tasks = self.ctr("tasks", "ls").stdout
        pid = next((int(line.split()[1]) for line in tasks.splitlines() if line.startswith(container)), 0)
        self.ctr("tasks", "kill", "--signal", sig.name, container)
        return pid

    def _keep_logs_loop(self) -> None:
        while not self._stop.wait(1.0):
            with contextlib.suppress(OSError):
                self._keep_logs()

    def _keep_logs(self) -> None:
        """Copy the kubelet's pod logs (deleted with their pod) into kept-logs/."""
        source = self.workdir / "pod-logs"
        for path in source.glob("*/*/*.log"):
            target = self.workdir / "kept-logs" / path.relative_to(source)
            with contextlib.suppress(OSError):
                if not target.exists() or target.stat().st_size != path.stat().st_size:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, target)


def _log_order(path: Path) -> tuple[str, int]:
    stem = path.name.split(".", 1)[0]
    return path.parent.name, int(stem) if stem.isdigit() else 0
