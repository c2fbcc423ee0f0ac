"""The training benchmark's inputs: where T0 and the tokenizer are, the SFT config of each run, and the
packed dataset's lengths (tokenized and packed once into the shared cache)."""

import json
import os
import time
from pathlib import Path
from typing import Any

from bench import train_metrics as tm

REPO = Path(__file__).resolve().parents[2]
SEQ = 4096
WORK = Path(os.environ.get("BENCH_WORK", "/tmp/bench-train"))
T0_NAME = "t0_prompt_completion_55k.jsonl.gz"


def find_data(name: str) -> Path:
    """A data file from `.gpudata/` (what travels to the device) or `../shared/data`."""
    for root in (REPO / ".gpudata", REPO.parent / "shared" / "data"):
        for candidate in (root / name, root / "instruct" / name, root / "tokenizers" / "gpt2" / name):
            if candidate.exists():
                return candidate
    raise FileNotFoundError(f"{name}: not in .gpudata/ or ../shared/data")


def tokenizer_dir() -> Path:
    """The directory holding the GPT-2 `encoder.json` + `vocab.bpe`."""
    return find_data("encoder.json").parent


def sft_config(
    model: str,
    *,
    mbs: int,
    gbs: int,
    steps: int,
    world: int,
    tp: int = 1,
    sp: bool = False,
    fp8: str = "none",
    fp8_recipe: str = "tensorwise",
    packing: bool = True,
    method: str = "full",
    backend: str = "megatron",
    run: str = "run",
) -> Any:
    """The run's `SFTConfig`: T0, GPT-2 BPE, answer-only loss, 4096-token packing, the model's real shape."""
    from sft_trainer.config.schema import SFTConfig

    shape = tm.MODELS[model]
    arch = {
        "hidden_size": shape["hidden_size"],
        "num_layers": shape["num_layers"],
        "num_attention_heads": shape["num_attention_heads"],
        "num_key_value_heads": shape["num_key_value_heads"],
        "intermediate_size": shape["intermediate_size"],
        "vocab_size": shape["vocab_size"],
        "tie_word_embeddings": shape["tie_word_embeddings"],
        "rope_theta": shape["rope_theta"],
        "max_position_embeddings": SEQ,
    }
    return SFTConfig.model_validate(
        {
            "name": "bench",
            "output_dir": str(WORK / "runs" / run),
            "model": {
                "source": "random",
                "architecture": arch,
                "tokenizer": {"type": "gpt2_bpe", "path": str(tokenizer_dir())},
            },
            "data": {
                "train_file": str(find_data(T0_NAME)),
                "prompt_template": "{prompt}{completion}",
                "label_key": "completion",
                "truncation_field": "prompt",
                "max_seq_length": SEQ,
                "answer_only_loss": True,
                "packing": packing,
                "cache_dir": str(WORK / "cache"),
            },
            "trainer": {
                "max_steps": steps,
                "micro_batch_size": mbs,
                "global_batch_size": gbs,
                "devices": world,
                "val_check_interval": 100_000,
                "save_interval": 100_000,
                "precision": "bf16",
            },
            "optim": {"lr": 1e-5},
            "training": {"method": method},
            "parallelism": {
                "backend": backend,
                "tensor_model_parallel_size": tp,
                "sequence_parallel": sp,
                "fp8": fp8,
                "fp8_recipe": fp8_recipe,
            },
            "checkpoint": {"resume": "never"},
            "logging": {"progress": "none"},
        }
    )


def dataset_lengths(config: Any) -> dict[str, Any]:
    """`lengths_of` the run's training set (built, or read from the cache)."""
    from sft_trainer.data import build_datasets
    from sft_trainer.tokenization import load_tokenizer

    return lengths_of(build_datasets(config, load_tokenizer(config.model.tokenizer)).train)


def lengths_of(train: Any) -> dict[str, Any]:
    """Token counts of the epoch and the effective attention lengths for the FLOP formula."""
    from sft_trainer.flops import effective_sequence_length

    examples = [int(n) for n in train.store.lengths]
    rows = [int(n) for n in train.lengths]
    return {
        "examples": len(examples),
        "epoch_tokens": int(sum(examples)),
        "loss_fraction": round(int(train.store.loss_tokens.sum()) / max(sum(examples), 1), 4),
        "rows": len(rows),
        "seq_per_example": effective_sequence_length(examples),
        "seq_per_row": effective_sequence_length(rows),
    }


def prepare_data() -> None:
    """Tokenize + pack T0 once into the shared cache (workers then hit it)."""
    config = sft_config("llama-1b", mbs=1, gbs=1, steps=1, world=1)
    started = time.perf_counter()
    info = dataset_lengths(config)
    print(f"[bench] data ready in {time.perf_counter() - started:.1f}s: {json.dumps(info)}", flush=True)
