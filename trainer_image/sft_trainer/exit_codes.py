"""Process exit codes of `sft` (every command), so the operator can tell permanent from transient failures.

Permanent failures (retrying cannot help) are below 64; transient ones are 64-127. Codes of
128 and above come from signals (the kernel's convention) and are retried by the operator.
"""

from enum import IntEnum


class ExitCode(IntEnum):
    """Why the trainer stopped."""

    OK = 0
    UNEXPECTED = 1  # an unclassified exception: retried (it may be transient)
    CONFIG_ERROR = 10  # invalid configuration: permanent
    DATA_ERROR = 11  # missing or malformed data: permanent
    MODEL_ERROR = 12  # missing or unreadable model / tokenizer: permanent
    NON_FINITE_LOSS = 13  # NaN/inf loss: permanent (a checkpoint of the last good state is kept)
    OUT_OF_MEMORY = 14  # device OOM: permanent for the same config
    MISSING_EXTRA = 15  # a module of an uninstalled extra (torch without kube-sft[trainer]): permanent
    DISTRIBUTED_TIMEOUT = 70  # a rank vanished or a collective timed out: transient
    INTERRUPTED = 71  # SIGTERM (eviction, preemption): checkpoint saved, transient


PERMANENT_EXIT_CODES = frozenset(
    {
        ExitCode.CONFIG_ERROR,
        ExitCode.DATA_ERROR,
        ExitCode.MODEL_ERROR,
        ExitCode.NON_FINITE_LOSS,
        ExitCode.OUT_OF_MEMORY,
        ExitCode.MISSING_EXTRA,
    }
)
