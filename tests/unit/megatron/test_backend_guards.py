"""Guards of the megatron backend that need no GPU: refused layouts and the NCCL fail-fast settings."""

import pytest

from sft_trainer.backends.megatron.backend import refuse_interleaved_pipeline
from sft_trainer.config import ConfigError
from sft_trainer.exit_codes import ExitCode
from sft_trainer.loop import NCCL_FAIL_FAST_ENV, exit_code_for


def test_interleaved_pipeline_is_refused_as_a_config_error() -> None:
    refuse_interleaved_pipeline(None, {})
    with pytest.raises(ConfigError, match="virtual_pipeline_model_parallel_size") as raised:
        refuse_interleaved_pipeline(2, {})
    assert exit_code_for(raised.value) == ExitCode.CONFIG_ERROR  # permanent: not retried
    refuse_interleaved_pipeline(2, {"SFT_ALLOW_INTERLEAVED_PP": "1"})  # the device checks' escape hatch


def test_nccl_fails_fast() -> None:
    assert NCCL_FAIL_FAST_ENV["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "3"
    assert int(NCCL_FAIL_FAST_ENV["TORCH_NCCL_WAIT_TIMEOUT_DUMP_MILSEC"]) * 4 <= 5000  # watchdog sleeps 4x this
