"""Generate answers with a fine-tuned model, applying the prompt template stored beside it.

`final/sft.json` (written by the loop) holds the run's `data` block and the chat defaults (system
prompt, label) its training data used most: `prompt_token_ids` turns a user's text (and earlier
turns) into exactly the prompt the model was trained on. Nothing outside the model directory is read.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from sft_trainer.config.data import DataConfig
from sft_trainer.data.chat_context import ChatDefaults, ChatTurn

SFT_JSON = "sft.json"


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding knobs: temperature 0 is greedy; otherwise sampling with nucleus `top_p`."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = field(default_factory=tuple)
    seed: int | None = None


def cut_at_stop(text: str, stops: tuple[str, ...]) -> str:
    """`text` up to (not including) the earliest stop string."""
    cut = len(text)
    for stop in stops:
        index = text.find(stop) if stop else -1
        if index != -1:
            cut = min(cut, index)
    return text[:cut]


def read_sft_json(model_dir: Path) -> dict[str, Any]:
    """The run metadata beside a final model ({} for a plain Hugging Face directory)."""
    path = model_dir / SFT_JSON
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


@dataclass(frozen=True)
class PromptFormat:
    """How a model was trained to be prompted: the data block and the chat defaults (None: raw text)."""

    data: DataConfig | None = None
    chat: ChatDefaults = field(default_factory=ChatDefaults)


def prompt_format(model_dir: Path, tokenizer: PreTrainedTokenizerBase) -> PromptFormat:
    """The prompt format stored in `model_dir/sft.json`, needing no file outside `model_dir`.

    The chat template is the one `final/` carries (tokenizer_config.json / chat_template.jinja), not
    the training run's `data.chat_template` path, which may be gone.
    """
    meta = read_sft_json(model_dir)
    if "data" not in meta:
        return PromptFormat()
    data = DataConfig.model_validate(meta["data"])
    if data.chat_template and getattr(tokenizer, "chat_template", None):
        data = data.model_copy(update={"chat_template": None})
    return PromptFormat(data, ChatDefaults.from_stats(meta.get("chat")))


def load_for_generation(model_dir: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, PromptFormat]:
    """Model, tokenizer and the training prompt format of a final model directory."""
    from sft_trainer.models import load_hf

    model = load_hf(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    return model, tokenizer, prompt_format(model_dir, tokenizer)


def read_history(source: str) -> list[ChatTurn]:
    """Earlier turns from inline JSON (`[...]` / `{...}`) or a JSON file; ValueError / OSError when unreadable."""
    from sft_trainer.data.generation import parse_history

    text = source if source.lstrip()[:1] in ("[", "{") else Path(source).read_text(encoding="utf-8")
    try:
        return parse_history(json.loads(text))
    except json.JSONDecodeError as error:
        raise ValueError(f"--history: not valid JSON: {error}") from None


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded input ids and attention mask (generation appends on the right)."""
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        mask[row, width - len(ids) :] = 1
    return input_ids, mask


def prompt_token_ids(
    data: DataConfig | None,
    tokenizer: PreTrainedTokenizerBase,
    user_text: str,
    *,
    history: Sequence[ChatTurn] = (),
    system: str | None = None,
    label: str | None = None,
    defaults: ChatDefaults | None = None,
) -> list[int]:
    """Token ids of the prompt for `user_text`, exactly as training built the context.

    prompt_response rows use the data pipeline's `prompt_ids` (piecewise tokenization, BOS, SEP);
    chat formats render `history` + the user turn with `prompt_for_generation` (system prompt and
    label default to `defaults`, what training used most), with BOS when training added it. Without
    a stored data config the text is encoded as is.
    """
    if data is None:
        return list(tokenizer.encode(user_text))
    from sft_trainer.data import prompt_for_generation, prompt_ids

    if data.format == "prompt_response":
        if history:
            raise ValueError("a prompt_response model takes no conversation history")
        return list(prompt_ids(data, tokenizer, user_text))
    text = prompt_for_generation(
        data, user_text, tokenizer=tokenizer, system=system, history=history, label=label, defaults=defaults
    )
    nemo_bos = data.format == "nemo_chat" and data.add_bos and tokenizer.bos_token_id is not None
    bos = [int(tokenizer.bos_token_id)] if nemo_bos else []  # an hf_chat template writes its own
    return bos + list(tokenizer.encode(text, add_special_tokens=False))


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    settings: GenerationSettings,
) -> list[str]:
    """The continuation of each prompt (token ids), cut at the first stop string."""
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids, mask = left_pad(prompts, int(pad or 0))
    sampling = settings.temperature > 0
    options: dict[str, Any] = {"do_sample": sampling}
    if sampling:
        options.update(temperature=settings.temperature, top_p=settings.top_p, top_k=0)
    if settings.stop:
        options.update(stop_strings=list(settings.stop), tokenizer=tokenizer)
    generator: Any = model  # transformers types `generate` for its own generic self-type only
    output = generator.generate(
        input_ids=input_ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=settings.max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **options,
    )
    texts = tokenizer.batch_decode(output[:, input_ids.shape[1] :], skip_special_tokens=True)
    return [cut_at_stop(text, settings.stop) for text in texts]
