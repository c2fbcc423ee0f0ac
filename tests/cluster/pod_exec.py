"""Run one pod container's command inside a private mount namespace with its volumes bind-mounted.

Started by the node agent as `unshare --mount --propagation private -- python pod_exec.py SPEC.json`
(root only). SPEC is {"mounts": [[source, target, read_only], ...], "argv": [...], "cwd": "..."}:
each source (a directory or file the agent materialised) is bind-mounted at its real mountPath
(`/var/run/secrets/kubernetes.io/serviceaccount`, `/dev/termination-log`, `/etc/sft`...), visible to
this process tree only; then the command replaces this process (same PID, same process group).
Standalone on purpose: it imports nothing from the repository.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
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
