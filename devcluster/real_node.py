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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
import yaml
from kubernetes.client import ApiException

from devcluster.binaries import REPO_ROOT, cache_dir, pinned_versions
from devcluster.certs import sign
from devcluster.cluster_dns import ClusterDNS
from devcluster.controlplane import ControlPlane, kubeconfig_dict
from devcluster.local_volumes import LocalVolumeProvisioner
from devcluster.pod_network import _Forwarder, _wait_for_own_netns
from devcluster.procs import ManagedProcess, log_tail, wait_until

log = logging.getLogger("kube_sft.real_node")
NODE_VERSIONS = REPO_ROOT / "hack" / "node" / "versions.env"
NODE_SCRIPT = Path(__file__).with_name("node_script.sh")
API_SERVICE_IP = "10.0.0.1"
K8S_NAMESPACE = "k8s.io"  # containerd's namespace of the CRI
HINT = "run `make node-bins` (hack/node/build.sh) to build and cache them"
# Host-wide sysctls the kubelet writes at start; node_script.sh bind-mounts files over them.
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)


class MissingNodeBinariesError(RuntimeError):
    """kubelet, containerd, ctr, runc, the CNI plugins or the pause image are not there yet."""


@dataclass(frozen=True)
class NodeBinaries:
    """Everything a real node runs, from the cache and Debian's packages."""

    kubelet: Path
    containerd: Path
    ctr: Path
    cni_dir: Path
    pause_archive: Path
    pause_image: str


def _env_file(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            pins[key] = value.strip('"')
    return pins


def find_node_binaries() -> NodeBinaries:
    """The node's binaries; raises MissingNodeBinariesError (run `make node-bins`) when one is missing."""
    pins = _env_file(NODE_VERSIONS)
    k8s = pinned_versions()["K8S_VERSION"]
    binaries = NodeBinaries(
        kubelet=cache_dir() / "bin" / k8s / "kubelet",
        containerd=cache_dir() / "bin" / f"containerd-{pins['CONTAINERD_VERSION']}" / "containerd",
        ctr=cache_dir() / "bin" / f"containerd-{pins['CONTAINERD_VERSION']}" / "ctr",
        cni_dir=Path("/usr/lib/cni"),
        pause_archive=cache_dir() / "images" / f"pause-{k8s}.tar",
        pause_image=pins["PAUSE_IMAGE"],
    )
    for path in (
        binaries.kubelet,
        binaries.containerd,
        binaries.ctr,
        binaries.cni_dir / "bridge",
        binaries.pause_archive,
    ):
        if not path.exists():
            raise MissingNodeBinariesError(f"{path} not found: {HINT}")
    for tool in ("runc", "unshare", "ip", "iptables"):
        if shutil.which(tool) is None:
            raise MissingNodeBinariesError(f"{tool} not on PATH: {HINT}")
    return binaries


IMAGES_SCRIPT = REPO_ROOT / "hack" / "images" / "build.sh"


def project_image_archives() -> dict[str, Path]:
    """The project's images as docker-archives, {"operator": ..., "trainer-cpu": ...}: hack/images/build.sh
    (a quick cache check when they are built; `make images` builds them)."""
    result = subprocess.run([str(IMAGES_SCRIPT)], capture_output=True, text=True, check=False, cwd=REPO_ROOT)
    if result.returncode != 0:
        raise MissingNodeBinariesError(f"hack/images/build.sh failed ({result.returncode}):\n{result.stderr[-3000:]}")
    archives = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return {name: Path(path) for name, path in archives.items()}


def archive_image_tags(archive: Path) -> list[str]:
    """The `repository:tag` names a docker-archive holds (its manifest.json's RepoTags)."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("manifest.json")
        if member is None:
            raise ValueError(f"{archive} has no manifest.json: not a docker-archive")
        manifest = json.load(member)
    return [tag for entry in manifest for tag in entry.get("RepoTags") or []]


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


def containerd_config(workdir: Path, cni_dir: Path, pause_image: str) -> str:
    """containerd's config (version 3): state in the node's /run, data in workdir, runc, the CNI bridge."""
    return f"""version = 3
root = "{workdir / "containerd"}"
state = "/run/containerd"
[grpc]
  address = "{workdir / "containerd.sock"}"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{pause_image}"
[plugins."io.containerd.cri.v1.runtime"]
  # No CAP_SYS_RESOURCE on these machines: lowering oom_score_adj below the parent's fails.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
      SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{cni_dir}"]
    conf_dir = "{workdir / "cni"}"
"""


def cni_config(bridge: str, pod_cidr: str, ipam_dir: Path) -> dict[str, Any]:
    """A bridge + host-local IPAM network (masquerading what leaves the pod subnet)."""
    return {
        "cniVersion": "1.0.0",
        "name": "kube-sft",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(ipam_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(node: RealNode) -> dict[str, Any]:
    """The KubeletConfiguration of a node on a shared cgroup-v1 test machine."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node.node_ip,
        "readOnlyPort": 0,
        "healthzPort": 0,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(node.cluster.pki.ca.cert)},
        },
        # Only holders of a certificate of the cluster CA get past authentication (the API server).
        "authorization": {"mode": "AlwaysAllow"},
        "containerRuntimeEndpoint": f"unix://{node.workdir / 'containerd.sock'}",
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{node.cgroup_name}",
        "failCgroupV1": False,
        "failSwapOn": False,
        "protectKernelDefaults": False,
        "clusterDNS": [node.host_ip],
        "clusterDomain": "cluster.local",
        "resolvConf": str(node.workdir / "resolv.conf"),
        "podLogsDir": str(node.workdir / "pod-logs"),
        "volumePluginDir": str(node.workdir / "volume-plugins"),
        "rotateCertificates": False,
        "serializeImagePulls": False,
        "maxPods": 110,
        # Imported images cannot be pulled again: never garbage-collect them, never evict for disk.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "nodeStatusReportFrequency": "10s",
        "syncFrequency": "5s",
        "fileCheckFrequency": "20s",
        "shutdownGracePeriod": "0s",
    }


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


