"""uv.lock: fresh against pyproject.toml, installed by `make env`, and what the images export from it."""

import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).with_name("uv")
LIBRARY_EXTRAS = ("operator", "trainer")


def _uv(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(UV), *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def _locked_versions() -> dict[str, str]:
    lock = tomllib.loads((ROOT / "uv.lock").read_text(encoding="utf-8"))
    return {package["name"]: package["version"] for package in lock["package"]}


def test_the_lock_matches_pyproject() -> None:
    # --offline: a fresh lock is checked without the index; a stale one fails either way.
    result = _uv("lock", "--check", "--offline")
    assert result.returncode == 0, f"uv.lock is stale; run `uv lock` and commit it:\n{result.stderr}"


def test_the_makefile_bootstraps_the_locked_uv() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    match = re.search(r"^UV_VERSION := (\S+)$", makefile, re.MULTILINE)
    assert match is not None
    assert match.group(1) == _locked_versions()["uv"]


def test_the_library_install_states_ranges_not_pins() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = [
        *project["dependencies"],
        *(r for extra in LIBRARY_EXTRAS for r in project["optional-dependencies"][extra]),
    ]
    pinned = [r for r in requirements if "==" in r]
    assert not pinned, f"pinned in the library install (the lock pins; pyproject states ranges): {pinned}"
    assert all(">=" in r for r in requirements), requirements


def test_the_trainer_export_holds_wandb_and_torch_but_no_operator_or_dev_tools() -> None:
    # What the trainer image installs (docs/notes/cli-and-deps.md): the base install plus the trainer extra,
    # as committed (the next test ties the file to the lock).
    text = (ROOT / "trainer_image/requirements-cpu.txt").read_text(encoding="utf-8")
    names = {line.split("==")[0] for line in text.splitlines() if "==" in line and not line.startswith(" ")}
    assert {"wandb", "torch", "transformers", "pydantic", "kubernetes"} <= names
    assert not {"kopf", "ruff", "mypy", "pytest", "trl"} & names


def test_the_images_requirement_files_are_exported_from_the_lock() -> None:
    spec = importlib.util.spec_from_file_location("export_requirements", ROOT / "hack/images/export_requirements.py")
    assert spec is not None and spec.loader is not None
    export = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export)
    assert export.stale_files() == [], "stale: run `make lock` and commit the requirement files"
    gpu = (ROOT / "trainer_image/requirements-gpu.txt").read_text(encoding="utf-8")
    assert "\nmegatron-core==" in gpu and "\ntorch==" not in gpu and "\nnvidia-" not in gpu  # NGC's own builds
    assert all("--hash=sha256:" in (ROOT / path).read_text(encoding="utf-8") for path in export.EXPORTS)
    assert "\nkopf==" in (ROOT / "operator/requirements.txt").read_text(encoding="utf-8")


def test_the_dockerfiles_install_only_the_locked_requirements() -> None:
    for dockerfile in ("operator/Dockerfile", "trainer_image/Dockerfile"):
        text = (ROOT / dockerfile).read_text(encoding="utf-8")
        installs = [line for line in text.splitlines() if "pip install" in line and not line.lstrip().startswith("#")]
        assert installs and all("--no-deps" in line for line in installs), (dockerfile, installs)
        assert "--require-hashes" in text, dockerfile
