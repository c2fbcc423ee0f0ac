"""Whole `sft train` runs on the megatron backend, on the GPU: async-save resume, exit codes, a lost rank.

Each scenario starts real `python -m sft_trainer.cli train` processes (a small random Llama on the
synthetic arithmetic task, byte tokenizer, bf16) and measures how they end:

- `async_resume`: an uninterrupted run; the same run killed (SIGKILL) one step after an
  asynchronous checkpoint save started; the killed run resumed. The resumed loss curve must equal
  the uninterrupted one, and the kill must leave only complete checkpoints.
- `nan`: lr 1e30 makes the loss non-finite: exit 13, the last good state checkpointed.
- `oom`: one micro-batch of ~520 k packed tokens through hidden-2048 layers (~140 GB of activations): exit 14.
- `lora`: `training.method: lora` from a Hugging Face base directory: the checkpoints hold only
  adapters, `final/` (merged) gives the logits of peft(base, `final/adapter`), and `sft export --merge`
  writes the same model.
- `lost_rank`: two processes, one per GPU, started the way the operator starts one pod per rank
  (RANK / WORLD_SIZE / MASTER_ADDR, no torchrun); rank 1 SIGKILLs itself after step 5. Rank 0
  must end on its own within the configured `distributed_timeout_seconds` (+ a margin).

    python3 -m tests.gpu.megatron_runs SCENARIO OUT.json     # on the device, GPUs from CUDA_VISIBLE_DEVICES
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

WIDE_SYNTHETIC = {"validation_examples": 8, "min_operand": 1000, "max_operand": 9999}  # 81 M distinct problems
TIMEOUT_S = 30  # parallelism.distributed_timeout_seconds of the lost-rank run

BASE: dict[str, Any] = {
    "name": "gpu-runs",
    "model": {
        "source": "random",
        "tokenizer": {"type": "byte"},
        "architecture": {
            "hidden_size": 256,
            "num_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 512,
            "max_position_embeddings": 128,
        },
    },
    "data": {
        "synthetic": {"train_examples": 2000, "validation_examples": 64},
        "prompt_template": "{input}{output}",
        "max_seq_length": 32,
    },
    "trainer": {
        "max_steps": 12,
        "val_check_interval": 4,
        "save_interval": 4,
        "micro_batch_size": 8,
        "global_batch_size": 32,
        "precision": "bf16",
        "limit_val_batches": 1,
        "log_every_n_steps": 1,
    },
    "optim": {"lr": 1e-3, "sched": {"warmup_steps": 3, "min_lr": 1e-4}},
    "parallelism": {"backend": "megatron", "distributed_timeout_seconds": TIMEOUT_S},
    "checkpoint": {"save_top_k": 1},
    "logging": {"progress": "lines"},
}


def write_config(directory: Path, **overrides: Any) -> Path:
    """`BASE` with `output_dir` in `directory` and top-level blocks merged with `overrides`."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {key: (dict(value) if isinstance(value, dict) else value) for key, value in BASE.items()}
    for block, values in overrides.items():
        config[block] = {**config.get(block, {}), **values}
    config["output_dir"] = str(directory / "out")
    if os.environ.get("SFT_RUNS_ON_CPU"):  # a dry run of this harness on a machine without a GPU
        config["parallelism"] = {**config["parallelism"], "backend": "torch"}
        config["trainer"] = {**config["trainer"], "precision": "fp32"}
    path = directory / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def sft_train(config: Path, env: dict[str, str] | None = None, timeout: float = 240) -> tuple[int, float, str]:
    """Run `sft train --config`; (exit code, seconds, last lines of its output; also in `log.txt`).

    The run gets its own process group, killed once the trainer has exited, as a container's end
    kills what the trainer left behind (a forked async-checkpoint writer of a SIGKILLed trainer).
    """
    start = time.perf_counter()
    log_path = config.parent / "log.txt"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sft_trainer.cli", "train", "--config", str(config)],
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = -999
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    seconds = time.perf_counter() - start
    output = log_path.read_text(errors="replace") + (f"\nTIMEOUT after {timeout} s" if code == -999 else "")
    print(f"   sft train {config.parent.name}: exit {code} after {seconds:.1f} s", flush=True)
    return code, seconds, "\n".join(output.splitlines()[-15:])


