"""Small helpers shared by the formats: batch tokenization, special ids, truncation arithmetic."""

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

from sft_trainer.data.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def encode_texts(tokenizer: "PreTrainedTokenizerBase", texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens; batched through the Rust backend when fast."""
    if not texts:
        return []
    if hasattr(tokenizer, "backend_tokenizer"):
        backend = tokenizer.backend_tokenizer
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return [encoding.ids for encoding in encode(list(texts), add_special_tokens=False)]
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def special_id(tokenizer: "PreTrainedTokenizerBase", name: Literal["bos", "eos", "sep"], knob: str) -> int:
    """The id of a special token the config asks to add; sep falls back to eos (most LLMs have none)."""
    value = getattr(tokenizer, f"{name}_token_id")
    if value is None and name == "sep":
        value = tokenizer.eos_token_id
    if value is None:
        raise DataError(f"the tokenizer has no {name} token", field=knob)
    return int(value)


def plan_cuts(lengths: Sequence[int], excess: int) -> list[int]:
    """Tokens to cut from each field so that `excess` tokens go, as evenly as possible.

    Each field loses the same share (earlier fields take the remainder, as in NeMo); a field
    shorter than its share gives all it has and the others make up the difference. Returns fewer
    than `excess` in total only when every field is used up.
    """
    cuts = [0] * len(lengths)
    remaining = excess
    while remaining > 0:
        open_fields = [i for i, n in enumerate(lengths) if n - cuts[i] > 0]
        if not open_fields:
            break
        share, extra = divmod(remaining, len(open_fields))
        for rank, i in enumerate(open_fields):
            want = share + (1 if rank < extra else 0)
            take = min(want, lengths[i] - cuts[i])
            cuts[i] += take
            remaining -= take
    return cuts


def cut(ids: list[int], amount: int, method: Literal["left", "right"]) -> list[int]:
    """Drop `amount` tokens from the left (keep the end) or the right (keep the start)."""
    if amount <= 0:
        return ids
    return ids[amount:] if method == "left" else ids[: max(0, len(ids) - amount)]


def encode_with_offsets(
    tokenizer: "PreTrainedTokenizerBase", texts: Sequence[str]
) -> list[tuple[list[int], list[int]]]:
    """`(ids, start_char_of_each_token)` per text, without special tokens (needs a fast tokenizer)."""
    if not texts:
        return []
    if not hasattr(tokenizer, "backend_tokenizer"):
        raise DataError(f"chat formats need a fast tokenizer (offsets); got {type(tokenizer).__name__}")
    encodings = tokenizer.backend_tokenizer.encode_batch(list(texts), add_special_tokens=False)
    return [(encoding.ids, [start for start, _ in encoding.offsets]) for encoding in encodings]


def targets_from_spans(
    starts: Sequence[int], spans: Sequence[tuple[int, int]], text_length: int | None = None
) -> npt.NDArray[np.bool_]:
    """True for each token that holds the first character of a trained span or starts inside one.

    A token reaches up to the next token's start (the last one to `text_length`). One that starts
    before a span but holds its first character (`: Hello` -> `:`, `ĠHello` after a name ending in a
    space) is trained: it is the only token that produces that character.
    """
    first = np.asarray(starts, dtype=np.int64)
    following = np.append(first[1:], text_length if text_length is not None else np.iinfo(np.int64).max)
    targets = np.zeros(len(first), dtype=bool)
    for begin, end in spans:
        targets |= (first >= begin) & (first < end)
        if end > begin:
            targets |= (first < begin) & (following > begin)
    return targets
