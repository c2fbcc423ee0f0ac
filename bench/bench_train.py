"""Training throughput benchmark (issue 10): our trainer vs TRL's SFTTrainer, on the GPU device.

Data: T0 (55,185 prompt/completion pairs), GPT-2 tokenizer, answer-only loss, max_seq_length 4096.
Models: random-init real shapes `llama-1b` (Llama-3.2-1B) and `llama-8b` (Llama-3-8B).

- ours: the real trainer path. `build_datasets` (tokenize, mask, pack into 4096-token rows, cache)
  -> `loop.Trainer` (global batches, collate, data-wait measurement) -> `MegatronBackend` (every
  micro-batch one packed THD stream, TE attention with `cu_seqlens`, bf16 or FP8). The model is
  built with megatron's own random init on the GPU (`hf_state_dict=None`) instead of a CPU
  Hugging Face init: same shapes, minutes less per run. No checkpoints are written.
- peer: TRL 1.16 `SFTTrainer`, sdpa, bf16, completion-only loss, max_length 4096: padded batches,
  `packing=True` (bfd, padding-free) and `packing_strategy="wrapped"`, several batch sizes each.
- LoRA: `llama-8b`, `training.method: lora`, one GPU, through `backends.create_backend` (whatever
  backend the project picks for LoRA) and the same loop.

Each configuration runs a fixed number of steps; the first `--warmup` are dropped. Independent
single-GPU runs go to separate GPUs at once. Results: `$OUT/train-<card>.json` (or
bench/results/), a table at the end of the output.

    python -m bench.bench_train                      # every stage (make bench-train)
    python -m bench.bench_train --stages s1,s2       # some stages
    python -m bench.bench_train worker ours --model llama-1b --mbs 1,2 ...   # one worker (used by the above)

This file is the command line (`main`) and the worker entry (`worker_main`); the parts live in
bench/train_throughput/: data.py (T0, tokenizer, configs), ours.py (this project's trainer workers),
trl_peer.py (TRL's worker), orchestrate.py (stages, waves, launching), results.py (table, goals,
merging); bench/train_metrics.py holds the pure metric helpers.
"""

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import train_metrics as tm
from bench.train_throughput.data import REPO, WORK, prepare_data
from bench.train_throughput.orchestrate import cards, launch, stage_plan, wait_all, waves
from bench.train_throughput.ours import worker_lora, worker_ours, worker_torch
from bench.train_throughput.results import merge_reports, write_report
from bench.train_throughput.trl_peer import TRL_MODES, worker_trl


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default="s1,s1f,s1t,s1v,s1b,s1r,s2,s3,s4,s5")
    parser.add_argument("--mbs-1b", default="4,8")
    parser.add_argument("--mbs-8b", default="1,2")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--stage-timeout", type=float, default=240.0)
    parser.add_argument("--output", type=Path, default=None, help="default: $OUT or bench/results")
    parser.add_argument("--merge", type=Path, nargs="+", help="combine results JSONs of several calls, no run")
    options = parser.parse_args(argv)
    if options.merge:
        merge_reports(options.merge, options.output or REPO / "bench" / "results" / "train-merged.json")
        return
    WORK.mkdir(parents=True, exist_ok=True)
    card, gpus, gib = cards()
    plan = stage_plan(options.mbs_1b, options.steps, options.warmup, gpus, card_gib=gib, mbs_8b=options.mbs_8b)
    print(f"[bench] {gpus} x {card} ({gib:.0f} GiB)", flush=True)
    started = time.perf_counter()
    prepare_data()
    names: list[str] = []
    timings: dict[str, Any] = {}
    for stage in options.stages.split(","):
        stage_started = time.perf_counter()
        for wave in waves(plan[stage], gpus):
            procs = [launch(name, devices, args, need) for name, args, need, devices in wave]
            names += [name for name, *_ in wave]
            wait_all(procs, options.stage_timeout)
            write_report(names, card, gpus, timings, options.output)  # after every wave: a cut-off call keeps it
        timings[stage] = round(time.perf_counter() - stage_started, 1)
        print(f"[bench] stage {stage} done in {timings[stage]}s", flush=True)
    report, path = write_report(names, card, gpus, timings, options.output)
    print(tm.format_table(report["table"]))
    for line in report["goals"]:
        print(f"goal {'MET ' if line['met'] else 'MISS'} {line['goal']}: {line['measured']} (target {line['target']})")
    print(f"[bench] {time.perf_counter() - started:.0f}s -> {path}", flush=True)


def worker_main(argv: Sequence[str]) -> None:
    """One worker: run, then rank 0 writes its JSON to --result."""
    parser = argparse.ArgumentParser(prog="bench_train worker")
    parser.add_argument("kind", choices=["ours", "trl", "lora", "torch"])
    parser.add_argument("--model", default="llama-1b", choices=sorted(tm.MODELS))
    parser.add_argument("--name", default="worker")
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--mbs", default="1")
    parser.add_argument("--rows-per-gpu", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--sp", action="store_true")
    parser.add_argument("--fp8", default="none", choices=["none", "hybrid", "e4m3"])
    parser.add_argument("--fp8-recipe", default="tensorwise", choices=["tensorwise", "delayed", "blockwise"])
    parser.add_argument("--gaf", action="store_true", help="gradient-accumulation fusion")
    parser.add_argument("--bf16-grads", action="store_true", help="main grads and their reduction in bf16")
    parser.add_argument("--overrides", default="", help="JSON of extra TransformerConfig fields")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--full-head", action="store_true", help="ours: full LM head + TE cross-entropy (no chunked loss)"
    )
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16"], help="torch backend")
    parser.add_argument("--data-parallel", default="ddp", choices=["ddp", "fsdp2"], help="torch backend")
    parser.add_argument("--packing", action=argparse.BooleanOptionalAction, default=False, help="lora: pack rows")
    parser.add_argument("--trl-mode", default="padded", choices=sorted(TRL_MODES))
    parser.add_argument("--batch", default="8")
    parser.add_argument("--trl-rows", type=int, default=8000)
    args = parser.parse_args(argv)
    run = {"ours": worker_ours, "trl": worker_trl, "lora": worker_lora, "torch": worker_torch}[args.kind]
    started = time.perf_counter()
    from sft_trainer.distributed import destroy_process_group

    try:
        result = run(args)
    except Exception as error:  # the orchestrator reports it; the other workers carry on
        traceback.print_exc()
        result = {"system": args.kind, "model": args.model, "gpus": 0, "error": repr(error)[:500], "runs": []}
    finally:  # the megatron backends joined a process group: leave it on every path, as run_training does
        destroy_process_group()
    result["worker_s"] = round(time.perf_counter() - started, 1)
    if int(os.environ.get("RANK", "0")) == 0:
        args.result.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker_main(sys.argv[2:])
    else:
        main()