def curve(output_dir: Path) -> dict[int, float]:
    """step -> training loss from metrics.jsonl."""
    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def checkpoints(output_dir: Path) -> list[str]:
    """Names under checkpoints/ (published `step-N`, `last`, leftovers `.tmp-step-N`)."""
    root = output_dir / "checkpoints"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def async_resume(work: Path) -> dict[str, Any]:
    """Uninterrupted vs killed-mid-async-save-then-resumed: identical losses."""
    straight_cfg = write_config(work / "straight")
    killed_cfg = write_config(work / "killed")
    # the loop saves after step 8 (asynchronously), then the kill lands right after step 9;
    # both first runs at once (a small model: they share the GPU), then the resume
    with ThreadPoolExecutor(2) as pool:
        straight_run = pool.submit(sft_train, straight_cfg)
        killed_run = pool.submit(sft_train, killed_cfg, {"SFT_FAULT_AT_STEP": "9", "SFT_FAULT_SIGNAL": "KILL"})
        straight_rc, straight_s, straight_tail = straight_run.result()
        killed_rc = killed_run.result()[0]
    out = killed_cfg.parent / "out"
    after_kill = checkpoints(out)
    published = [name for name in after_kill if name.startswith("step-")]
    complete = all((out / "checkpoints" / name / "megatron" / "metadata.json").is_file() for name in published)
    resumed_rc, _, resumed_tail = sft_train(killed_cfg)
    a, b = curve(straight_cfg.parent / "out"), curve(out)
    diff = max((abs(a[s] - b[s]) for s in a if s in b), default=float("nan"))
    ok = (
        straight_rc == 0
        and killed_rc == -signal.SIGKILL
        and resumed_rc == 0
        and complete
        and sorted(a) == sorted(b)
        and diff < 1e-6
    )
    return {
        "straight_exit": straight_rc,
        "straight_seconds": straight_s,
        "killed_exit": killed_rc,
        "checkpoints_after_kill": after_kill,
        "published_complete": complete,
        "resumed_exit": resumed_rc,
        "steps": len(a),
        "resume_max_abs_loss_diff": diff,
        "losses_straight": a,
        "losses_resumed": b,
        "tail": straight_tail if straight_rc else resumed_tail,
        "ok": ok,
    }


def nan_exit(work: Path) -> dict[str, Any]:
    """A non-finite loss ends the run with exit 13 and a checkpoint of the last good state."""
    config = write_config(
        work / "nan",
        optim={"lr": 1e30, "weight_decay": 0.0, "sched": {"warmup_steps": 0, "min_lr": 0.0}},
    )
    code, seconds, tail = sft_train(config)
    left = checkpoints(config.parent / "out")
    return {"exit": code, "seconds": seconds, "checkpoints": left, "tail": tail, "ok": code == 13 and "last" in left}


def oom_exit(work: Path) -> dict[str, Any]:
    """A micro-batch that cannot fit ends with exit 14: 32 packed rows of 16,384 tokens (~520 k tokens,
    ~26 k examples: under TE's 65,535 sequences) through hidden 2048, ~35 GB of activations a layer."""
    length, rows = 16384, 32
    config = write_config(
        work / "oom",
        model={
            **BASE["model"],
            "architecture": {
                "hidden_size": 2048,
                "num_layers": 4,
                "num_attention_heads": 16,
                "num_key_value_heads": 8,
                "intermediate_size": 8192,
                "max_position_embeddings": length,
            },
        },
        data={
            **BASE["data"],
            "synthetic": WIDE_SYNTHETIC | {"train_examples": 40000},
            "packing": True,
            "max_seq_length": length,
        },
        trainer={**BASE["trainer"], "micro_batch_size": rows, "global_batch_size": rows, "max_steps": 2},
    )
    code, seconds, tail = sft_train(config)
    return {"exit": code, "seconds": seconds, "tail": tail, "ok": code == 14 and "out of memory" in tail.lower()}


def lost_rank(work: Path, kill_after: int = 5) -> dict[str, Any]:
    """Two ranks as two pods; rank 1 dies (SIGKILL) after `kill_after` steps; rank 0 must end by itself."""
    config = write_config(work / "lost", trainer={**BASE["trainer"], "max_steps": 400, "save_interval": 400,
                                                  "val_check_interval": 400})  # fmt: skip
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "0,1").split(",")
    common = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29631", "LOCAL_RANK": "0"}
    procs = []
    for rank in (0, 1):
        env = {**os.environ, **common, "RANK": str(rank), "CUDA_VISIBLE_DEVICES": gpus[rank % len(gpus)]}
        if rank == 1:
            env |= {"SFT_FAULT_AT_STEP": str(kill_after), "SFT_FAULT_SIGNAL": "KILL"}
        log = open(work / f"lost-rank{rank}.log", "w")  # noqa: SIM115 (closed below)
        procs.append((subprocess.Popen([sys.executable, "-m", "sft_trainer.cli", "train", "--config", str(config)],
                                       env=env, stdout=log, stderr=subprocess.STDOUT), log))  # fmt: skip
    (rank0, log0), (rank1, log1) = procs
    start = time.perf_counter()
    rc1 = rank1.wait(timeout=300)
    died = time.perf_counter()
    limit = 3 * TIMEOUT_S + 60
    try:
        rc0: int | None = rank0.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        rank0.kill()
        rc0 = None
    ended = time.perf_counter()
    log0.close()
    log1.close()
    tail = (work / "lost-rank0.log").read_text().splitlines()[-20:]
    return {
        "distributed_timeout_seconds": TIMEOUT_S,
        "rank1_exit": rc1,
        "rank1_alive_seconds": died - start,
        "rank0_exit": rc0,  # a negative number: killed by that signal (-6: SIGABRT from the NCCL watchdog)
        "rank0_shell_exit": None if rc0 is None else (128 - rc0 if rc0 < 0 else rc0),
        "rank0_seconds_after_peer_died": ended - died,
        "hung": rc0 is None,
        "rank0_tail": tail,
        "ok": rc0 is not None and rc0 != 0 and ended - died < TIMEOUT_S + 60,
    }


