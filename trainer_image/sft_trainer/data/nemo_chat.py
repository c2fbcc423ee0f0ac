"""The NeMo chat format (NeMo-Aligner's `GPTSFTChatDataset`), with its masks reproduced exactly.

A row: `{"system": str, "mask": "User", "type": "VALUE_TO_TEXT"|"TEXT_TO_VALUE"|null,
"conversations": [{"from": "User"|"Assistant"|..., "value": str, "label": str|null}, ...]}`.

Rendering (S = system_turn_start, T = turn_start, L = label_start, E = end_of_turn, N = end_of_name):

    header   = S + "System" + N + system + E
    turn     = T + name + N + value + E                       (type null)
             = T + name + N + [L + label + N] + value + E     (VALUE_TO_TEXT; [..] only for a str label)
             = T + name + N + value + E + [L + label + N]     (TEXT_TO_VALUE)
    and one more T at the very end when the last speaker is not the masked role.

Which tokens carry loss (turn i counts from 0; "masked role" is the row's `mask`):

- the header never;
- turn 0 never when type is VALUE_TO_TEXT or null (it is the context for the rest);
- a masked-role turn: only its leading T, and only when i > 1, or i == 1 with TEXT_TO_VALUE;
  otherwise (i <= 1) none of it;
- any other turn: everything after the name part, except that VALUE_TO_TEXT also skips the label
  part (L + label + N), and TEXT_TO_VALUE trains only what follows L (the label and its N);
- the final T after an unmasked last turn always (the model learns to hand the turn back).

We compute these spans on characters and map them to tokens by their start offsets, tokenizing the
whole conversation once (as NeMo does). Unlike NeMo, a conversation whose mask ends up empty (for
example a User-only thread, or one truncated to its context) is dropped and counted, never trained
on with a zero denominator; `add_eos`/`add_sep` do not apply (the format ends turns itself), `add_bos`
does. Too-long conversations are cut at `max_seq_length` from the end.
"""

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sft_trainer.config.data import ChatPromptTokens, DataConfig
from sft_trainer.data.chat_context import ChatDefaults, ChatTally, ChatTurn
from sft_trainer.data.encoding import encode_with_offsets, special_id, targets_from_spans
from sft_trainer.data.errors import DataError
from sft_trainer.data.jsonl import Row
from sft_trainer.data.prompt_response import ChunkEncoder, EncodeCounts, Encoder, Example, FormatSetup, RowRenderer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SYSTEM_NAME = "System"
TYPES = ("VALUE_TO_TEXT", "TEXT_TO_VALUE")
Span = tuple[int, int]


@dataclass(frozen=True)
class Turn:
    """One validated turn."""

    speaker: str
    value: str
    label: str | None


@dataclass(frozen=True)
class Conversation:
    """One validated NeMo chat row."""

    system: str
    mask_role: str
    type: str | None
    turns: tuple[Turn, ...]


def parse_conversation(row: Row, file: str, line: int) -> Conversation:
    """Validate a NeMo chat row; DataError names file:line and the field."""

    def fail(message: str, field: str) -> DataError:
        return DataError(message, file=file, line=line, field=field)

    system = row.get("system", "")
    if not isinstance(system, str):
        raise fail(f"expected a string, got {type(system).__name__}", "system")
    mask_role = row.get("mask", "User")
    if not isinstance(mask_role, str):
        raise fail(f"expected a string, got {type(mask_role).__name__}", "mask")
    kind = row.get("type")
    if kind is not None and kind not in TYPES:
        raise fail(f"expected one of {', '.join(TYPES)} or null, got {kind!r}", "type")
    if "conversations" not in row:
        raise fail("missing field", "conversations")
    raw_turns = row["conversations"]
    if not isinstance(raw_turns, list) or not raw_turns:
        raise fail("expected a non-empty list of turns", "conversations")
    turns = []
    for index, turn in enumerate(raw_turns):
        where = f"conversations[{index}]"
        if not isinstance(turn, dict):
            raise fail(f"expected an object, got {type(turn).__name__}", where)
        for key in ("from", "value"):
            if key not in turn:
                raise fail("missing field", f"{where}.{key}")
            if not isinstance(turn[key], str):
                raise fail(f"expected a string, got {type(turn[key]).__name__}", f"{where}.{key}")
        label = turn.get("label")
        if label is not None and not isinstance(label, str):
            raise fail(f"expected a string or null, got {type(label).__name__}", f"{where}.label")
        turns.append(Turn(turn["from"], turn["value"], label))
    if mask_role not in {t.speaker for t in turns}:
        raise fail(f"mask role {mask_role!r} speaks no turn", "mask")
    return Conversation(system=system, mask_role=mask_role, type=kind, turns=tuple(turns))


