"""Prompts for `sft generate` / `sft eval`, rendered exactly as training renders the context of an example.

A chat prompt has what every training conversation had: a system prompt, earlier turns, and (NeMo
SteerLM) the label line of the answer to come. `ChatDefaults` are what the training data used most
(`chat` in the data stats, stored in `final/sft.json`), so a plain `sft generate -p TEXT` prompts a
model the way it was trained.
"""

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sft_trainer.config.data import DataConfig
from sft_trainer.data.chat_context import ChatDefaults, ChatTurn, Role
from sft_trainer.data.prompt_response import prompt_text

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def prompt_for_generation(
    data_config: DataConfig,
    user_text: str,
    *,
    tokenizer: "PreTrainedTokenizerBase | None" = None,
    system: str | None = None,
    history: Sequence[ChatTurn] = (),
    label: str | None = None,
    defaults: ChatDefaults | None = None,
) -> str:
    """The text a model continues to answer `user_text`, in the run's data format.

    prompt_response: `prompt_template` up to the label placeholder (the label's leading whitespace
    is the model's to produce, as in training). nemo_chat: header, `history`, the User turn, the
    Assistant turn start, name and label line. hf_chat: the chat template with the generation
    prompt (needs `tokenizer`). `system` and `label` default to `defaults` (the training data's most
    used); pass "" for none.
    """
    if data_config.format == "prompt_response":
        if history:
            raise ValueError("a prompt_response model has no conversation history")
        return prompt_text(data_config, user_text)
    chosen = defaults or ChatDefaults()
    system_text = chosen.system if system is None else system
    turns = [*history, ChatTurn("user", user_text)]
    if data_config.format == "nemo_chat":
        from sft_trainer.data.nemo_chat import nemo_chat_prompt

        answer_label = chosen.label if label is None else (label or None)
        return nemo_chat_prompt(data_config, turns, system_text, chosen, answer_label)
    from sft_trainer.data.hf_chat import hf_chat_prompt

    if label:
        raise ValueError("a label line is part of the NeMo chat format only; this model uses a chat template")
    if tokenizer is None:
        raise ValueError("hf_chat prompts need the tokenizer (its chat template)")
    messages = [{"role": "system", "content": system_text}] if system_text else []
    messages += [{"role": turn.role, "content": turn.text} for turn in turns]
    return hf_chat_prompt(data_config, tokenizer, messages)


def parse_history(raw: Any) -> list[ChatTurn]:
    """Earlier turns from JSON: a list of NeMo turns (`from`/`value`/`label`) or HF messages
    (`role`/`content`, optionally `label`), or a row holding one (`conversations` / `messages`). System messages are skipped
    (use the system prompt); a NeMo speaker other than `User` counts as the assistant."""
    if isinstance(raw, dict):
        raw = raw.get("conversations", raw.get("messages"))
    if not isinstance(raw, list):
        raise ValueError("the history must be a JSON list of turns, or an object with `conversations` / `messages`")
    turns: list[ChatTurn] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ValueError(f"history turn {index}: expected an object")
        if "role" in item:
            if item["role"] == "system":
                continue
            role: Role = "user" if item["role"] == "user" else "assistant"
            turns.append(ChatTurn(role, str(item.get("content", "")), item.get("label")))
        elif "from" in item:
            role = "user" if item["from"] == "User" else "assistant"
            turns.append(ChatTurn(role, str(item.get("value", "")), item.get("label")))
        else:
            raise ValueError(f"history turn {index}: needs `role`/`content` or `from`/`value`")
    return turns
