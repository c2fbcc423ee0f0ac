"""The prompt-response format: JSONL rows rendered through `prompt_template`.

One example = context (the template up to the label placeholder, with optional BOS before it and
SEP after it) + answer (the label value, with optional EOS). With `answer_only_loss` only answer
tokens are targets. Too-long examples lose tokens from `truncation_field` first, evenly; only when
those are used up is the answer cut from its end. An example left with no target is dropped.
"""

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from sft_trainer.config.data import DataConfig
from sft_trainer.data.chat_context import ChatTally
from sft_trainer.data.dataset import BoolArray
from sft_trainer.data.encoding import cut, encode_texts, plan_cuts, special_id
from sft_trainer.data.errors import BadRows, DataError
from sft_trainer.data.jsonl import Row
from sft_trainer.data.templates import TEMPLATE_KEY, PromptTemplate, parse_template
from sft_trainer.data.types import IntArray

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CHUNK_ROWS = 4096
Example = tuple[IntArray, BoolArray]


@dataclass
class EncodeCounts:
    """What happened to the rows of one file (and, for chat formats, what their conversations used)."""

    rows: int = 0
    dropped: int = 0  # rows with no target left (empty answer, or truncated away)
    truncated: int = 0
    chat: ChatTally = field(default_factory=ChatTally)


@dataclass
class _Specials:
    bos: list[int] = field(default_factory=list)
    sep: list[int] = field(default_factory=list)
    eos: list[int] = field(default_factory=list)
    separators: dict[int, list[int]] = field(default_factory=dict)  # piece index -> its leading whitespace's ids


def separator_ids(template: PromptTemplate, tokenizer: "PreTrainedTokenizerBase") -> dict[int, list[int]]:
    """Token ids of the whitespace the template puts before each context placeholder (kept by a left cut)."""
    indices = [i for i, p in enumerate(template.pieces[:-1]) if p.key != TEMPLATE_KEY and p.literal]
    encoded = encode_texts(tokenizer, [template.pieces[i].literal for i in indices])
    return dict(zip(indices, encoded, strict=True))


def cut_field(ids: list[int], amount: int, method: Literal["left", "right"], separator: list[int]) -> list[int]:
    """`cut`, except that a left cut keeps the template's separator at the field's start (same length)."""
    if method != "left" or not separator or amount <= 0:
        return cut(ids, amount, method)
    kept = max(0, len(ids) - amount)
    return (separator + ids[amount + len(separator) :])[:kept]


def _specials(config: DataConfig, tokenizer: "PreTrainedTokenizerBase") -> _Specials:
    return _Specials(
        bos=[special_id(tokenizer, "bos", "data.add_bos")] if config.add_bos else [],
        sep=[special_id(tokenizer, "sep", "data.add_sep")] if config.add_sep else [],
        eos=[special_id(tokenizer, "eos", "data.add_eos")] if config.add_eos else [],
    )


def truncation_fields(config: DataConfig) -> list[str]:
    """The comma-separated `truncation_field` as a list of names."""
    return [name.strip() for name in config.truncation_field.split(",") if name.strip()]


RowRenderer = Callable[[Row, int], Any]
"""A format's rendering of one `(row, line)`; raises DataError for a bad row."""
ChunkEncoder = Callable[[list[Any]], Iterator["Example | None"]]
"""A format's tokenization of a chunk of rendered rows: one example per row, None when no target is left."""
FormatSetup = Callable[[str, DataConfig, "PreTrainedTokenizerBase", EncodeCounts], tuple[RowRenderer, ChunkEncoder]]
"""A format's per-file setup: (file, config, tokenizer, counts) -> (render a row, encode a chunk of rendered rows)."""


class Encoder:
    """The encode function of a data format: render every row, tokenize a chunk of rows at once, count.

    `encode(rows, file, config, tokenizer, bad_rows, counts)` yields the examples of one file's
    `(line, row)` pairs. A row whose rendering raises DataError is counted in `bad_rows` when given,
    else the error is raised; a row left without a target is counted as dropped. Nothing runs before
    the first example is asked for (the format's setup included).
    """

    def __init__(self, setup: FormatSetup, doc: str) -> None:
        self.setup = setup
        self.__doc__ = doc

    def __call__(
        self,
        rows: Iterable[tuple[int, Row]],
        file: str,
        config: DataConfig,
        tokenizer: "PreTrainedTokenizerBase",
        bad_rows: BadRows | None = None,
        counts: EncodeCounts | None = None,
    ) -> Iterator[Example]:
        """The examples of `rows`, in order."""
        counts = counts if counts is not None else EncodeCounts()
        render_row, encode_chunk = self.setup(file, config, tokenizer, counts)
        iterator = iter(rows)
        while chunk := list(islice(iterator, CHUNK_ROWS)):
            rendered = []
            for line, row in chunk:
                try:
                    rendered.append(render_row(row, line))
                except DataError as error:
                    if bad_rows is None:
                        raise
                    bad_rows.add(error)
            for example in encode_chunk(rendered):
                counts.rows += 1
                if example is None:
                    counts.dropped += 1
                else:
                    yield example


