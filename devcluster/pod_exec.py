"""Run one pod container's command inside a private mount namespace with its volumes bind-mounted.

Started by the node agent as `unshare --mount [--net] --propagation private -- python pod_exec.py SPEC.json`
(root only). SPEC is {"mounts": [[source, target, read_only], ...], "argv": [...], "cwd": "...",
"network": {"interface", "ip", "prefix", "gateway"} or null, "hostname": pod hostname or null}. With a network, it first waits for the
agent to move its veth end in, and configures it (the pod's own network namespace). Then
each source (a directory or file the agent materialised) is bind-mounted at its real mountPath
(`/var/run/secrets/kubernetes.io/serviceaccount`, `/dev/termination-log`, `/etc/sft`...), visible to
this process tree only; then the command replaces this process (same PID, same process group).
Standalone on purpose: it imports nothing from the repository.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def ensure_target(source: Path, target: Path) -> None:
    """Create an empty directory or file at target for the bind mount (on the shared root filesystem)."""
    if source.is_dir():
        target.mkdir(parents=True, exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.touch()


def bind(source: Path, target: Path, read_only: bool) -> None:
    """Bind-mount source at target (read-only when asked)."""
    ensure_target(source, target)
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
    if read_only:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)


def wait_for_interface(name: str, timeout: float = 20.0) -> None:
    """Wait until the agent has moved the pod's veth end into this network namespace."""
    deadline = time.monotonic() + timeout
    while subprocess.run(["ip", "link", "show", name], capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            raise SystemExit(f"kube-sft node agent: interface {name} never arrived")
        time.sleep(0.02)


def configure_network(net: dict[str, str]) -> None:
    """Name the veth eth0, give it the pod IP, bring up lo, route everything via the node's bridge."""
    wait_for_interface(net["interface"])
    for command in (
        ["ip", "link", "set", net["interface"], "name", "eth0"],
        ["ip", "addr", "add", f"{net['ip']}/{net['prefix']}", "dev", "eth0"],
        ["ip", "link", "set", "eth0", "up"],
        ["ip", "link", "set", "lo", "up"],
        ["ip", "route", "add", "default", "via", net["gateway"]],
    ):
        subprocess.run(command, check=True)


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    if spec.get("network"):
        configure_network(spec["network"])
    if spec.get("hostname"):
        socket.sethostname(spec["hostname"])  # in the pod's own UTS namespace, as a kubelet does
    for source, target, read_only in sorted(spec["mounts"], key=lambda m: len(m[1])):
        bind(Path(source), Path(target), bool(read_only))
    cwd = Path(spec["cwd"])
    cwd.mkdir(parents=True, exist_ok=True)
    os.chdir(cwd)
    argv = spec["argv"]
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"kube-sft node agent: cannot run {argv[0]!r}: {exc}", file=sys.stderr)
        sys.exit(127 if isinstance(exc, FileNotFoundError) else 126)


if __name__ == "__main__":
    main(sys.argv[1])