def render_header(conversation: Conversation, tokens: ChatPromptTokens) -> str:
    """The system header."""
    return f"{tokens.system_turn_start}{SYSTEM_NAME}{tokens.end_of_name}{conversation.system}{tokens.end_of_turn}"


def turn_parts(turn: Turn, kind: str | None, tokens: ChatPromptTokens) -> tuple[str, str, str]:
    """(name part, label part, body) of a turn; the label part is empty for type null or a null label."""
    name = f"{tokens.turn_start}{turn.speaker}{tokens.end_of_name}"
    label = f"{tokens.label_start}{turn.label}{tokens.end_of_name}" if turn.label is not None and kind else ""
    return name, label, turn.value + tokens.end_of_turn


def render(conversation: Conversation, tokens: ChatPromptTokens) -> tuple[str, list[Span]]:
    """The conversation text and the character spans that carry loss (see the module docstring)."""
    text = render_header(conversation, tokens)
    spans: list[Span] = []
    kind = conversation.type
    for i, turn in enumerate(conversation.turns):
        start = len(text)
        name, label, body = turn_parts(turn, kind, tokens)
        piece = name + body + label if kind == "TEXT_TO_VALUE" else name + label + body
        text += piece
        end = len(text)
        if i == 0 and kind != "TEXT_TO_VALUE":
            continue  # the first turn is context
        if turn.speaker == conversation.mask_role:
            if i > 1 or (i == 1 and kind == "TEXT_TO_VALUE"):
                spans.append((start, start + len(tokens.turn_start)))  # the turn start ends the previous turn
            continue
        skip = len(name)
        if label and kind == "VALUE_TO_TEXT":
            skip += len(label)
        elif label and kind == "TEXT_TO_VALUE":
            skip += len(body) + len(tokens.label_start)
        spans.append((start + skip, end))
    if conversation.turns[-1].speaker != conversation.mask_role:
        spans.append((len(text), len(text) + len(tokens.turn_start)))
        text += tokens.turn_start
    return text, spans


RowsRenderer = Callable[
    [str, DataConfig, "PreTrainedTokenizerBase", ChatTally], Callable[[Row, int], tuple[str, list[Span]]]
]
"""A chat format's per-file setup: (file, config, tokenizer, tally) -> render one `(row, line)` to (text, trained spans)."""


def chat_format(rows_renderer: RowsRenderer, add_bos: bool) -> FormatSetup:
    """The chat formats' shared path: render each row to (text, trained spans), tokenize a chunk of
    rows at once, and turn spans into targets (BOS first when `add_bos` and `data.add_bos`)."""

    def setup(
        file: str, config: DataConfig, tokenizer: "PreTrainedTokenizerBase", counts: EncodeCounts
    ) -> tuple[RowRenderer, ChunkEncoder]:
        bos = [special_id(tokenizer, "bos", "data.add_bos")] if add_bos and config.add_bos else []
        render_row = rows_renderer(file, config, tokenizer, counts.chat)

        def encode_chunk(rendered: list[tuple[str, list[Span]]]) -> Iterator[Example | None]:
            encoded = encode_with_offsets(tokenizer, [text for text, _ in rendered])
            for (text, spans), (ids, starts) in zip(rendered, encoded, strict=True):
                yield finish(ids, starts, spans, bos, config, counts, len(text))

        return render_row, encode_chunk

    return setup


def _nemo_chat_rows(
    file: str, config: DataConfig, tokenizer: "PreTrainedTokenizerBase", chat: ChatTally
) -> Callable[[Row, int], tuple[str, list[Span]]]:
    del tokenizer  # NeMo's chat tokens are text; the whole conversation is tokenized at once

    def render_row(row: Row, line: int) -> tuple[str, list[Span]]:
        conversation = parse_conversation(row, file, line)
        tally(conversation, chat)
        return render(conversation, config.chat_prompt_tokens)

    return render_row


encode_nemo_chat = Encoder(
    chat_format(_nemo_chat_rows, add_bos=True), "Encode NeMo chat rows into `(input_ids, targets)` examples."
)


def finish(
    ids: list[int],
    starts: list[int],
    spans: list[Span],
    bos: list[int],
    config: DataConfig,
    counts: EncodeCounts,
    text_length: int | None = None,
) -> Example | None:
    """Targets from spans (all tokens without answer-only loss), BOS, truncation; None if no target is left."""
    if config.answer_only_loss:
        targets = targets_from_spans(starts, spans, text_length)
    else:
        targets = np.ones(len(ids), dtype=bool)
    input_ids = np.array(bos + ids, dtype=np.int32)
    targets = np.concatenate([np.zeros(len(bos), dtype=bool), targets])
    if len(input_ids) > config.max_seq_length:
        counts.truncated += 1
        input_ids, targets = input_ids[: config.max_seq_length], targets[: config.max_seq_length]
    if not targets[1:].any():
        return None
    return input_ids, targets


