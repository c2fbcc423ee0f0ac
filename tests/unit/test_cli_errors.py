"""`sft` and `kubectl sft` on bad input: one line on stderr, the documented exit code, never a traceback.

The commands run as installed console scripts: the full `.venv` and a base install (no extras,
as `pip install kube-sft` gives), made from uv.lock in a temporary directory.
"""

import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from sft_operator import policy
from sft_operator.api import RunPolicy
from sft_operator.kubectl_plugin.cluster import PluginExit
from sft_trainer.cli_common import EXTRA_MODULES, missing_extra
from sft_trainer.contract import ExitCode

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
DEMO = str(ROOT / "examples" / "local" / "demo.yaml")
TRAINER_HINT = "pip install 'kube-sft[trainer]'"


@dataclass(frozen=True)
class Case:
    """A command line, the exit code it must end with, and words its one-line error must hold."""

    argv: tuple[str, ...]
    code: int
    words: str


def _run(bin_dir: Path, case: Case, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [str(bin_dir / case.argv[0]), *case.argv[1:]]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False, cwd=ROOT)


def _assert_one_line_error(result: subprocess.CompletedProcess[str], case: Case) -> None:
    shown = f"{case.argv}: rc {result.returncode}\n{result.stderr}"
    assert result.returncode == case.code, shown
    assert "Traceback" not in result.stderr and "╭─" not in result.stderr, shown
    assert len(result.stderr.strip().splitlines()) == 1, shown
    assert case.words in result.stderr, shown


@pytest.fixture(scope="module")
def no_cluster_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """No kubeconfig (an empty HOME, no KUBECONFIG) and not in a pod."""
    home = tmp_path_factory.mktemp("home")
    drop = {"KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"}
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "HOME": str(home), "COLUMNS": "100"}


@pytest.fixture(scope="module")
def base_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin directory of a venv with the locked base install only (kube-sft without extras)."""
    venv = tmp_path_factory.mktemp("base") / "venv"
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv)}
    result = subprocess.run(
        [str(VENV_BIN / "uv"), "sync", "--frozen", "--quiet", "--no-dev", "--python", sys.executable],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert not list(venv.glob("lib/python*/site-packages/torch")), "the base install has no torch"
    return venv / "bin"


@pytest.fixture(scope="module")
def unreachable_kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig whose API server is a closed local port."""
    path = tmp_path_factory.mktemp("kube") / "config"
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n"
    )
    return path


