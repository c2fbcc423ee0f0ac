"""The pod contract between the operator and the trainer, written once: both sides import it.

What the operator writes and the trainer reads (or the reverse) is named here and nowhere else:
- the SFTJob's API coordinates (the trainer patches its job's status subresource with them);
- the labels the operator puts on every trainer pod and the trainer container's name;
- the environment variables the operator sets in the trainer container;
- the termination-message file the trainer writes its run summary to (and its size limit);
- the process exit codes of `sft`, what each means, and which are permanent.

A leaf module: it imports only the standard library (a test checks), so the trainer image, the
operator and the `kubectl sft` plugin can all import it without pulling anything else in. The
operator depends on the trainer's config and this contract, never the reverse.

Exit codes: permanent failures (retrying cannot help) are below 64; transient ones are 64-127.
Codes of 128 and above come from signals (the kernel's convention) and are retried by the operator.
"""

from enum import IntEnum

# --- the SFTJob API --------------------------------------------------------------------------------

GROUP = "sft.kube-sft.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "SFTJob"
PLURAL = "sftjobs"

# --- trainer pods -----------------------------------------------------------------------------------

LABEL_JOB = f"{GROUP}/job-name"
"""The SFTJob a pod belongs to (`kubectl sft logs` and the operator list pods by it)."""
LABEL_RANK = f"{GROUP}/node-rank"
"""The pod's node rank, 0 .. numNodes-1."""
LABEL_ATTEMPT = f"{GROUP}/attempt"
"""The gang attempt the pod belongs to (0 first, +1 per gang restart)."""
TRAINER_CONTAINER = "trainer"
"""The one container of a trainer pod (whose exit code and log count)."""

# --- environment the operator sets in the trainer container -----------------------------------------

ENV_JOB_NAME = "SFT_JOB_NAME"
ENV_JOB_NAMESPACE = "SFT_JOB_NAMESPACE"
ENV_JOB_ATTEMPT = "SFT_JOB_ATTEMPT"
ENV_TERMINATION_MESSAGE_PATH = "SFT_TERMINATION_MESSAGE_PATH"
ENV_POD_NAME = "SFT_POD_NAME"
ENV_POD_IP = "SFT_POD_IP"

# --- the termination message ------------------------------------------------------------------------

TERMINATION_MESSAGE_PATH = "/dev/termination-log"
"""Where rank 0 writes its JSON run summary; the kubelet copies it into the pod's status."""
TERMINATION_MESSAGE_LIMIT = 4096
"""Bytes of the termination message the kubelet keeps per container."""

# --- exit codes -------------------------------------------------------------------------------------

TRANSIENT_MIN = 64
"""Exit codes from here up are transient (retried)."""
SIGNAL_MIN = 128
"""Exit codes from here up are `128 + signal number` (the kernel's convention): retried."""


class ExitCode(IntEnum):
    """Why the trainer (or any `sft` command) stopped."""

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

EXIT_CODE_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "ok",
    ExitCode.UNEXPECTED: "unexpected error (retried)",
    ExitCode.CONFIG_ERROR: "invalid configuration (permanent)",
    ExitCode.DATA_ERROR: "missing or malformed data (permanent)",
    ExitCode.MODEL_ERROR: "missing or unreadable model/tokenizer (permanent)",
    ExitCode.NON_FINITE_LOSS: "non-finite loss (permanent)",
    ExitCode.OUT_OF_MEMORY: "out of device memory (permanent)",
    ExitCode.MISSING_EXTRA: "an extra is not installed in the image, e.g. kube-sft[trainer] (permanent)",
    ExitCode.DISTRIBUTED_TIMEOUT: "distributed timeout: a rank vanished (retried)",
    ExitCode.INTERRUPTED: "interrupted by SIGTERM, checkpoint saved (retried)",
}
"""One line per trainer exit code, as `kubectl sft status` explains a failure."""


def exit_code_meaning(code: int | None) -> str:
    """What an exit code means in words: `out of device memory (permanent)`, `killed by signal 9 ...`; "" for None."""
    if code is None:
        return ""
    if code in EXIT_CODE_MEANINGS:
        return EXIT_CODE_MEANINGS[ExitCode(code)]
    if code >= SIGNAL_MIN:
        return f"killed by signal {code - SIGNAL_MIN}" + (" (OOM killer or SIGKILL)" if code == 137 else "")
    return "transient (retried)" if TRANSIENT_MIN <= code < SIGNAL_MIN else "permanent"


def describe_exit_code(code: int | None) -> str:
    """An exit code with its name, as failure messages give it: `70 (DISTRIBUTED_TIMEOUT)`, `137 (signal 9)`, `none`."""
    if code is None:
        return "none"
    if code >= SIGNAL_MIN:
        return f"{code} (signal {code - SIGNAL_MIN})"
    try:
        return f"{code} ({ExitCode(code).name})"
    except ValueError:
        return str(code)
