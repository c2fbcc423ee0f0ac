"""Image names and tags come from one place: the chart (repositories) and its appVersion."""

import importlib.metadata
import tomllib
from pathlib import Path

import yaml

from hack.image_names import CHART, image_references
from sft_operator.render import DEFAULT_IMAGE

ROOT = Path(__file__).resolve().parents[3]


def test_chart_app_version_is_the_package_version() -> None:
    package_version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert str(chart["appVersion"]) == package_version == importlib.metadata.version("kube-sft")


def test_operator_default_trainer_image_is_the_charts() -> None:
    assert image_references()["trainer"] == DEFAULT_IMAGE


def test_deployment_passes_the_trainer_image_to_the_operator() -> None:
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    assert "KUBE_SFT_TRAINER_IMAGE" in deployment
    assert ".Values.trainerImage.repository" in deployment
