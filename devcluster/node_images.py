"""What a real node runs: its binaries (kubelet, containerd, ctr, runc, CNI plugins, the pause image)
and the project's images, imported once per image set into a read-only "golden" containerd root
that each node hard-links (real_node.py)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from devcluster.binaries import REPO_ROOT, cache_dir, pinned_versions, read_env_file

log = logging.getLogger("kube_sft.real_node")
NODE_VERSIONS = REPO_ROOT / "hack" / "node" / "versions.env"
HINT = "run `make node-bins` (hack/node/build.sh) to build and cache them"
IMAGES_SCRIPT = REPO_ROOT / "hack" / "images" / "build.sh"
IMPORT_SCRIPT = Path(__file__).with_name("import_images.sh")


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


def find_node_binaries() -> NodeBinaries:
    """The node's binaries; raises MissingNodeBinariesError (run `make node-bins`) when one is missing."""
    pins = read_env_file(NODE_VERSIONS)
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