def lora_run(work: Path) -> dict[str, Any]:
    """`sft train` LoRA on megatron from an HF base; adapter-only checkpoints; final/ == peft(base, adapter)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from sft_trainer.config.schema import ArchitectureConfig
    from sft_trainer.models import llama_config
    from sft_trainer.tokenization import byte_tokenizer
    from tests.gpu.lora_checks import checkpoint_facts

    torch.manual_seed(0)
    base_dir = work / "base"
    architecture = ArchitectureConfig(**BASE["model"]["architecture"])
    AutoModelForCausalLM.from_config(llama_config(architecture, len(byte_tokenizer()))).save_pretrained(base_dir)
    config = write_config(
        work / "lora",
        model={"source": "hf", "path": str(base_dir), "architecture": None},
        training={"method": "lora", "lora": {"rank": 8, "alpha": 16.0}},
    )
    code, seconds, tail = sft_train(config)
    out = config.parent / "out"
    losses = curve(out) if (out / "metrics.jsonl").is_file() else {}
    facts = checkpoint_facts(out / "checkpoints" / "last") if code == 0 else {}
    merged_dir = work / "merged"
    export_rc = subprocess.run(
        [sys.executable, "-m", "sft_trainer.cli", "export", str(out), "--out", str(merged_dir), "--merge"],
        capture_output=True, text=True, timeout=120,
    ).returncode  # fmt: skip
    tokens = torch.randint(0, 256, (2, 24), device="cuda")

    def logits(model: Any) -> Any:
        with torch.no_grad():
            return model.to("cuda", torch.float32).eval()(tokens).logits

    final = logits(AutoModelForCausalLM.from_pretrained(out / "final"))
    unmerged = logits(
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), out / "final" / "adapter")
    )
    base = logits(AutoModelForCausalLM.from_pretrained(base_dir))
    exported = logits(AutoModelForCausalLM.from_pretrained(merged_dir)) if export_rc == 0 else None
    final_vs_unmerged = float((final - unmerged).abs().max())
    steps = sorted(losses)
    ok = (
        code == 0
        and bool(steps)
        and losses[steps[-1]] < losses[steps[0]]
        and facts.get("tensor_keys", 0) > 0
        and not facts.get("non_adapter_keys")
        # final/ holds the bf16 weights training used (base rounded to bf16, plus B.A.s); peft adds the
        # adapter to the fp32 base: they agree to bf16 resolution (~1e-2 relative; docs/lora.md)
        and final_vs_unmerged < 1e-2 * float(final.abs().max())
        and float((final - base).abs().max()) > 1e-1  # the adapter changed the model
        and exported is not None
        and float((exported - unmerged).abs().max()) < 1e-4  # export --merge: peft's own merge, in fp32
    )
    return {
        "exit": code,
        "seconds": seconds,
        "first_last_loss": [losses.get(steps[0]), losses.get(steps[-1])] if steps else None,
        "checkpoint": facts,
        "final_vs_peft_unmerged_max_abs": final_vs_unmerged,
        "final_vs_base_max_abs": float((final - base).abs().max()),
        "logit_scale_max_abs": float(final.abs().max()),
        "export_merge_exit": export_rc,
        "export_vs_final_max_abs": None if exported is None else float((exported - final).abs().max()),
        "export_vs_peft_unmerged_max_abs": None if exported is None else float((exported - unmerged).abs().max()),
        "tail": tail,
        "ok": ok,
    }


SCENARIOS = {
    "async_resume": async_resume,
    "nan": nan_exit,
    "oom": oom_exit,
    "lost_rank": lost_rank,
    "lora": lora_run,
}


def main(argv: list[str]) -> int:
    """`SCENARIO OUT.json`: run one scenario, write its result (plus the card) as JSON."""
    name, out = argv[0], Path(argv[1])
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    work = Path(tempfile.mkdtemp(prefix=f"sft-{name}-"))
    start = time.perf_counter()
    try:
        result = SCENARIOS[name](work)
    except Exception as error:  # one device call runs every scenario: report, don't crash
        result = {"ok": False, "error": f"{type(error).__name__}: {error}"[:2000]}
    result["device"] = device
    result["wall_s"] = round(time.perf_counter() - start, 1)
    result["work"] = str(work)
    out.write_text(json.dumps(result, indent=1, default=str))
    brief = {k: v for k, v in result.items() if not k.startswith(("losses", "tail", "rank0_tail"))}
    print(f"== {name}: {json.dumps(brief, default=str)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
