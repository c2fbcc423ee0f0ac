"""`final/`: the trained model as a Hugging Face directory that stands alone (weights, config,
tokenizer with its chat template, and `sft.json`: how to prompt it and what training did)."""

import json
import os
import shutil
from pathlib import Path
from typing import Any

from sft_trainer.backends.base import Backend
from sft_trainer.config.schema import SFTConfig
from sft_trainer.distributed import DistributedEnv, barrier
from sft_trainer.report import RunSummary

FINAL_DIR = "final"


def sft_metadata(config: SFTConfig, summary: RunSummary, data_stats: dict[str, Any]) -> dict[str, Any]:
    """`final/sft.json`: how to prompt the model (the data block) and what training did."""
    return {
        "format": config.data.format,
        "prompt_template": config.data.prompt_template,
        "chat_prompt_tokens": config.data.chat_prompt_tokens.model_dump(),
        "data": config.data.model_dump(mode="json"),
        "chat": data_stats.get("chat"),  # generation defaults: the system prompt and label training used most
        "training": {
            "name": config.name,
            "steps": summary.step,
            "total_steps": summary.total_steps,
            "last_loss": summary.last_loss,
            "best_val_loss": summary.best_val_loss,
            "global_batch_size": config.trainer.global_batch_size,
            "micro_batch_size": config.trainer.micro_batch_size,
            "lr": config.optim.lr,
            "precision": config.trainer.precision,
            "model_source": config.model.source,
            "model_path": config.model.path,
            "data_stats": data_stats,
        },
    }


def chat_template_for_export(config: SFTConfig, stats: dict[str, Any]) -> str | None:
    """The chat template `final/` carries so it stands alone: hf_chat's (from `data.chat_template` or the
    tokenizer), or a Jinja rendering of the NeMo chat format with the training defaults; None otherwise."""
    data = config.data
    if data.format == "hf_chat" and data.chat_template:
        return Path(data.chat_template).read_text(encoding="utf-8")
    if data.format == "nemo_chat":
        from sft_trainer.data.chat_context import ChatDefaults
        from sft_trainer.data.nemo_chat import nemo_chat_jinja

        return nemo_chat_jinja(data, ChatDefaults.from_stats(stats.get("chat")))
    return None


def export_final(
    backend: Backend, tokenizer: Any, config: SFTConfig, summary: RunSummary, env: DistributedEnv, stats: dict[str, Any]
) -> Path:
    """Write `final/`: Hugging Face weights + config, tokenizer files and sft.json (atomically)."""
    final = Path(config.output_dir) / FINAL_DIR
    staging = Path(config.output_dir) / f".{FINAL_DIR}.tmp"
    if env.is_rank_zero:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    barrier()
    backend.export_hf(staging)
    if env.is_rank_zero:
        template = chat_template_for_export(config, stats)
        if template is not None:
            tokenizer.chat_template = template
        tokenizer.save_pretrained(str(staging))
        metadata = sft_metadata(config, summary, stats)
        (staging / "sft.json").write_text(json.dumps(metadata, indent=2, default=str), encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
    barrier()
    return final
