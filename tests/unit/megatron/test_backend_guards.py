"""Settings of the megatron backend that need no GPU: the NCCL fail-fast environment, interleaved PP's p2p."""

from sft_trainer.backends.megatron.model import pipeline_p2p_settings
from sft_trainer.config.schema import ParallelismConfig
from sft_trainer.distributed import NCCL_FAIL_FAST_ENV


def test_nccl_fails_fast() -> None:
    assert NCCL_FAIL_FAST_ENV["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "3"
    assert int(NCCL_FAIL_FAST_ENV["TORCH_NCCL_WAIT_TIMEOUT_DUMP_MILSEC"]) * 4 <= 5000  # watchdog sleeps 4x this


def test_interleaved_pipeline_uses_unbatched_p2p() -> None:
    """Batched isend/irecv pairs PP=2's two-way exchange wrongly under VPP (docs/notes/megatron-vpp.md)."""
    assert pipeline_p2p_settings(ParallelismConfig(pipeline_model_parallel_size=2)) == {}
    interleaved = ParallelismConfig(pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=2)
    assert pipeline_p2p_settings(interleaved) == {"batch_p2p_comm": False}
