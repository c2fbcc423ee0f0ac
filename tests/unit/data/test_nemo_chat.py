"""NeMo chat: the rendered text and exactly which tokens carry loss, for every mask_role and type.

With the byte tokenizer one token is one character, so the trained tokens read back as text.
Chat tokens are the defaults: system \\x00, turn start \\x11, label start \\x12, ends \\n.
"""

from typing import Any

import numpy as np
import pytest

from sft_trainer.data.chat_context import ChatDefaults, ChatTurn
from sft_trainer.data.converters import convert_oasst
from sft_trainer.data.errors import DataError
from sft_trainer.data.nemo_chat import encode_nemo_chat, nemo_chat_prompt, parse_conversation, render
from sft_trainer.data.prompt_response import EncodeCounts
from tests.shared_data import shared
from tests.unit.data.conftest import data_config, trained_segments

TURNS = [
    {"from": "User", "value": "hi", "label": None},
    {"from": "Assistant", "value": "yo", "label": "q:4"},
    {"from": "User", "value": "ok", "label": None},
    {"from": "Assistant", "value": "fine", "label": "q:3"},
]


def row(kind: str | None, mask: str = "User", turns: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"system": "S", "mask": mask, "type": kind, "conversations": turns or TURNS}


def encode(
    tokenizer: Any, rows: list[dict[str, Any]], **knobs: Any
) -> tuple[list[tuple[np.ndarray, np.ndarray]], EncodeCounts]:
    counts = EncodeCounts()
    config = data_config(format="nemo_chat", **knobs)
    return list(encode_nemo_chat(enumerate(rows, 1), "chat.jsonl", config, tokenizer, None, counts)), counts


def test_value_to_text_rendering_and_mask(byte_tok: Any) -> None:
    [(ids, targets)], _ = encode(byte_tok, [row("VALUE_TO_TEXT")])
    assert byte_tok.decode(ids) == (
        "\x00System\nS\n\x11User\nhi\n\x11Assistant\n\x12q:4\nyo\n\x11User\nok\n\x11Assistant\n\x12q:3\nfine\n\x11"
    )
    # Assistant values and their end of turn; the masked role's turn start (turn 2) and the final
    # turn start are trained; the header, turn 0, names and labels are not.
    assert trained_segments(byte_tok, ids, targets) == ["yo\n\x11", "fine\n\x11"]


def test_type_null_ignores_labels(byte_tok: Any) -> None:
    [(ids, targets)], _ = encode(byte_tok, [row(None)])
    assert "\x12" not in byte_tok.decode(ids)
    assert trained_segments(byte_tok, ids, targets) == ["yo\n\x11", "fine\n\x11"]


def test_text_to_value_trains_the_labels(byte_tok: Any) -> None:
    [(ids, targets)], _ = encode(byte_tok, [row("TEXT_TO_VALUE")])
    assert byte_tok.decode(ids) == (
        "\x00System\nS\n\x11User\nhi\n\x11Assistant\nyo\n\x12q:4\n\x11User\nok\n\x11Assistant\nfine\n\x12q:3\n\x11"
    )
    assert trained_segments(byte_tok, ids, targets) == ["q:4\n\x11", "q:3\n\x11"]


def test_masking_the_assistant_value_to_text(byte_tok: Any) -> None:
    [(ids, targets)], _ = encode(byte_tok, [row("VALUE_TO_TEXT", mask="Assistant")])
    # turn 0 is context, turn 1 is the masked role at i <= 1 (nothing), turn 2 trains its value,
    # turn 3 (masked, i > 1) only its turn start; no final turn start after a masked last turn.
    assert trained_segments(byte_tok, ids, targets) == ["ok\n\x11"]
    assert not byte_tok.decode(ids).endswith("\n\x11")


def test_masking_the_assistant_text_to_value(byte_tok: Any) -> None:
    [(ids, targets)], _ = encode(byte_tok, [row("TEXT_TO_VALUE", mask="Assistant")])
    # with TEXT_TO_VALUE turn 0 is trained (after its name), and the masked turn 1 keeps its turn start.
    assert trained_segments(byte_tok, ids, targets) == ["hi\n\x11", "ok\n\x11"]


def test_text_to_value_turn_without_label_trains_its_value(byte_tok: Any) -> None:
    turns: list[dict[str, Any]] = [{"from": "User", "value": "hi"}, {"from": "Assistant", "value": "yo", "label": None}]
    [(ids, targets)], _ = encode(byte_tok, [row("TEXT_TO_VALUE", turns=turns)])
    assert trained_segments(byte_tok, ids, targets) == ["yo\n\x11"]


