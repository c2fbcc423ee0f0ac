"""`sft run sftjob.yaml`: run an SFTJob manifest on this machine, no cluster needed.

The manifest is validated with the same models the CRD is generated from (so what `sft run`
accepts, `kubectl apply` accepts), then handed to `sft train --config <manifest>`, which reads
`spec.training`. The cluster shape (`resources.numNodes` x processes per node) becomes one node
with `--nproc` processes here; every other knob is the manifest's.

    sft run sftjob.yaml [--nproc N] [--dry-run] [dotted.key=value ...]

The `sft run` command itself is the operator's addition to the trainer's CLI (`sft_commands`,
through an entry point): the trainer never imports the operator.
"""

import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sft_operator.api import KIND, SFTJob
from sft_trainer.config.loading import yaml_with_lines
from sft_trainer.contract import ExitCode


class ManifestError(ValueError):
    """A manifest that cannot run; `problems` has one line per reason, with file:line where known."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def load_manifest(path: Path) -> SFTJob:
    """Read and validate an SFTJob manifest (the first SFTJob document of the file)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ManifestError([f"{path}: cannot read: {error.strerror}"]) from None
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc]
    except yaml.YAMLError as error:
        raise ManifestError([f"{path}: not valid YAML: {error}"]) from None
    manifest = next((doc for doc in documents if isinstance(doc, dict) and doc.get("kind") == KIND), None)
    if manifest is None:
        raise ManifestError([f"{path}: no `kind: {KIND}` document"])
    manifest = {**manifest, "metadata": {"namespace": "local", **(manifest.get("metadata") or {})}}
    manifest.pop("status", None)
    try:
        return SFTJob.model_validate(manifest)
    except ValidationError as error:
        lines = _lines(text) if len(documents) == 1 else {}
        raise ManifestError([_problem(path, item, lines) for item in error.errors()]) from None


def _lines(text: str) -> dict[tuple[str, ...], int]:
    try:
        return yaml_with_lines(text)[1]
    except yaml.YAMLError:
        return {}


def _problem(path: Path, item: Any, lines: dict[tuple[str, ...], int]) -> str:
    loc = tuple(str(part) for part in item["loc"])
    message = str(item["msg"]).removeprefix("Value error, ")
    line = next((lines[loc[:depth]] for depth in range(len(loc), 0, -1) if loc[:depth] in lines), None)
    where = f"{path}:{line}" if line else str(path)
    key = ".".join(loc)
    return f"{where}: {key}: {message}" if key else f"{where}: {message}"


def train_command(manifest: Path, overrides: Sequence[str], nproc: int) -> list[str]:
    """The `sft train` command line for this machine (torchrun when nproc > 1)."""
    local = ["trainer.num_nodes=1", f"trainer.devices={nproc}"]
    train = ["-m", "sft_trainer.cli", "train", "--config", str(manifest), *local, *overrides]
    if nproc == 1:
        return [sys.executable, *train]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *train]


def missing_mounts(job: SFTJob) -> list[str]:
    """Storage mount paths of the manifest that do not exist here (the run would not find its files)."""
    return [
        f"storage.{role}.mountPath {location.mount_path} does not exist on this machine"
        for role, location in job.spec.storage.locations().items()
        if not Path(location.mount_path).exists()
    ]


def run_manifest(manifest: Path, overrides: Sequence[str] = (), nproc: int = 1, dry_run: bool = False) -> int:
    """Validate, then replace this process with `sft train` (returns only on error or dry run)."""
    try:
        job = load_manifest(manifest)
    except ManifestError as error:
        print("invalid SFTJob manifest:", *(f"  {line}" for line in error.problems), sep="\n", file=sys.stderr)
        return int(ExitCode.CONFIG_ERROR)
    resources = job.spec.resources
    print(
        f"SFTJob {job.metadata.name}: {resources.num_nodes} node(s) x {resources.nproc_per_node} process(es) "
        f"on a cluster; here: 1 node x {nproc} process(es)",
        file=sys.stderr,
    )
    for warning in missing_mounts(job):
        print(f"warning: {warning}; override the paths (e.g. output_dir=...) if needed", file=sys.stderr)
    command = train_command(manifest, overrides, nproc)
    if dry_run:
        print(shlex.join(command))
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)
    return 0  # pragma: no cover  (execv does not return)
