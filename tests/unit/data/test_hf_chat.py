"""HF chat templates (the real ones in ../shared/data/chat_templates): assistant-only masks."""

from typing import Any

import numpy as np
import pytest

from sft_trainer.data.errors import DataError
from sft_trainer.data.hf_chat import encode_hf_chat, hf_chat_prompt
from sft_trainer.data.prompt_response import EncodeCounts
from tests.shared_data import shared
from tests.unit.data.conftest import data_config, trained_segments

MESSAGES = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "It is 4."},
]

# What each template appends to an assistant message (and at the very end of the conversation).
EXPECTED = {
    "Qwen-Qwen2.5-7B-Instruct": (["Hello! How can I help?<|im_end|>\n", "It is 4.<|im_end|>\n"]),
    "google-gemma-2-2b-it": (["Hello! How can I help?<end_of_turn>\n", "It is 4.<end_of_turn>\n"]),
    "meta-llama-Llama-3.1-8B-Instruct": (["Hello! How can I help?<|eot_id|>", "It is 4.<|eot_id|>"]),
    # Phi appends eos only after the last message.
    "microsoft-Phi-3.5-mini-instruct": (["Hello! How can I help?<|end|>\n", "It is 4.<|end|>\n<|endoftext|>"]),
    # Mistral's eos is the GPT-2 test tokenizer's <|endoftext|>.
    "mistralai-Mistral-Nemo-Instruct-2407": (["Hello! How can I help?<|endoftext|>", "It is 4.<|endoftext|>"]),
}


# The templates' markers are single special tokens in their real tokenizers; give them to GPT-2 too.
MARKERS = {
    "Qwen-Qwen2.5-7B-Instruct": ["<|im_start|>", "<|im_end|>"],
    "google-gemma-2-2b-it": ["<start_of_turn>", "<end_of_turn>"],
    "meta-llama-Llama-3.1-8B-Instruct": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    "microsoft-Phi-3.5-mini-instruct": ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
    "mistralai-Mistral-Nemo-Instruct-2407": ["[INST]", "[/INST]"],
}


@pytest.fixture(scope="module")
def template_toks() -> dict[str, Any]:
    from sft_trainer.config import TokenizerConfig
    from sft_trainer.tokenization import load_tokenizer

    out = {}
    for name, markers in MARKERS.items():
        tokenizer = load_tokenizer(TokenizerConfig(type="gpt2_bpe", path=str(shared("tokenizers/gpt2"))))
        tokenizer.add_special_tokens({"additional_special_tokens": markers})
        out[name] = tokenizer
    return out


def encode(
    tokenizer: Any, rows: list[dict[str, Any]], template: str, **knobs: Any
) -> tuple[list[tuple[np.ndarray, np.ndarray]], EncodeCounts]:
    counts = EncodeCounts()
    config = data_config(format="hf_chat", chat_template=str(shared(f"chat_templates/{template}.jinja")), **knobs)
    return list(encode_hf_chat(enumerate(rows, 1), "chat.jsonl", config, tokenizer, None, counts)), counts


@pytest.mark.parametrize("template", sorted(EXPECTED))
def test_only_assistant_messages_carry_loss(template_toks: dict[str, Any], template: str) -> None:
    gpt2_tok = template_toks[template]
    [(ids, targets)], _ = encode(gpt2_tok, [{"messages": MESSAGES}], template)
    assert trained_segments(gpt2_tok, ids, targets) == EXPECTED[template]
    text = gpt2_tok.decode(ids)
    assert "Hi there" in text and "What is 2+2?" in text
    assert not any("Hi there" in s or "2+2" in s for s in trained_segments(gpt2_tok, ids, targets))


@pytest.mark.parametrize("template", sorted(EXPECTED))
def test_generation_prompt_is_the_training_prefix(gpt2_tok: Any, template: str) -> None:
    config = data_config(format="hf_chat", chat_template=str(shared(f"chat_templates/{template}.jinja")))
    prompt = hf_chat_prompt(config, gpt2_tok, MESSAGES[:1])
    [(ids, targets)], _ = encode(gpt2_tok, [{"messages": MESSAGES[:2]}], template)
    text = gpt2_tok.decode(ids)
    first_trained = int(np.argmax(targets))
    assert text.startswith(prompt)
    assert gpt2_tok.decode(ids[:first_trained]) == prompt


def test_plain_gpt2_tokens_still_mask_the_assistant(gpt2_tok: Any) -> None:
    # Without the markers as special tokens they split into pieces, and the masks still hold.
    [(ids, targets)], _ = encode(gpt2_tok, [{"messages": MESSAGES}], "Qwen-Qwen2.5-7B-Instruct")
    assert trained_segments(gpt2_tok, ids, targets) == EXPECTED["Qwen-Qwen2.5-7B-Instruct"]


def test_system_message_is_context(gpt2_tok: Any) -> None:
    rows = [{"messages": [{"role": "system", "content": "Be brief."}, *MESSAGES]}]
    [(ids, targets)], _ = encode(gpt2_tok, rows, "Qwen-Qwen2.5-7B-Instruct")
    assert "Be brief." in gpt2_tok.decode(ids)
    assert trained_segments(gpt2_tok, ids, targets) == EXPECTED["Qwen-Qwen2.5-7B-Instruct"]


def test_template_errors_name_the_row(gpt2_tok: Any) -> None:
    rows = [{"messages": [{"role": "system", "content": "x"}, *MESSAGES]}]
    with pytest.raises(DataError, match="System role not supported") as caught:
        encode(gpt2_tok, rows, "google-gemma-2-2b-it")
    assert (caught.value.line, caught.value.field) == (1, "messages")


def test_user_only_conversation_is_dropped(gpt2_tok: Any) -> None:
    examples, counts = encode(
        gpt2_tok, [{"messages": MESSAGES[:1]}, {"messages": MESSAGES}], "Qwen-Qwen2.5-7B-Instruct"
    )
    assert len(examples) == 1 and counts.dropped == 1


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ],
)
def test_bad_messages_name_the_field(gpt2_tok: Any, bad: dict[str, Any], field: str) -> None:
    with pytest.raises(DataError) as caught:
        encode(gpt2_tok, [bad], "Qwen-Qwen2.5-7B-Instruct")
    assert (caught.value.file, caught.value.line, caught.value.field) == ("chat.jsonl", 1, field)
