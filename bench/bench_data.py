"""Data preparation benchmark: our `sft data prepare` path vs TRL's SFTTrainer path, on all of T0.

Both tokenize the 55,185 prompt/completion rows of T0 with the GPT-2 tokenizer, build answer-only
labels and pack into 4096-token rows. Ours: `build_datasets` (fresh cache). TRL's: the same
`SFTTrainer._prepare_dataset` that `SFTTrainer.__init__` runs (`datasets.Dataset.map` tokenization,
labels, then `pack_dataset` with its default best-fit-decreasing strategy), on a dataset loaded
with `datasets.load_dataset("json")`. Each path runs in its own process so peak RSS is its own.

    python -m bench.bench_data            # both, prints a table, writes bench/results/data.json
    python -m bench.bench_data --path ours   # one path, prints its JSON (used by the above)
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO / ".." / "shared" / "data"
T0 = SHARED / "instruct" / "t0_prompt_completion_55k.jsonl.gz"
GPT2 = SHARED / "tokenizers" / "gpt2"
SEQ_LENGTH = 4096
RESULTS = REPO / "bench" / "results" / "data.json"


def cpu_seconds() -> float:
    """CPU time (user + system, all threads) this process has used: robust to a busy machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    """Peak resident memory of this process, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(workdir: Path) -> dict[str, Any]:
    """Our pipeline: read, tokenize, mask, truncate, pack, write the memory-mapped cache."""
    from sft_trainer.config import SFTConfig, TokenizerConfig
    from sft_trainer.data import build_datasets
    from sft_trainer.tokenization import load_tokenizer

    tokenizer = load_tokenizer(TokenizerConfig(type="gpt2_bpe", path=str(GPT2)))
    config = SFTConfig.model_validate(
        {
            "output_dir": str(workdir),
            "model": {
                "source": "random",
                "architecture": {"max_position_embeddings": SEQ_LENGTH},
                "tokenizer": {"type": "gpt2_bpe", "path": str(GPT2)},
            },
            "data": {
                "train_file": str(T0),
                "prompt_template": "{prompt}{completion}",
                "label_key": "completion",
                "truncation_field": "prompt",
                "max_seq_length": SEQ_LENGTH,
                "packing": True,
                "cache_dir": str(workdir / "cache"),
            },
        }
    )
    started, cpu_started = time.perf_counter(), cpu_seconds()
    splits = build_datasets(config, tokenizer)
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    stats = splits.stats
    return {
        "seconds": round(seconds, 2),
        "examples": stats["examples"],
        "tokens": stats["tokens"],
        "answer_tokens": stats["answer_tokens"],
        "packed_sequences": stats["packed_sequences"],
        "fill_ratio": stats["fill_ratio"],
        "tokens_per_second": round(stats["tokens"] / seconds),
        "cpu_seconds": round(cpu, 2),
        "tokens_per_cpu_second": round(stats["tokens"] / cpu),
        "peak_rss_mb": round(peak_rss_mb()),
    }


def run_trl(workdir: Path) -> dict[str, Any]:
    """TRL 1.x: `SFTTrainer._prepare_dataset` on a `datasets` JSON dataset (what SFTTrainer does at init)."""
    os.environ["HF_DATASETS_CACHE"] = str(workdir / "hf_datasets")
    import datasets
    from trl import SFTConfig, SFTTrainer

    from sft_trainer.config import TokenizerConfig
    from sft_trainer.tokenization import load_tokenizer

    datasets.disable_progress_bars()
    tokenizer = load_tokenizer(TokenizerConfig(type="gpt2_bpe", path=str(GPT2)))
    args = SFTConfig(
        output_dir=str(workdir / "trl"), max_length=SEQ_LENGTH, packing=True, use_cpu=True, bf16=False, report_to=[]
    )
    # The attributes `_prepare_dataset` reads from the trainer; building a full SFTTrainer needs a model.
    trainer_state = argparse.Namespace(_tokenizer=tokenizer, completion_only_loss=True, chat_template=None)
    started, cpu_started = time.perf_counter(), cpu_seconds()
    dataset = datasets.load_dataset("json", data_files=str(T0), split="train", cache_dir=str(workdir / "hf_datasets"))
    packed = SFTTrainer._prepare_dataset(trainer_state, dataset, tokenizer, args, True, None, "train")  # type: ignore[arg-type]
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    lengths = packed["seq_lengths"]
    tokens = int(sum(sum(row) for row in lengths))
    labels = packed["labels"]
    answer_tokens = int(sum(sum(1 for t in row if t != -100) for row in labels))
    return {
        "seconds": round(seconds, 2),
        "examples": int(sum(len(row) for row in lengths)),
        "tokens": tokens,
        "answer_tokens": answer_tokens,
        "packed_sequences": len(packed),
        "fill_ratio": round(tokens / (len(packed) * SEQ_LENGTH), 4),
        "tokens_per_second": round(tokens / seconds),
        "cpu_seconds": round(cpu, 2),
        "tokens_per_cpu_second": round(tokens / cpu),
        "peak_rss_mb": round(peak_rss_mb()),
    }


def run_one(path: str) -> dict[str, Any]:
    """Run one path in a fresh temporary directory."""
    with tempfile.TemporaryDirectory(prefix=f"bench-data-{path}-") as workdir:
        return (run_ours if path == "ours" else run_trl)(Path(workdir))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", choices=["ours", "trl"], help="run one path in this process and print its JSON")
    parser.add_argument("--output", type=Path, default=RESULTS)
    options = parser.parse_args()
    if not T0.is_file() or not GPT2.is_dir():
        sys.exit(f"missing shared data: {T0} / {GPT2}")
    if options.path:
        print(json.dumps(run_one(options.path)))
        return
    results: dict[str, Any] = {}
    for path in ("ours", "trl"):
        completed = subprocess.run(
            [sys.executable, "-m", "bench.bench_data", "--path", path],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        )
        results[path] = json.loads(completed.stdout.strip().splitlines()[-1])
    ratio = results["ours"]["tokens_per_second"] / results["trl"]["tokens_per_second"]
    cpu_ratio = results["ours"]["tokens_per_cpu_second"] / results["trl"]["tokens_per_cpu_second"]
    report = {
        "corpus": "T0 prompt/completion, 55,185 rows",
        "tokenizer": "GPT-2 BPE",
        "max_seq_length": SEQ_LENGTH,
        "cpus": os.cpu_count(),
        "ours": results["ours"],
        "trl": results["trl"],
        "speedup": round(ratio, 2),
        "speedup_cpu_time": round(cpu_ratio, 2),
        "load_average_1m_at_end": round(os.getloadavg()[0], 1),
        "goal": {"speedup_at_least": 2.0, "peak_rss_mb_below": 2048},
        "goal_met": ratio >= 2.0 and results["ours"]["peak_rss_mb"] < 2048,
    }
    options.output.parent.mkdir(parents=True, exist_ok=True)
    temporary = options.output.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    temporary.replace(options.output)
    header = f"{'path':<6} {'wall s':>8} {'cpu s':>8} {'tokens':>12} {'tokens/s':>10} {'tok/cpu-s':>10}"
    print(header + f" {'rows':>6} {'fill':>6} {'peak RSS MB':>12}")
    for name in ("ours", "trl"):
        r = results[name]
        print(
            f"{name:<6} {r['seconds']:>8} {r['cpu_seconds']:>8} {r['tokens']:>12} {r['tokens_per_second']:>10} "
            f"{r['tokens_per_cpu_second']:>10} {r['packed_sequences']:>6} {r['fill_ratio']:>6} {r['peak_rss_mb']:>12}"
        )
    print(
        f"speedup, ours / TRL: {ratio:.2f}x tokens/s (wall), {cpu_ratio:.2f}x tokens per CPU second -> {options.output}"
    )


if __name__ == "__main__":
    main()
