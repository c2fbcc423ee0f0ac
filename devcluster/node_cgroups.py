"""The cgroups of a real node: its kubelet's `cgroupRoot` in every hierarchy, made at start, removed
at stop, and swept when a test session died before its clean-up."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path


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
