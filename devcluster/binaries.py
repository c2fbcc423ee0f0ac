"""Locate the control-plane binaries built by `make cluster-bins` (or a user's envtest assets)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
VERSIONS_FILE = REPO_ROOT / "hack" / "controlplane" / "versions.env"
HINT = "run `make cluster-bins` (hack/controlplane/build.sh) to build and cache them"


class MissingBinariesError(RuntimeError):
    """A control-plane binary is not built or cached yet."""


def read_env_file(path: Path) -> dict[str, str]:
    """The KEY=value lines of a versions.env file (comments and blanks skipped; a value's surrounding
    double quotes dropped, as the shell scripts that source the file see it)."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            pins[key] = value.strip('"')
    return pins


def pinned_versions() -> dict[str, str]:
    """The KEY=value pins of hack/controlplane/versions.env."""
    return read_env_file(VERSIONS_FILE)


def cache_dir() -> Path:
    """$KUBE_SFT_CACHE (default ~/.cache/kube-sft), where build.sh caches binaries by version."""
    return Path(os.environ.get("KUBE_SFT_CACHE") or Path.home() / ".cache" / "kube-sft")


def bin_dir() -> Path:
    """The version-keyed directory holding this checkout's pinned binaries."""
    return cache_dir() / "bin" / pinned_versions()["K8S_VERSION"]


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of every binary the test cluster uses."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    helm: Path


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _pick(name: str, *dirs: Path | None) -> Path:
    for directory in dirs:
        if directory is not None and _executable(directory / name):
            return directory / name
    searched = ", ".join(str(d) for d in dirs if d is not None)
    raise MissingBinariesError(f"{name} not found in {searched}: {HINT}")


def find_binaries() -> Binaries:
    """Find the binaries; kube-apiserver and etcd come from KUBEBUILDER_ASSETS when that is set.

    Raises MissingBinariesError (telling to run `make cluster-bins`) when any is missing.
    """
    assets_env = os.environ.get("KUBEBUILDER_ASSETS")
    assets = Path(assets_env) if assets_env else None
    cached = bin_dir()
    return Binaries(
        etcd=_pick("etcd", assets, cached),
        kube_apiserver=_pick("kube-apiserver", assets, cached),
        kube_controller_manager=_pick("kube-controller-manager", cached),
        kube_scheduler=_pick("kube-scheduler", cached),
        kubectl=_pick("kubectl", cached, assets),
        helm=_pick("helm", cached),
    )


def find_tool(name: str) -> Path:
    """A tool from the system PATH (prometheus, promtool: Debian's package)."""
    found = shutil.which(name)
    if found is None:
        raise MissingBinariesError(f"{name} not on PATH: {HINT} (it installs Debian's prometheus package)")
    return Path(found)