FULL_INSTALL_CASES = [
    Case(("sft", "report", "/no/such/run"), ExitCode.DATA_ERROR, "sft report: /no/such/run/metrics.jsonl"),
    Case(("sft", "generate", "--model", "/no/such/model", "-p", "hi"), ExitCode.MODEL_ERROR, "/no/such/model"),
    Case(("sft", "eval", "--model", "/no/such/model", "--file", "x.jsonl"), ExitCode.MODEL_ERROR, "/no/such/model"),
    Case(("sft", "export", "/no/such/run", "--out", "/tmp/x"), ExitCode.MODEL_ERROR, "no LoRA adapter"),
    Case(
        ("sft", "data", "convert", "dolly", "--input", "/no/such.jsonl", "--output", "/tmp/x.jsonl"),
        ExitCode.DATA_ERROR,
        "/no/such.jsonl",
    ),
    Case(
        ("sft", "data", "convert", "oasst", "--input", "/no/such.jsonl", "--output", "/tmp/x.jsonl"),
        ExitCode.DATA_ERROR,
        "/no/such.jsonl",
    ),
    Case(("kubectl-sft", "status", "job"), PluginExit.NO_CLUSTER, "kubectl sft: no usable cluster: kubeconfig"),
    Case(("kubectl-sft", "logs", "job"), PluginExit.NO_CLUSTER, "no usable cluster"),
    Case(
        ("kubectl-sft", "--kubeconfig", "/no/such/config", "suspend", "job"), PluginExit.NO_CLUSTER, "/no/such/config"
    ),
    Case(("kubectl-sft", "generate", "job", "-p", "hi", "--history", "/no/such.json"), PluginExit.FAILED, "--history"),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", FULL_INSTALL_CASES, ids=lambda case: " ".join(case.argv[:3]))
def test_a_bad_input_ends_in_one_line_and_its_exit_code(case: Case, no_cluster_env: dict[str, str]) -> None:
    _assert_one_line_error(_run(VENV_BIN, case, no_cluster_env), case)


@pytest.mark.slow
def test_a_config_error_names_the_key_without_a_traceback(no_cluster_env: dict[str, str]) -> None:
    # One line per problem under a header: every problem a user has to fix is shown at once.
    case = Case(("sft", "train", "--config", DEMO, "trainer.max_stepz=1"), ExitCode.CONFIG_ERROR, "max_stepz")
    result = _run(VENV_BIN, case, no_cluster_env)
    assert result.returncode == case.code and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines() == [
        "invalid configuration:",
        "  command-line override 1: trainer.max_stepz: unknown key; did you mean trainer.max_steps?",
    ]


@pytest.mark.slow
def test_an_unreachable_api_server_is_named(no_cluster_env: dict[str, str], unreachable_kubeconfig: Path) -> None:
    case = Case(
        ("kubectl-sft", "--kubeconfig", str(unreachable_kubeconfig), "status", "job"),
        PluginExit.NO_CLUSTER,
        "cannot reach the Kubernetes API server https://127.0.0.1:1: Failed to establish a new connection",
    )
    _assert_one_line_error(_run(VENV_BIN, case, no_cluster_env), case)


BASE_INSTALL_CASES = [
    Case(("sft", "train", "--config", DEMO), ExitCode.MISSING_EXTRA, TRAINER_HINT),
    Case(
        ("sft", "data", "convert", "dolly", "--input", "/no/such.jsonl", "--output", "/tmp/x.jsonl"),
        ExitCode.MISSING_EXTRA,
        TRAINER_HINT,
    ),
    Case(("sft", "data", "prepare", "--config", DEMO), ExitCode.MISSING_EXTRA, TRAINER_HINT),
    Case(("sft", "generate", "--model", "/no/such/model", "-p", "hi"), ExitCode.MISSING_EXTRA, TRAINER_HINT),
    Case(("sft", "export", "/no/such/run", "--out", "/tmp/x"), ExitCode.MISSING_EXTRA, TRAINER_HINT),
    Case(("sft", "report", "/no/such/run"), ExitCode.DATA_ERROR, "no metrics.jsonl"),
    Case(("kubectl-sft", "status", "job"), PluginExit.NO_CLUSTER, "no usable cluster"),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", BASE_INSTALL_CASES, ids=lambda case: " ".join(case.argv[:3]))
def test_the_base_install_explains_the_missing_trainer_extra(
    case: Case, base_install: Path, no_cluster_env: dict[str, str]
) -> None:
    _assert_one_line_error(_run(base_install, case, no_cluster_env), case)


def test_the_missing_extra_code_is_permanent_for_the_operator() -> None:
    assert ExitCode.MISSING_EXTRA < 64
    assert policy.is_retryable(ExitCode.MISSING_EXTRA, RunPolicy()) is False


def test_a_missing_module_is_traced_to_its_extra_through_the_exceptions_chain() -> None:
    try:
        try:
            raise ModuleNotFoundError("No module named 'torch.nn'", name="torch.nn")
        except ModuleNotFoundError as inner:
            raise RuntimeError("while loading the backend") from inner
    except RuntimeError as outer:
        assert missing_extra(outer) == ("trainer", "torch")
    assert missing_extra(ModuleNotFoundError("No module named 'yaml'", name="yaml")) is None
    assert missing_extra(ValueError("x")) is None


def test_the_extra_modules_are_the_extras_of_pyproject() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    for extra, modules in EXTRA_MODULES.items():
        names = {requirement.split(">")[0].split("=")[0].split(";")[0].strip() for requirement in extras[extra]}
        assert names == set(modules), extra


@pytest.mark.slow
@pytest.mark.parametrize("command", ["sft", "kubectl-sft"])
def test_version_and_help_examples(command: str, no_cluster_env: dict[str, str]) -> None:
    version = subprocess.run([str(VENV_BIN / command), "--version"], capture_output=True, text=True, check=False)
    assert version.returncode == 0 and version.stdout.strip() == "kube-sft 0.1.0", version
    usage = subprocess.run(
        [str(VENV_BIN / command), "--help"], capture_output=True, text=True, env=no_cluster_env, check=False
    )
    assert usage.returncode == 0 and "Examples:" in usage.stdout, usage.stdout


@pytest.mark.slow
def test_sft_train_help_shows_the_dotted_overrides(no_cluster_env: dict[str, str]) -> None:
    usage = subprocess.run(
        [str(VENV_BIN / "sft"), "train", "--help"], capture_output=True, text=True, env=no_cluster_env, check=False
    )
    assert "Usage: sft train [OPTIONS] [DOTTED.KEY=VALUE]..." in usage.stdout, usage.stdout
    assert "trainer.max_steps=200 optim.lr=1e-5" in usage.stdout


@pytest.mark.parametrize(
    ("doc", "codes"),
    [("trainer.md", [int(code) for code in ExitCode]), ("user-guide.md", [int(c) for c in PluginExit])],
)
def test_every_exit_code_has_a_row_in_the_docs(doc: str, codes: list[int]) -> None:
    text = (ROOT / "docs" / doc).read_text(encoding="utf-8")
    missing = [code for code in codes if f"\n| {code} | " not in text]
    assert not missing, f"docs/{doc} has no table row for exit codes {missing}"
