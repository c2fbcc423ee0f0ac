"""The training benchmark's stage plan and goal selection (pure parts of bench/bench_train.py)."""

from typing import Any

from bench.bench_train import evaluate_goals, stage_plan


def _gpus(plan: dict[str, Any], stage: str) -> list[int]:
    return [gpus for _, _, gpus in plan[stage]]


def test_llama_8b_data_parallel_layout_only_where_its_state_fits() -> None:
    big = stage_plan("1", 8, 3, gpus=4, card_gib=140)
    assert _gpus(big, "s4dp") == [4] and _gpus(big, "s5dp") == [4]
    assert "--tp" not in big["s4dp"][0][1] and "--fp8" in big["s5dp"][0][1]
    assert stage_plan("1", 8, 3, gpus=4, card_gib=80)["s4dp"] == []
    assert stage_plan("1", 8, 3, gpus=2, card_gib=140)["s4dp"] == []


def test_small_cards_keep_llama_8b_grads_in_bf16() -> None:
    assert "--bf16-grads" in stage_plan("1", 8, 3, gpus=2, card_gib=80)["s4"][0][1]
    assert "--bf16-grads" not in stage_plan("1", 8, 3, gpus=2, card_gib=140)["s4"][0][1]


def _row(config: str, tokens: float, mfu: float, gpus: int = 4) -> dict[str, Any]:
    return {"system": "ours", "config": config, "gpus": gpus, "tokens_per_s_per_gpu": tokens, "mfu": mfu,
            "tokens_per_s_per_gpu_median": tokens, "mfu_median": mfu, "data_wait_pct": 0.1}  # fmt: skip


def test_llama_8b_goals_take_the_best_layout_of_each_precision() -> None:
    rows = [
        _row("ours-8b-tp2sp-bf16 mbs 2", 11000, 0.50),
        _row("ours-8b-dp4-bf16 mbs 2", 12000, 0.55),
        _row("ours-8b-tp2sp-fp8 mbs 2", 13700, 0.63),
        _row("ours-8b-dp4-fp8 mbs 2", 16800, 0.77),
        _row("ours-8bhalf-1gpu-bf16 mbs 2", 99999, 0.99, gpus=1),  # a single-GPU proxy: never a goal
    ]
    goals = {line["goal"]: line for line in evaluate_goals(rows)}
    assert goals["llama-8b bf16 MFU (4 GPUs; goal: 4)"]["measured"] == 0.55
    assert goals["llama-8b FP8 / bf16 tokens/s"]["measured"] == 16800 / 12000
