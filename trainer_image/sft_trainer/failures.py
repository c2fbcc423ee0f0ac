"""How a run ended badly: the exception -> documented exit code table (`sft_trainer.contract`).

The operator retries a transient failure (a lost peer) and stops on a permanent one, so the
classification lives in one place: the loop raises, `run.run_training` classifies.
"""

import torch

from sft_trainer.contract import ExitCode


class NonFiniteLossError(RuntimeError):
    """The loss (or gradient) became NaN/inf; a checkpoint of the last good state was saved."""


def exit_code_for(error: BaseException) -> ExitCode:
    """The documented exit code of an exception that ended a run."""
    from sft_trainer.config import ConfigError
    from sft_trainer.data.errors import DataError
    from sft_trainer.models import ModelError
    from sft_trainer.tokenization import TokenizerError

    if isinstance(error, ConfigError):
        return ExitCode.CONFIG_ERROR
    if isinstance(error, DataError):
        return ExitCode.DATA_ERROR
    if isinstance(error, ModelError | TokenizerError):
        return ExitCode.MODEL_ERROR
    if isinstance(error, NonFiniteLossError):
        return ExitCode.NON_FINITE_LOSS
    if is_out_of_memory(error):
        return ExitCode.OUT_OF_MEMORY
    if is_lost_peer(error):
        return ExitCode.DISTRIBUTED_TIMEOUT
    return ExitCode.UNEXPECTED


# What a collective raises when a peer process is gone but PyTorch does not wrap it in a DistError
# (gloo's TCP pairs: RuntimeError "Connection closed by peer"; NCCL's watchdog and aborted communicators).
LOST_PEER_MARKERS = (
    "Connection closed by peer",
    "Connection reset by peer",
    "NCCL communicator was aborted",
    "Watchdog caught collective operation timeout",
)


# What a device OOM says when it is not raised by PyTorch's caching allocator (cuBLAS / cuDNN
# workspaces, Transformer Engine kernels, a plain cudaMalloc): a RuntimeError with CUDA's own words.
OUT_OF_MEMORY_MARKERS = (
    "CUDA out of memory",
    "CUDA error: out of memory",
    "cudaErrorMemoryAllocation",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
)


def is_out_of_memory(error: BaseException) -> bool:
    """A device OOM, raised by PyTorch or by a library beneath it, also when wrapped in another error."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:  # a hand-made cause cycle must not loop forever
        chain.append(current)
        current = current.__cause__ or current.__context__
    return any(
        isinstance(link, torch.OutOfMemoryError)
        or (isinstance(link, RuntimeError) and any(marker in str(link) for marker in OUT_OF_MEMORY_MARKERS))
        for link in chain
    )


def is_lost_peer(error: BaseException) -> bool:
    """A failed or timed-out collective: another rank vanished (transient: the whole group restarts)."""
    if isinstance(error, torch.distributed.DistError):
        return True
    return isinstance(error, RuntimeError) and any(marker in str(error) for marker in LOST_PEER_MARKERS)
