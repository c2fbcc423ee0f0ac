"""`sft eval`: a model's loss and perplexity on a file, and generation metrics on held-out rows.

The loss is the training loop's validation loss (`loop.summed_loss` on the same tokenized,
masked, packed rows, with the run's micro-batch size), so `sft eval` on the validation file of a
run reports the number the run logged. Generation prompts each row as training did (the stored
template, system prompt, history and label) and scores the greedy answer against the row's answer:
exact match, contains, and a user's regex, optionally after extracting the answer with
`answer_regex` (GSM8K: `####\\s*(.+)`). Needs nothing outside the model directory but the file.
"""

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from sft_trainer.config.data import DataConfig
from sft_trainer.config.schema import EvaluationConfig, SFTConfig, TokenizerConfig
from sft_trainer.data.chat_context import ChatDefaults, ChatTurn
from sft_trainer.data.errors import DataError
from sft_trainer.data.jsonl import Row

EVAL_FILE = "eval.json"
GENERATION_BATCH = 8
SAMPLES_KEPT = 5


# ---------------------------------------------------------------------------- pure scoring


def extract_answer(text: str, pattern: str | None) -> str | None:
    """The answer in `text`: group 1 (else the whole match) of `pattern`, or the stripped text; None when no match."""
    if pattern is None:
        return text.strip()
    found = re.search(pattern, text)
    if found is None:
        return None
    return (found.group(1) if found.groups() else found.group(0)).strip()


def score(
    answers: Sequence[str], references: Sequence[str], answer_regex: str | None, match_regex: str | None
) -> dict[str, float]:
    """`exact_match` and `contains` (the reference's answer equals / appears in the model's), and
    `regex_match` (the share of answers `match_regex` finds), each a fraction in [0, 1]."""
    exact = contains = matched = 0
    for answer, reference in zip(answers, references, strict=True):
        expected = extract_answer(reference, answer_regex)
        if expected is None:
            expected = reference.strip()
        got = extract_answer(answer, answer_regex)
        exact += got is not None and got == expected
        contains += bool(expected) and expected in answer
        matched += match_regex is not None and re.search(match_regex, answer) is not None
    total = max(1, len(references))
    result = {"exact_match": exact / total, "contains": contains / total}
    if match_regex is not None:
        result["regex_match"] = matched / total
    return result


@dataclass(frozen=True)
class Request:
    """One held-out row as a prompt (user text + chat context, or template fields) and its reference answer."""

    user_text: str
    reference: str
    fields: dict[str, str] = field(default_factory=dict)
    history: tuple[ChatTurn, ...] = ()
    system: str | None = None
    label: str | None = None


def request_for(row: Row, data: DataConfig, file: str, line: int) -> Request:
    """What to ask and what to expect for a row of the run's format (the last answer of a conversation)."""
    if data.format == "prompt_response":
        from sft_trainer.data.templates import parse_template

        template = parse_template(data.prompt_template, data.label_key)
        template.render_pieces(row, file, line)  # every field present and a string, or DataError
        fields = {name: str(row[name]) for name in template.context_fields}
        first = template.context_fields[0] if template.context_fields else ""
        return Request(fields.get(first, ""), str(row[data.label_key]), fields=fields)
    if data.format == "nemo_chat":
        from sft_trainer.data.nemo_chat import parse_conversation

        conversation = parse_conversation(row, file, line)
        turns = conversation.turns
        k = max((i for i, t in enumerate(turns) if t.speaker != conversation.mask_role and i > 0), default=-1)
        if k < 1 or turns[k - 1].speaker != conversation.mask_role:
            raise DataError("no answer after a user turn to evaluate", file=file, line=line, field="conversations")
        history = tuple(
            ChatTurn("user" if t.speaker == conversation.mask_role else "assistant", t.value, t.label)
            for t in turns[: k - 1]
        )
        return Request(
            turns[k - 1].value, turns[k].value, history=history, system=conversation.system, label=turns[k].label or ""
        )
    from sft_trainer.data.hf_chat import parse_messages

    messages = parse_messages(row, file, line)
    k = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    if k < 1 or messages[k - 1]["role"] != "user":
        raise DataError("no assistant answer after a user message to evaluate", file=file, line=line, field="messages")
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    history = tuple(
        ChatTurn("user" if m["role"] == "user" else "assistant", m["content"])
        for m in messages[: k - 1]
        if m["role"] != "system"
    )
    return Request(messages[k - 1]["content"], messages[k]["content"], history=history, system=system)


def prompt_for(
    request: Request, data: DataConfig, tokenizer: PreTrainedTokenizerBase, defaults: ChatDefaults
) -> list[int]:
    """The request's prompt ids, as training built the context."""
    from sft_trainer.data.prompt_response import prompt_ids
    from sft_trainer.generate import prompt_token_ids

    if data.format == "prompt_response":
        return list(prompt_ids(data, tokenizer, request.user_text, request.fields))
    return prompt_token_ids(
        data,
        tokenizer,
        request.user_text,
        history=request.history,
        system=request.system,
        label=request.label,
        defaults=defaults,
    )


