"""Shared fixtures of the data tests: the real files in ../shared/data and the tokenizers."""

import inspect
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sft_trainer.config import DataConfig, TokenizerConfig
from sft_trainer.data.types import IGNORE_INDEX, Sample
from sft_trainer.tokenization import load_tokenizer
from tests.shared_data import shared


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "shared_data: reads ../shared/data (fails, never skips, when it is missing)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every data test that reads ../shared/data, so `-m shared_data` selects them."""
    here = Path(__file__).parent
    for item in items:
        if here not in Path(str(item.path)).parents:
            continue
        function = getattr(item, "function", None)
        uses_fixture = {"gpt2_tok", "template_toks"} & set(getattr(item, "fixturenames", ()))
        if function is not None and (uses_fixture or "shared(" in inspect.getsource(function)):
            item.add_marker(pytest.mark.shared_data)


@pytest.fixture(scope="session")
def byte_tok() -> Any:
    return load_tokenizer(TokenizerConfig(type="byte"))


@pytest.fixture(scope="session")
def gpt2_tok() -> Any:
    return load_tokenizer(TokenizerConfig(type="gpt2_bpe", path=str(shared("tokenizers/gpt2"))))


def data_config(**knobs: Any) -> DataConfig:
    """A DataConfig with a placeholder train file unless one is given."""
    knobs.setdefault("train_file", "unused.jsonl")
    return DataConfig(**knobs)


def trained_segments(tokenizer: Any, input_ids: np.ndarray, targets: np.ndarray) -> list[str]:
    """The text of each run of consecutive target tokens."""
    segments: list[str] = []
    run: list[int] = []
    for token, target in zip(input_ids.tolist(), targets.tolist(), strict=True):
        if target:
            run.append(token)
        elif run:
            segments.append(tokenizer.decode(run))
            run = []
    if run:
        segments.append(tokenizer.decode(run))
    return segments


def sample_segments(tokenizer: Any, sample: Sample) -> list[str]:
    """Trained text of a Sample, read back from its pre-shifted labels."""
    targets = np.zeros(len(sample.input_ids), dtype=bool)
    targets[1:] = sample.labels[:-1] != IGNORE_INDEX
    return trained_segments(tokenizer, sample.input_ids, targets)