def test_custom_chat_tokens(byte_tok: Any) -> None:
    tokens = {
        "system_turn_start": "<S>",
        "turn_start": "<T>",
        "label_start": "<L>",
        "end_of_turn": "|",
        "end_of_name": ":",
    }
    [(ids, targets)], _ = encode(byte_tok, [row("VALUE_TO_TEXT")], chat_prompt_tokens=tokens)
    assert byte_tok.decode(ids).startswith("<S>System:S|<T>User:hi|<T>Assistant:<L>q:4:yo|")
    assert trained_segments(byte_tok, ids, targets) == ["yo|<T>", "fine|<T>"]


def test_empty_mask_is_dropped_and_counted(byte_tok: Any) -> None:
    user_only = [{"from": "User", "value": "a"}, {"from": "User", "value": "b"}]
    examples, counts = encode(byte_tok, [row("VALUE_TO_TEXT", turns=user_only), row("VALUE_TO_TEXT")])
    assert len(examples) == 1 and counts.dropped == 1


def test_truncation_cuts_the_end_and_drops_when_nothing_is_trained(byte_tok: Any) -> None:
    [(ids, targets)], counts = encode(byte_tok, [row("VALUE_TO_TEXT")], max_seq_length=40)
    assert len(ids) == 40 and counts.truncated == 1
    assert trained_segments(byte_tok, ids, targets) == ["yo\n\x11"]
    examples, counts = encode(byte_tok, [row("VALUE_TO_TEXT")], max_seq_length=20)
    assert examples == [] and counts.dropped == 1


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"system": "S"}, "conversations"),
        ({"conversations": []}, "conversations"),
        ({"conversations": [{"from": "User"}]}, "conversations[0].value"),
        ({"conversations": [{"from": "User", "value": 3}]}, "conversations[0].value"),
        ({"conversations": [{"from": "User", "value": "a", "label": 1}]}, "conversations[0].label"),
        ({"type": "OTHER", "conversations": TURNS}, "type"),
        ({"mask": "Nobody", "conversations": TURNS}, "mask"),
    ],
)
def test_bad_rows_name_the_field(bad: dict[str, Any], field: str) -> None:
    with pytest.raises(DataError) as caught:
        parse_conversation(bad, "chat.jsonl", 7)
    assert (caught.value.file, caught.value.line, caught.value.field) == ("chat.jsonl", 7, field)


def test_generation_prompt_matches_the_training_rendering() -> None:
    config = data_config(format="nemo_chat")
    prompt = nemo_chat_prompt(config, [ChatTurn("user", "hi")], "S", ChatDefaults(), None)
    text, spans = render(parse_conversation(row(None), "x", 1), config.chat_prompt_tokens)
    assert prompt == "\x00System\nS\n\x11User\nhi\n\x11Assistant\n"
    assert text.startswith(prompt) and text[spans[0][0] :].startswith("yo")


def test_oasst_conversations_train_exactly_the_assistant_turns(gpt2_tok: Any) -> None:
    groups, _ = convert_oasst(str(shared("chat/oasst_en_100_trees.jsonl")))
    rows = groups["all"]
    examples, counts = encode(gpt2_tok, rows, max_seq_length=1_000_000)
    assert counts.dropped == 0 and len(examples) == len(rows) == 626
    for conversation, (ids, targets) in zip(rows, examples, strict=True):
        turns = conversation["conversations"]
        expected = ""
        for i, turn in enumerate(turns):
            if turn["from"] == "Assistant" and i > 0:
                expected += turn["value"] + "\n"
            elif turn["from"] == "User" and i > 1:
                expected += "\x11"
        if turns[-1]["from"] == "Assistant":
            expected += "\x11"
        assert "".join(trained_segments(gpt2_tok, ids, targets)) == expected


def test_an_end_of_name_ending_in_a_space_trains_the_first_answer_token(gpt2_tok: Any) -> None:
    tokens = {"end_of_name": ": ", "end_of_turn": "\n"}
    conversation = row(
        None,
        turns=[
            {"from": "User", "value": "Hi", "label": None},
            {"from": "Assistant", "value": "Hello there", "label": None},
        ],
    )
    [(ids, targets)] = list(
        encode_nemo_chat(
            enumerate([conversation], 1),
            "c.jsonl",
            data_config(format="nemo_chat", chat_prompt_tokens=tokens),
            gpt2_tok,
        )
    )
    pieces = gpt2_tok.convert_ids_to_tokens([int(i) for i in ids])
    first_answer = pieces.index("ĠHello")  # the name's space and "Hello" are one token
    assert targets[first_answer] and not targets[first_answer - 1]
    assert trained_segments(gpt2_tok, ids, targets)[0].startswith(" Hello there\n")
