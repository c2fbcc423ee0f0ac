"""Fixtures of the operator's unit tests."""

import pytest

from sft_operator.api import SFTJob
from tests.builders import manifest


@pytest.fixture
def job() -> SFTJob:
    """A valid two-node, two-GPU-per-node job."""
    return SFTJob.model_validate(manifest())
