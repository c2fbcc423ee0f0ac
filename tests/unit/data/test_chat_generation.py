"""Chat prompts at inference equal, token for token, the prompt part of the training conversation.

Over every conversation of a held-out OpenAssistant split (converted from the real trees), for
every assistant turn: the ids `prompt_token_ids` builds from the system prompt, the earlier turns,
the user's message and the turn's label equal the training example's ids up to the first trained
token of that answer. With the stories260K SentencePiece tokenizer (the tiny model's) and GPT-2.
"""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sft_trainer.config import TokenizerConfig
from sft_trainer.data.chat_context import ChatDefaults, ChatTurn
from sft_trainer.data.converters import convert_oasst
from sft_trainer.data.encoding import encode_with_offsets
from sft_trainer.data.nemo_chat import encode_nemo_chat, nemo_chat_jinja, parse_conversation, render
from sft_trainer.data.prompt_response import EncodeCounts
from sft_trainer.generate import prompt_token_ids, read_history
from sft_trainer.tokenization import load_tokenizer
from tests.shared_data import shared
from tests.unit.data.conftest import data_config


@pytest.fixture(scope="module")
def held_out() -> list[dict[str, Any]]:
    groups, _ = convert_oasst(str(shared("chat/oasst_en_100_trees.jsonl")), split=0.9, seed=10)
    assert len(groups["validation"]) > 50
    return groups["validation"]


@pytest.fixture(scope="module")
def stories_tok() -> Any:
    return load_tokenizer(TokenizerConfig(type="sentencepiece", path=str(shared("models/stories260K/tok512.model"))))


