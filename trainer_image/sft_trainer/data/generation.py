"""Prompts for `sft generate`, rendered exactly as training renders the context of an example."""

from typing import TYPE_CHECKING

from sft_trainer.config.data import DataConfig
from sft_trainer.data.prompt_response import prompt_text

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def prompt_for_generation(
    data_config: DataConfig,
    user_text: str,
    *,
    tokenizer: "PreTrainedTokenizerBase | None" = None,
    system: str = "",
) -> str:
    """The text a model continues to answer `user_text`, in the run's data format.

    prompt_response: `prompt_template` up to the label placeholder (the label's leading whitespace
    is the model's to produce, as in training). nemo_chat: header + one User turn + the Assistant
    turn start and name. hf_chat: the chat template with the generation prompt (needs `tokenizer`).
    """
    if data_config.format == "prompt_response":
        return prompt_text(data_config, user_text)
    if data_config.format == "nemo_chat":
        from sft_trainer.data.nemo_chat import nemo_chat_prompt

        return nemo_chat_prompt(data_config, [{"from": "User", "value": user_text}], system=system)
    from sft_trainer.data.hf_chat import hf_chat_prompt

    if tokenizer is None:
        raise ValueError("hf_chat prompts need the tokenizer (its chat template)")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user_text}]
    return hf_chat_prompt(data_config, tokenizer, messages)
