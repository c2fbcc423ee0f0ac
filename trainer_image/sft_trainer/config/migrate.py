"""`sft migrate`: a NeMo-Aligner config and overrides written out as our SFTConfig or an SFTJob manifest."""

from pathlib import Path
from typing import Any

import yaml

from sft_trainer.config.loading import ConfigError, translate_config
from sft_trainer.contract import API_VERSION, KIND
from sft_trainer.extensions import sftjob_checks


def sftjob_manifest(name: str, training: dict[str, Any]) -> dict[str, Any]:
    """An SFTJob holding `training`; the cluster shape moves from `trainer.num_nodes`/`devices` to `spec.resources`."""
    training = {**training, "trainer": dict(training.get("trainer") or {})}
    trainer = training["trainer"]
    nodes = int(trainer.pop("num_nodes", 1))
    devices = int(trainer.pop("devices", 1))
    if not trainer:
        del training["trainer"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name},
        "spec": {"resources": {"numNodes": nodes, "gpusPerNode": devices}, "training": training},
    }


def migrated_yaml(path: str | Path | None, overrides: list[str], sftjob: str | None) -> tuple[str, list[str]]:
    """(YAML text, notes): only the keys the input set, mapped onto ours and validated.

    Raises ConfigError (naming file:line or `command-line override N`) when the result would not run.
    """
    translation = translate_config(path, overrides)
    translation.validated()
    document = translation.tree if sftjob is None else sftjob_manifest(sftjob, translation.tree)
    if sftjob is not None:
        _check_manifest(document)
    text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return text, translation.notes


def _check_manifest(manifest: dict[str, Any]) -> None:
    """Validate with every installed SFTJob check (the operator's model, `sft_trainer.extensions`); none: no check."""
    problems = [problem for check in sftjob_checks() for problem in check(manifest)]
    if problems:
        raise ConfigError(problems)