def _prompt_response_format(
    file: str, config: DataConfig, tokenizer: "PreTrainedTokenizerBase", counts: EncodeCounts
) -> tuple[RowRenderer, ChunkEncoder]:
    template = parse_template(config.prompt_template, config.label_key)
    specials = _specials(config, tokenizer)
    specials.separators = separator_ids(template, tokenizer)
    literal_ids: dict[str, list[int]] = {}

    def render_row(row: Row, line: int) -> list[tuple[str, str]]:
        return template.render_pieces(row, file, line)

    def encode_chunk(rendered: list[list[tuple[str, str]]]) -> Iterator[Example | None]:
        texts = [text for pieces in rendered for key, text in pieces if key != TEMPLATE_KEY]
        new_literals = sorted({t for pieces in rendered for k, t in pieces if k == TEMPLATE_KEY} - set(literal_ids))
        literal_ids.update(zip(new_literals, encode_texts(tokenizer, new_literals), strict=True))
        field_ids = iter(encode_texts(tokenizer, texts))
        for pieces in rendered:
            ids = [(key, literal_ids[text] if key == TEMPLATE_KEY else next(field_ids)) for key, text in pieces]
            yield assemble(ids, template, config, specials, counts)

    return render_row, encode_chunk


encode_prompt_response = Encoder(
    _prompt_response_format,
    "Encode `(line, row)` pairs into `(input_ids, targets)` examples, in chunks for batched tokenization.",
)


def assemble(
    pieces: list[tuple[str, list[int]]],
    template: PromptTemplate,
    config: DataConfig,
    specials: _Specials,
    counts: EncodeCounts,
) -> Example | None:
    """Join one row's token pieces into an example, truncating to `max_seq_length`; None when no target is left."""
    context = [ids for _, ids in pieces[:-1]]
    answer = pieces[-1][1] + specials.eos
    fixed = len(specials.bos) + len(specials.sep)
    excess = fixed + sum(map(len, context)) + len(answer) - config.max_seq_length
    if excess > 0:
        counts.truncated += 1
        names = set(truncation_fields(config)) - {template.label_key}
        cuttable = [i for i, (key, _) in enumerate(pieces[:-1]) if key in names]
        cuts = plan_cuts([len(context[i]) for i in cuttable], excess)
        for i, amount in zip(cuttable, cuts, strict=True):
            context[i] = cut_field(context[i], amount, config.truncation_method, specials.separators.get(i, []))
        excess -= sum(cuts)
        # Only now, with every truncation field used up, does the answer lose its end.
        before = len(answer)
        answer = cut(answer, excess, "right")
        excess -= before - len(answer)
        if excess > 0:  # the fixed context alone is too long
            return None
    prompt_length = len(specials.bos) + sum(map(len, context)) + len(specials.sep)
    input_ids = np.fromiter(
        chain(specials.bos, *context, specials.sep, answer), dtype=np.int32, count=prompt_length + len(answer)
    )
    targets = np.zeros(len(input_ids), dtype=bool)
    if config.answer_only_loss:
        targets[prompt_length:] = True
    else:
        targets[1:] = True
    if not targets[1:].any():
        return None
    return input_ids, targets


def prompt_text(config: DataConfig, user_text: str, fields: dict[str, str] | None = None) -> str:
    """The template rendered up to the label: `user_text` fills the first placeholder, `fields` the rest."""
    template = parse_template(config.prompt_template, config.label_key)
    values = dict(fields or {})
    if template.context_fields:
        values.setdefault(template.context_fields[0], user_text)
    return template.prompt(values)


def prompt_ids(
    config: DataConfig, tokenizer: "PreTrainedTokenizerBase", user_text: str, fields: dict[str, str] | None = None
) -> list[int]:
    """The context token ids exactly as training builds them (piecewise tokenization, BOS, SEP)."""
    template = parse_template(config.prompt_template, config.label_key)
    values = dict(fields or {})
    if template.context_fields:
        values.setdefault(template.context_fields[0], user_text)
    row = {key: values.get(key, "") for key in template.fields}
    pieces = template.render_pieces(row, "<prompt>", 0)[:-1]
    specials = _specials(config, tokenizer)
    ids = encode_texts(tokenizer, [text for _, text in pieces])
    return specials.bos + [token for piece in ids for token in piece] + specials.sep