def tally(conversation: Conversation, chat: ChatTally) -> None:
    """Count what a training conversation uses (for the generation defaults)."""
    chat.systems[conversation.system] += 1
    chat.types[conversation.type] += 1
    chat.users[conversation.mask_role] += 1
    for turn in conversation.turns:
        if turn.speaker != conversation.mask_role:
            chat.assistants[turn.speaker] += 1
            chat.labels[turn.label] += 1


def nemo_chat_prompt(
    config: DataConfig, turns: Sequence[ChatTurn], system: str, defaults: ChatDefaults, label: str | None
) -> str:
    """The text that precedes the next assistant answer after `turns`, as in training.

    The conversation type and role names are the training data's (`defaults`); a VALUE_TO_TEXT
    answer starts with its label line when `label` is given (earlier assistant turns use their own
    label, else `defaults.label`). Trailing spaces of the name part are left to the model: training
    tokenizes them with the answer's first word.
    """
    tokens = config.chat_prompt_tokens
    kind = defaults.type if defaults.type == "VALUE_TO_TEXT" else None
    past = tuple(
        Turn(defaults.user, t.text, None)
        if t.role == "user"
        else Turn(defaults.assistant, t.text, t.label if t.label is not None else defaults.label)
        for t in turns
    )
    conversation = Conversation(system=system, mask_role=defaults.user, type=kind, turns=past)
    text, _ = render(conversation, tokens)  # ends with the user's turn: no closing turn start
    return text + answer_start(tokens, defaults.assistant, kind, label)


def answer_start(tokens: ChatPromptTokens, assistant: str, kind: str | None, label: str | None) -> str:
    """The assistant's name part and label line, without trailing spaces (the answer's first token holds them)."""
    name, label_part, _ = turn_parts(Turn(assistant, "", label), kind, tokens)
    return (name + label_part).rstrip(" ")


def _jinja_literal(text: str) -> str:
    """A Jinja string literal of `text` (Jinja decodes literals with Python's unicode escapes)."""
    return "'" + text.encode("unicode_escape").decode("ascii").replace("'", "\\'") + "'"


def nemo_chat_jinja(config: DataConfig, defaults: ChatDefaults) -> str:
    """A Hugging Face chat template that renders the NeMo chat format as training did.

    `apply_chat_template(messages, add_generation_prompt=True)` gives `nemo_chat_prompt`'s text: the
    default system prompt unless the messages start with one, the default label line on assistant
    turns (VALUE_TO_TEXT; a message's own `label` wins), the final turn start after an assistant-last
    conversation, BOS when `data.add_bos` is set.
    """
    tokens = config.chat_prompt_tokens
    kind = defaults.type if defaults.type == "VALUE_TO_TEXT" else None
    with_label = kind is not None and defaults.label is not None
    name_user = f"{tokens.turn_start}{defaults.user}{tokens.end_of_name}"
    name_assistant = f"{tokens.turn_start}{defaults.assistant}{tokens.end_of_name}"
    default_label = defaults.label or ""
    answer = answer_start(tokens, defaults.assistant, kind, defaults.label if with_label else None)
    lines = [
        "{%- set E = " + _jinja_literal(tokens.end_of_turn) + " -%}",
        "{%- if messages and messages[0]['role'] == 'system' -%}",
        "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}",
        "{%- else -%}",
        "{%- set system = " + _jinja_literal(defaults.system) + " -%}{%- set turns = messages -%}",
        "{%- endif -%}",
        ("{{- bos_token -}}" if config.add_bos else ""),
        "{{- " + _jinja_literal(f"{tokens.system_turn_start}{SYSTEM_NAME}{tokens.end_of_name}") + " + system + E -}}",
        "{%- for message in turns -%}",
        "{%- if message['role'] == 'user' -%}",
        "{{- " + _jinja_literal(name_user) + " + message['content'] + E -}}",
        "{%- else -%}",
        "{{- " + _jinja_literal(name_assistant) + " -}}",
    ]
    if with_label:
        lines += [
            "{%- set label = message['label'] if message['label'] is defined and message['label'] is not none else "
            + _jinja_literal(default_label)
            + " -%}",
            "{{- " + _jinja_literal(tokens.label_start) + " + label + " + _jinja_literal(tokens.end_of_name) + " -}}",
        ]
    lines += [
        "{{- message['content'] + E -}}",
        "{%- endif -%}",
        "{%- endfor -%}",
        "{%- if add_generation_prompt -%}{{- " + _jinja_literal(answer) + " -}}",
        "{%- elif turns and turns[-1]['role'] != 'user' -%}{{- " + _jinja_literal(tokens.turn_start) + " -}}",
        "{%- endif -%}",
    ]
    return "\n".join(line for line in lines if line) + "\n"