# ---------------------------------------------------------------------------- glue


def evaluation_config(model_dir: Path, data: DataConfig, file: str, micro_batch_size: int) -> SFTConfig:
    """A run config that loads `model_dir` (full weights, torch backend) over `file`'s rows."""
    return SFTConfig.model_validate(
        {
            "model": {"source": "hf", "path": str(model_dir), "tokenizer": {"type": "hf", "path": str(model_dir)}},
            "data": {**data.model_dump(), "train_file": file, "validation_file": None, "synthetic": None},
            "trainer": {
                "micro_batch_size": micro_batch_size,
                "global_batch_size": micro_batch_size,
                "precision": "fp32",
            },
            "parallelism": {"backend": "torch"},
        }
    )


def evaluate(
    model_dir: Path,
    file: str,
    settings: EvaluationConfig,
    data_overrides: dict[str, Any] | None = None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Loss, perplexity and (with `settings.generate`) generation metrics of `model_dir` on `file`.

    Raises DataError for a bad file, ModelError / TokenizerError for an unloadable model, ValueError
    when the model directory has no stored data format and `data_overrides` gives none.
    """
    from sft_trainer.backends.torch_backend import TorchBackend
    from sft_trainer.data import collate
    from sft_trainer.data.build import make_dataset, prepare_split
    from sft_trainer.data.jsonl import read_jsonl
    from sft_trainer.distributed import DistributedEnv
    from sft_trainer.generate import GenerationSettings, generate, prompt_format, read_sft_json
    from sft_trainer.loop import summed_loss
    from sft_trainer.models import load_hf
    from sft_trainer.tokenization import load_tokenizer

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    meta = read_sft_json(model_dir)
    tokenizer = load_tokenizer(TokenizerConfig(type="hf", path=str(model_dir)))
    stored = prompt_format(model_dir, tokenizer)
    if stored.data is None and not data_overrides:
        raise ValueError(f"{model_dir} has no sft.json: give the data format as data.* overrides")
    base = stored.data.model_dump() if stored.data is not None else {}
    data = DataConfig.model_validate({**base, **(data_overrides or {}), "train_file": file, "synthetic": None})
    micro = int(meta.get("training", {}).get("micro_batch_size", 1))
    config = evaluation_config(model_dir, data, file, micro)
    if not Path(file).is_file():
        raise DataError("no such file", file=file)
    split = prepare_split(file, data, tokenizer)
    dataset = make_dataset(split)
    backend = TorchBackend(config, load_hf(model_dir), DistributedEnv(), device)
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    loss_sum, tokens = summed_loss(backend, dataset, len(dataset), micro, collate, pad_id, device)
    loss = loss_sum / tokens if tokens else float("nan")
    result: dict[str, Any] = {
        "model": str(model_dir),
        "file": file,
        "format": data.format,
        "examples": split.stats["examples"],
        "dropped": split.stats["dropped"],
        "truncated": split.stats["truncated"],
        "loss_tokens": tokens,
        "val_loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
    }
    if not settings.generate:
        return result
    requests: list[Request] = []
    for line, row in read_jsonl(file):
        if len(requests) == settings.max_examples:
            break
        requests.append(request_for(row, data, file, line))
    prompts = [prompt_for(r, data, tokenizer, stored.chat) for r in requests]
    options = GenerationSettings(max_new_tokens=settings.max_new_tokens, stop=tuple(settings.stop))
    answers: list[str] = []
    for start in range(0, len(prompts), GENERATION_BATCH):
        answers += generate(backend.hf_model, tokenizer, prompts[start : start + GENERATION_BATCH], options)
    references = [r.reference for r in requests]
    result["generation"] = {
        "examples": len(requests),
        **score(answers, references, settings.answer_regex, settings.match_regex),
        "answer_regex": settings.answer_regex,
        "match_regex": settings.match_regex,
        "samples": [
            {"prompt": tokenizer.decode(p), "answer": a, "reference": r}
            for p, a, r in list(zip(prompts, answers, references, strict=True))[:SAMPLES_KEPT]
        ],
    }
    return result


def status_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The numbers of an evaluation that go into the SFTJob status (`eval_*`, finite only)."""
    generation = result.get("generation") or {}
    values = {
        "eval_loss": result.get("val_loss"),
        "eval_perplexity": result.get("perplexity"),
        "eval_exact_match": generation.get("exact_match"),
        "eval_contains": generation.get("contains"),
        "eval_regex_match": generation.get("regex_match"),
    }
    return {k: float(v) for k, v in values.items() if isinstance(v, int | float) and math.isfinite(v)}


def write_result(path: Path, result: dict[str, Any]) -> None:
    """The result as JSON, atomically."""
    from sft_trainer.data.jsonl import atomic_path

    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