def with_labels(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with SteerLM labels on every assistant turn (the tree export has none)."""
    out = []
    for row in rows:
        turns = [
            {**t, "label": f"quality:{i % 5},toxicity:0" if t["from"] == "Assistant" else None}
            for i, t in enumerate(row["conversations"])
        ]
        out.append({**row, "conversations": turns})
    return out


def answer_prompts_match(tokenizer: Any, rows: list[dict[str, Any]], **knobs: Any) -> int:
    """Check every assistant turn of `rows`; returns how many were compared."""
    config = data_config(format="nemo_chat", max_seq_length=1_000_000, **knobs)
    counts = EncodeCounts()
    examples = list(encode_nemo_chat(enumerate(rows, 1), "val.jsonl", config, tokenizer, None, counts))
    assert len(examples) == len(rows)
    defaults = ChatDefaults.from_stats(counts.chat.most_common())
    bos = 1 if config.add_bos else 0
    compared = 0
    for line, (row, (ids, targets)) in enumerate(zip(rows, examples, strict=True), 1):
        conversation = parse_conversation(row, "val.jsonl", line)
        full_text, _ = render(conversation, config.chat_prompt_tokens)
        [(_, starts)] = encode_with_offsets(tokenizer, [full_text])
        following = np.append(np.asarray(starts[1:]), len(full_text))
        turns = conversation.turns
        for k in range(1, len(turns)):
            if turns[k].speaker == conversation.mask_role:
                continue
            upto, _ = render(
                conversation.__class__(**{**conversation.__dict__, "turns": turns[: k + 1]}), config.chat_prompt_tokens
            )
            answer_at = len(upto) - len(
                turns[k].value + config.chat_prompt_tokens.end_of_turn + config.chat_prompt_tokens.turn_start
            )
            first = next(i for i in range(len(starts)) if targets[bos + i] and following[i] > answer_at)
            history = [
                ChatTurn("user" if t.speaker == conversation.mask_role else "assistant", t.value, t.label)
                for t in turns[: k - 1]
            ]
            generated = prompt_token_ids(
                config,
                tokenizer,
                turns[k - 1].value,
                history=history,
                system=conversation.system,
                label=turns[k].label or "",
                defaults=defaults,
            )
            assert generated == ids[: bos + first].tolist(), (line, k)
            compared += 1
    return compared


def test_prompts_equal_training_over_a_held_out_oasst_file(
    held_out: list[dict[str, Any]], stories_tok: Any, gpt2_tok: Any
) -> None:
    assert answer_prompts_match(stories_tok, held_out) > 60
    assert answer_prompts_match(gpt2_tok, held_out) > 60
    assert answer_prompts_match(stories_tok, with_labels(held_out), add_bos=True) > 60
    assert answer_prompts_match(gpt2_tok, with_labels(held_out), chat_prompt_tokens={"end_of_name": ": "}) > 60


def test_defaults_are_what_training_used_most(held_out: list[dict[str, Any]], gpt2_tok: Any) -> None:
    rows = with_labels(held_out)
    counts = EncodeCounts()
    list(encode_nemo_chat(enumerate(rows, 1), "v.jsonl", data_config(format="nemo_chat"), gpt2_tok, None, counts))
    chat = counts.chat.most_common()
    assert chat["system"] == held_out[0]["system"] and chat["type"] == "VALUE_TO_TEXT"
    assert chat["label"].startswith("quality:") and (chat["user"], chat["assistant"]) == ("User", "Assistant")
    config = data_config(format="nemo_chat")
    ids = prompt_token_ids(config, gpt2_tok, "hi", defaults=ChatDefaults.from_stats(chat))
    text = gpt2_tok.decode(ids)
    assert text.startswith("\x00System\n" + chat["system"]) and text.endswith(f"\x11Assistant\n\x12{chat['label']}\n")
    assert gpt2_tok.decode(
        prompt_token_ids(config, gpt2_tok, "hi", label="", system="", defaults=ChatDefaults.from_stats(chat))
    ) == ("\x00System\n\n\x11User\nhi\n\x11Assistant\n")


def test_the_exported_jinja_template_renders_what_training_rendered(
    held_out: list[dict[str, Any]], gpt2_tok: Any
) -> None:
    config = data_config(format="nemo_chat")
    rows = with_labels(held_out)
    defaults = ChatDefaults(system=rows[0]["system"], label="quality:4,toxicity:0", type="VALUE_TO_TEXT")
    template = nemo_chat_jinja(config, defaults)
    for line, row in enumerate(rows, 1):
        conversation = parse_conversation(row, "v", line)
        messages = [{"role": "system", "content": conversation.system}] + [
            {"role": "user" if t.speaker == "User" else "assistant", "content": t.value, "label": t.label}
            for t in conversation.turns
        ]
        rendered = gpt2_tok.apply_chat_template(messages, chat_template=template, tokenize=False)
        assert rendered == render(conversation, config.chat_prompt_tokens)[0]
        ask = messages[:-1] if conversation.turns[-1].speaker != "User" else messages
        prompt = gpt2_tok.apply_chat_template(ask, chat_template=template, tokenize=False, add_generation_prompt=True)
        assert prompt == gpt2_tok.decode(
            prompt_token_ids(
                config,
                gpt2_tok,
                str(ask[-1]["content"]),
                history=read_history(json.dumps(ask[:-1])),
                system=conversation.system,
                defaults=defaults,
            )
        )


def test_history_reads_nemo_turns_hf_messages_and_rows(tmp_path: Path) -> None:
    nemo = [{"from": "User", "value": "a"}, {"from": "Assistant", "value": "b", "label": "q:1"}]
    assert read_history(json.dumps(nemo)) == [ChatTurn("user", "a"), ChatTurn("assistant", "b", "q:1")]
    hf = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "a"}]}
    path = tmp_path / "h.json"
    path.write_text(json.dumps(hf))
    assert read_history(str(path)) == [ChatTurn("user", "a")]
    with pytest.raises(ValueError, match="not valid JSON"):
        read_history("[oops")
    with pytest.raises(ValueError, match="turn 0"):
        read_history('[{"x": 1}]')


def test_a_label_is_refused_for_a_chat_template_model(gpt2_tok: Any) -> None:
    from sft_trainer.data.generation import prompt_for_generation

    chat = data_config(format="hf_chat", chat_template=str(shared("chat_templates/Qwen-Qwen2.5-7B-Instruct.jinja")))
    with pytest.raises(ValueError, match="NeMo chat format only"):
        prompt_for_generation(chat, "hi", tokenizer=gpt2_tok, label="quality:4")
    assert prompt_for_generation(chat, "hi", tokenizer=gpt2_tok, label="").endswith("<|im_start|>assistant\n")
