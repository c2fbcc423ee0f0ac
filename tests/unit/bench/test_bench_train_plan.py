"""The training benchmark's stage plan and goal selection (pure parts of bench/train_throughput/)."""

from typing import Any

from bench.train_throughput.orchestrate import stage_plan
from bench.train_throughput.results import best_peer_row, evaluate_goals, with_peer_ratio
from bench.train_throughput.trl_peer import real_tokens


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


def test_the_best_peer_keeps_examples_apart_and_every_llama_1b_row_of_ours_gets_its_ratio() -> None:
    rows = [
        {**_row("ours-1b-1gpu mbs 8", 81000, 0.62, gpus=1)},
        {**_row("torch-1b-1gpu-bf16 mbs 4", 52000, 0.40, gpus=1), "system": "ours-torch"},
        {"system": "trl", "config": "trl-best batch 8", "gpus": 1, "tokens_per_s_per_gpu": 72000, "mfu": 0.55},
        {"system": "trl", "config": "trl-bfd batch 2", "gpus": 1, "tokens_per_s_per_gpu": 16800, "mfu": 0.13},
        {"system": "trl", "config": "trl-wrapped batch 8", "gpus": 1, "tokens_per_s_per_gpu": 99999, "mfu": 0.7},
    ]
    best = best_peer_row(rows)
    assert best is not None and best["config"] == "trl-best batch 8"  # wrapped crosses examples: never the peer
    ratios = {r["config"]: r.get("ratio_vs_best_peer") for r in with_peer_ratio(rows)}
    assert ratios["ours-1b-1gpu mbs 8"] == round(81000 / 72000, 3)
    assert ratios["torch-1b-1gpu-bf16 mbs 4"] == round(52000 / 72000, 3)
    assert ratios["trl-best batch 8"] is None
    goals = {line["goal"]: line for line in evaluate_goals(rows)}
    assert goals["llama-1b bf16 / best peer (TRL, examples kept apart)"]["measured"] == round(81000 / 72000, 4)
    assert goals["torch backend bf16 / best peer"]["measured"] == round(52000 / 72000, 4)


def test_real_tokens_of_a_padding_free_row_stop_at_its_right_padding() -> None:
    import torch

    row = {"input_ids": torch.zeros(1, 10), "position_ids": torch.tensor([[0, 1, 2, 0, 1, 2, 3, 0, 0, 0]])}
    assert real_tokens(row) == 7
    assert real_tokens({"input_ids": torch.zeros(2, 3), "attention_mask": torch.tensor([[1, 1, 0], [1, 0, 0]])}) == 3
    assert real_tokens({"input_ids": torch.zeros(1, 5)}) == 5