IMPORT_SCRIPT = Path(__file__).with_name("import_images.sh")


def golden_root(binaries: NodeBinaries, archives: Sequence[Path]) -> Path:
    """A containerd root holding `archives` imported (built once per set of archives, in the cache).

    The archives' names carry their content hash (hack/images/build.sh), so the names are the key.
    """
    key = hashlib.sha256("\n".join(sorted(a.name for a in archives)).encode()).hexdigest()[:16]
    golden = cache_dir() / "node" / f"containerd-root-{key}"
    if golden.exists():
        return golden
    # ~11 GB each (blobs + unpacked snapshots): only the newest image set keeps one.
    prune_oldest([p for p in golden.parent.glob("containerd-root-*") if p.is_dir()], keep=0)
    building = Path(tempfile.mkdtemp(prefix=f"{golden.name}.", dir=golden.parent if golden.parent.exists() else None))
    golden.parent.mkdir(parents=True, exist_ok=True)
    config = building / "config.toml"
    socket = building / "c.sock"
    config.write_text(
        f'version = 3\nroot = "{building / "root"}"\nstate = "/run/containerd"\n[grpc]\n  address = "{socket}"\n'
    )
    argv = ["unshare", "--mount", "--pid", "--fork", "--mount-proc", "--kill-child", "bash", str(IMPORT_SCRIPT),
            str(binaries.containerd), str(binaries.ctr), str(config), str(socket), *map(str, archives)]  # fmt: skip
    t0 = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        shutil.rmtree(building, ignore_errors=True)
        raise RuntimeError(f"importing {[a.name for a in archives]} failed:\n{result.stdout}{result.stderr}")
    log.info("golden containerd root %s built in %.0fs", golden.name, time.monotonic() - t0)
    with contextlib.suppress(OSError):  # another session made the same one meanwhile: keep theirs
        (building / "root").rename(golden)
    shutil.rmtree(building, ignore_errors=True)
    return golden


def prune_oldest(paths: list[Path], keep: int) -> None:
    """Delete all but the `keep` newest of `paths` (old image sets: gigabytes each)."""
    for path in sorted(paths, key=lambda p: p.stat().st_mtime, reverse=True)[keep:]:
        shutil.rmtree(path, ignore_errors=True)


def _log_order(path: Path) -> tuple[str, int]:
    stem = path.name.split(".", 1)[0]
    return path.parent.name, int(stem) if stem.isdigit() else 0


def cgroup_dirs(name: str) -> list[Path]:
    """The cgroup v1/v2 directories named `name` at the top of each mounted hierarchy."""
    root = Path("/sys/fs/cgroup")
    candidates = [root / name, *(p / name for p in root.iterdir() if p.is_dir())] if root.exists() else []
    return [p for p in candidates if p.is_dir()]


def make_cgroups(name: str) -> None:
    """The kubelet's `cgroupRoot` in every v1 hierarchy (it must exist; cpuset needs its cpus and mems)."""
    root = Path("/sys/fs/cgroup")
    for hierarchy in root.iterdir():
        if hierarchy.is_symlink() or not hierarchy.is_dir() or hierarchy.name == "unified":
            continue
        directory = hierarchy / name
        directory.mkdir(exist_ok=True)
        if hierarchy.name == "cpuset":
            for knob in ("cpuset.cpus", "cpuset.mems"):
                (directory / knob).write_text((hierarchy / knob).read_text())


def sweep_stale_cgroups() -> list[str]:
    """Remove the cgroup roots of nodes whose test process is gone (a session killed before its
    clean-up); returns their names. Names are `kube-sft-node-<pid>-<k>`."""
    root = Path("/sys/fs/cgroup")
    names = (
        {p.name for h in root.iterdir() if h.is_dir() for p in h.glob("kube-sft-node-*-*")} if root.exists() else set()
    )
    stale = []
    for name in sorted(names):
        pid = name.removeprefix("kube-sft-node-").split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            remove_cgroups(name, timeout=5)
            stale.append(name)
    return stale


def remove_cgroups(name: str, timeout: float = 30) -> None:
    """rmdir every cgroup under `name` in every hierarchy, deepest first (retrying while tasks exit)."""
    deadline = time.monotonic() + timeout
    for top in cgroup_dirs(name):
        while top.exists():
            for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    directory.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()
            if not top.exists() or time.monotonic() > deadline:
                break
            time.sleep(0.2)
