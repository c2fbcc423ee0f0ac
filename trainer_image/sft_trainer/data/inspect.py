"""What training sees: an example's tokens split into trained and untrained runs, and the split counts.

`sft data inspect` prints them (rich colour on a terminal, `[[trained]]` brackets otherwise);
`sft train` logs `counts_line` at start. Pure functions over ids and pre-shifted labels.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sft_trainer.data.types import IGNORE_INDEX, IntArray

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

OPEN, CLOSE = "[[", "]]"


@dataclass(frozen=True)
class Run:
    """Consecutive tokens that are all trained or all untrained, decoded together."""

    text: str
    trained: bool
    tokens: int


def trained_flags(labels: IntArray) -> np.ndarray:
    """Which tokens carry loss, from pre-shifted labels (`labels[t]` is the target of token t+1)."""
    flags = np.zeros(len(labels), dtype=bool)
    flags[1:] = np.asarray(labels[:-1]) != IGNORE_INDEX
    return flags


def runs(tokenizer: "PreTrainedTokenizerBase", input_ids: IntArray, labels: IntArray) -> list[Run]:
    """The example as trained / untrained runs (each run decoded at once, so multi-byte characters survive)."""
    flags = trained_flags(labels)
    out: list[Run] = []
    start = 0
    for end in range(1, len(flags) + 1):
        if end == len(flags) or flags[end] != flags[start]:
            ids = [int(token) for token in input_ids[start:end]]
            out.append(Run(str(tokenizer.decode(ids)), bool(flags[start]), end - start))
            start = end
    return out


def bracketed(example: list[Run]) -> str:
    """Plain text with every trained run in `[[...]]` (control characters escaped)."""
    return "".join(f"{OPEN}{visible(run.text)}{CLOSE}" if run.trained else visible(run.text) for run in example)


def rich_text(example: list[Run]) -> Any:
    """A rich Text: trained runs bold green, the rest dim (control characters shown escaped)."""
    from rich.text import Text

    text = Text()
    for run in example:
        text.append(visible(run.text), style="bold green" if run.trained else "dim")
    return text


def visible(text: str) -> str:
    """Control characters (NeMo's `\\x00`, `\\x11`, `\\x12`) as escapes; newlines and tabs kept."""
    return "".join(c if c in "\n\t" or c.isprintable() else repr(c)[1:-1] for c in text)


def counts_line(stats: dict[str, Any]) -> str:
    """`train: 561 examples (dropped 0, truncated 3, bad rows 0); validation: ...` from build stats."""

    def one(name: str, split: dict[str, Any]) -> str:
        return (
            f"{name}: {split.get('examples', 0)} examples, {split.get('answer_tokens', 0)} trained tokens "
            f"(dropped {split.get('dropped', 0)}, truncated {split.get('truncated', 0)}, "
            f"bad rows {split.get('bad_rows', 0)}) from {split.get('file')}"
        )

    parts = [one("train", stats)]
    if "validation" in stats:
        parts.append(one("validation", stats["validation"]))
    return "; ".join(parts)
