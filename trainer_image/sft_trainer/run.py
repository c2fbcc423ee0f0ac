"""One whole training run in this process (the thin run entry, as TorchTitan's `train.py`).

Set up (process group, reporters, tokenizer, data, backend), drive `loop.Trainer`, export `final/`
(`export`), evaluate it, report. Every ending becomes a `RunSummary` whose exit code follows
`failures.exit_code_for`, and the process group is left on every path.
"""

import gc
import logging
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from sft_trainer import checkpoint as ckpt
from sft_trainer.config.schema import SFTConfig
from sft_trainer.contract import ExitCode
from sft_trainer.distributed import DistributedEnv, barrier, destroy_process_group, init_process_group, pick_device
from sft_trainer.export import export_final
from sft_trainer.failures import exit_code_for
from sft_trainer.loop import Trainer
from sft_trainer.report import FanOut, RunSummary, build_reporters

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (identically on every rank: the model starts identical)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_training(config: SFTConfig, env: DistributedEnv) -> RunSummary:
    """A whole run in this process: set up, (demo accuracy), train, export, report. Never raises.

    Every ending becomes a `RunSummary` whose `exit_code` follows `sft_trainer.contract`.
    """
    device = pick_device(env)
    reporters = build_reporters(config, env.is_rank_zero)
    total = config.trainer.max_steps
    try:
        try:
            init_process_group(env, device, config.parallelism.distributed_timeout_seconds)
            summary = _train(config, env, device, reporters)
        except Exception as error:
            code = exit_code_for(error)
            if code == ExitCode.UNEXPECTED:
                log.exception("training failed")
            summary = RunSummary(outcome="failed", step=0, total_steps=total, exit_code=int(code), message=str(error))
            latest = ckpt.list_checkpoints(Path(config.output_dir) / ckpt.CHECKPOINTS_DIR)
            if latest:
                summary = replace(summary, step=latest[-1].step, latest_checkpoint=str(latest[-1].path))
        if config.evaluation is not None and summary.final_model and env.is_rank_zero:
            summary = evaluate_final(config, Path(summary.final_model), device, summary)  # the trained model is freed
        reporters.finish(summary)
    finally:  # also on KeyboardInterrupt / SystemExit: no communicator outlives the run
        destroy_process_group()
    return summary


def _train(config: SFTConfig, env: DistributedEnv, device: torch.device, reporters: FanOut) -> RunSummary:
    from sft_trainer.backends import create_backend
    from sft_trainer.data import build_datasets, collate
    from sft_trainer.demo import DemoAccuracy
    from sft_trainer.tokenization import load_tokenizer

    seed_everything(config.trainer.seed)
    tokenizer = load_tokenizer(config.model.tokenizer, config.model.path)
    if env.is_rank_zero:  # rank 0 fills the tokenized cache; the others read it
        splits = build_datasets(config, tokenizer)
    barrier()
    if not env.is_rank_zero:
        splits = build_datasets(config, tokenizer)
    if env.is_rank_zero:
        from sft_trainer.data.inspect import counts_line

        log.info("data: %s", counts_line(splits.stats))
    backend = create_backend(config, tokenizer, env, device)
    demo = DemoAccuracy(config, tokenizer) if config.data.synthetic is not None and env.is_rank_zero else None
    if demo is not None:
        demo.before()
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    trainer = Trainer(config, env, backend, splits.train, splits.validation, collate, pad_id, reporters, device)
    summary = trainer.run(trainer.resume())
    summary = replace(summary, last_loss=trainer.last_loss)
    if summary.exit_code != ExitCode.OK:
        return summary
    final = export_final(backend, tokenizer, config, summary, env, splits.stats)
    summary = replace(summary, final_model=str(final))
    if demo is not None:
        demo.after(final)
    return summary


def evaluate_final(config: SFTConfig, final: Path, device: torch.device, summary: RunSummary) -> RunSummary:
    """The `evaluation` step: `sft eval` of final/ into `<output_dir>/eval.json` and the summary's
    `eval_metrics`. A failing evaluation is logged; the trained model stays and the run succeeds."""
    from sft_trainer.data.build import data_files
    from sft_trainer.evaluate import EVAL_FILE, evaluate, status_metrics, write_result

    assert config.evaluation is not None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the training model and optimizer are gone; final/ is loaded afresh
    file = config.evaluation.file or data_files(config)[1]  # a synthetic task's held-out file too
    if file is None:
        log.error("evaluation: no evaluation.file and no validation file; skipped")
        return summary
    try:
        result = evaluate(final, file, config.evaluation, device=device)
        write_result(Path(config.output_dir) / EVAL_FILE, result)
    except Exception as error:
        log.exception("evaluation of %s on %s failed", final, file)
        return replace(summary, message=f"{summary.message}; evaluation failed: {error}")
    metrics = status_metrics(result)
    log.info("evaluation on %s: %s", file, ", ".join(f"{k} {v:.6g}" for k, v in metrics.items()))
    return replace(summary, eval_metrics=metrics)
