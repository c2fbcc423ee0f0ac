"""Write the images' requirement files from uv.lock: what each image installs, with hashes.

The lock is the one source of versions; the Dockerfiles install exactly these files with
`pip install --no-deps --require-hashes`, so an image holds what `make env` and the tests ran on.

    python hack/images/export_requirements.py           # rewrite the files
    python hack/images/export_requirements.py --check   # exit 1 when one is stale (tests/unit/test_lock.py)

| file | extras | left out |
| --- | --- | --- |
| operator/requirements.txt | operator | |
| trainer_image/requirements-cpu.txt | trainer | |
| trainer_image/requirements-gpu.txt | trainer, gpu | torch and what only torch needs (the NGC base image's builds) |
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).with_name("uv")

EXPORTS: dict[str, tuple[str, ...]] = {
    "operator/requirements.txt": ("--extra", "operator"),
    "trainer_image/requirements-cpu.txt": ("--extra", "trainer"),
    "trainer_image/requirements-gpu.txt": ("--extra", "trainer", "--extra", "gpu", "--prune", "torch"),
}
HEADER = "# Generated from uv.lock by hack/images/export_requirements.py (`make lock`); do not edit.\n"


def exported(arguments: tuple[str, ...]) -> str:
    """The locked requirements (with hashes) of the base install plus `arguments`' extras."""
    command = [str(UV), "export", "--frozen", "--offline", "--no-dev", "--no-emit-project", "--no-header",
               "--no-annotate", "--quiet", *arguments]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return HEADER + result.stdout


def stale_files() -> list[str]:
    """The requirement files whose content differs from a fresh export."""
    stale = []
    for path, arguments in EXPORTS.items():
        target = ROOT / path
        if not target.exists() or target.read_text(encoding="utf-8") != exported(arguments):
            stale.append(path)
    return stale


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        stale = stale_files()
        for path in stale:
            print(f"{path} is stale: run `make lock` and commit it", file=sys.stderr)
        return 1 if stale else 0
    for path, arguments in EXPORTS.items():
        (ROOT / path).write_text(exported(arguments), encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
