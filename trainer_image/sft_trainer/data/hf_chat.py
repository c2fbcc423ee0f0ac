"""Hugging Face chat data: `{"messages": [{"role", "content"}, ...]}` rendered by a Jinja chat template.

The template comes from `data.chat_template` (a `.jinja` file) or the tokenizer. Rendering goes
through `tokenizer.apply_chat_template`. Real templates carry no `{% generation %}` markers, so we
find each assistant message in the rendered text ourselves: its content, located after the text the
template renders before it, plus the end-of-turn text the template appends to it (`<|im_end|>`,
`<|eot_id|>`, `</s>`, ...). Those characters carry loss with answer-only loss; the generation prompt
(`<|im_start|>assistant\\n`) and everything else do not.
"""

import os
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sft_trainer.config.data import DataConfig
from sft_trainer.data.chat_context import ChatTally
from sft_trainer.data.encoding import encode_with_offsets
from sft_trainer.data.errors import DataError
from sft_trainer.data.jsonl import Row
from sft_trainer.data.nemo_chat import Span, chat_format
from sft_trainer.data.prompt_response import Encoder

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Message = dict[str, Any]
ROLES = ("system", "user", "assistant", "tool")


@cache
def _read_template(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise DataError(
            f"cannot read the chat template ({error.strerror})", file=path, field="data.chat_template"
        ) from None


def chat_template(config: DataConfig, tokenizer: "PreTrainedTokenizerBase") -> str:
    """The Jinja template: `data.chat_template`'s file, else the tokenizer's own."""
    if config.chat_template:
        return _read_template(config.chat_template)
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not template:
        raise DataError(
            "the tokenizer has no chat template; set data.chat_template to a .jinja file", field="data.chat_template"
        )
    return template


def parse_messages(row: Row, file: str, line: int) -> list[Message]:
    """Validate `row["messages"]`; DataError names file:line and the field."""
    if "messages" not in row:
        raise DataError("missing field", file=file, line=line, field="messages")
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataError("expected a non-empty list of messages", file=file, line=line, field="messages")
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise DataError(f"expected an object, got {type(message).__name__}", file=file, line=line, field=where)
        for key in ("role", "content"):
            if key not in message:
                raise DataError("missing field", file=file, line=line, field=f"{where}.{key}")
            if not isinstance(message[key], str):
                raise DataError(
                    f"expected a string, got {type(message[key]).__name__}",
                    file=file,
                    line=line,
                    field=f"{where}.{key}",
                )
        if message["role"] not in ROLES:
            raise DataError(f"unknown role {message['role']!r}", file=file, line=line, field=f"{where}.role")
    return messages


def _render(tokenizer: "PreTrainedTokenizerBase", template: str, messages: list[Message], generation: bool) -> str:
    text = tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=generation
    )
    assert isinstance(text, str)
    return text


def render_with_spans(
    tokenizer: "PreTrainedTokenizerBase", template: str, messages: list[Message]
) -> tuple[str, list[Span]]:
    """The rendered conversation and the character spans of its assistant messages (+ end-of-turn text)."""
    full = _render(tokenizer, template, messages, generation=False)
    spans: list[Span] = []
    cursor = 0
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, template, messages[:index], generation=True) if index else ""
        if full.startswith(before):
            cursor = max(cursor, len(before))
        through = _render(tokenizer, template, messages[: index + 1], generation=False)
        content = message["content"]
        if content not in through:
            content = content.strip()  # templates such as Gemma's trim the content
        start = full.find(content, cursor)
        if start < 0 or content not in through:
            raise ValueError(f"the template does not render assistant message {index} verbatim")
        suffix = through[through.rfind(content) + len(content) :]
        end = start + len(content)
        end += common_token_prefix(tokenizer, suffix, full[end:])
        spans.append((start, end))
        cursor = end
    return full, spans


def common_token_prefix(tokenizer: "PreTrainedTokenizerBase", expected: str, actual: str) -> int:
    """How much of `expected` starts `actual`, in characters, backed off to a token boundary of `expected`.

    Finds how much of a message's end-of-turn text (`<|end|>\n<|endoftext|>` when the message is
    last) the full conversation repeats (`<|end|>\n<|user|>...`) without keeping half a token (`<|`).
    """
    same = len(os.path.commonprefix([expected, actual]))  # noqa: RUF071 - characters are what we compare
    if same == len(expected):
        return same
    [(_, starts)] = encode_with_offsets(tokenizer, [expected])
    return max((start for start in starts if start <= same), default=0)


def _hf_chat_rows(
    file: str, config: DataConfig, tokenizer: "PreTrainedTokenizerBase", chat: ChatTally
) -> Callable[[Row, int], tuple[str, list[Span]]]:
    template = chat_template(config, tokenizer)

    def render_row(row: Row, line: int) -> tuple[str, list[Span]]:
        messages = parse_messages(row, file, line)
        chat.systems[messages[0]["content"] if messages[0]["role"] == "system" else ""] += 1
        try:
            return render_with_spans(tokenizer, template, messages)
        except Exception as error:  # jinja2's raise_exception and template errors
            raise DataError(f"chat template failed: {error}", file=file, line=line, field="messages") from None

    return render_row


encode_hf_chat = Encoder(
    chat_format(_hf_chat_rows, add_bos=False),
    "Encode `messages` rows into `(input_ids, targets)` examples with assistant-only targets.",
)


def hf_chat_prompt(config: DataConfig, tokenizer: "PreTrainedTokenizerBase", messages: list[Message]) -> str:
    """The chat template rendered with the generation prompt: what the model continues."""
    return _render(tokenizer, chat_template(config, tokenizer), messages, generation=True)
