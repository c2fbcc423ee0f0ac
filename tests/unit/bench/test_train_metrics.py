"""The pure arithmetic of the training benchmark: FLOPs, step summaries, epochs, scaling, goals, profiles."""

import math
from typing import Any

import pytest

from bench import train_metrics as tm


def test_llama_1b_flops_match_the_nemo_formula_by_hand() -> None:
    hidden, layers, heads, kv, ffn, vocab = 2048, 16, 32, 8, 8192, 128256
    head_dim = hidden // heads
    matmul = layers * (hidden * head_dim * (2 * heads + 2 * kv) + 3 * hidden * ffn) + hidden * vocab
    assert matmul == 1_235_746_816  # Llama-3.2-1B: 1.236 B (tied: the embedding counted once, as the head)
    assert tm.model_flops_per_token("llama-1b", 4096) == 6 * matmul + 6 * layers * hidden * 4096


def test_llama_8b_counts_the_untied_head_once() -> None:
    matmul = 32 * (4096 * 128 * (2 * 32 + 2 * 8) + 3 * 4096 * 14336) + 4096 * 128256
    assert tm.model_flops_per_token("llama-8b", 0) == 6 * matmul
    assert 7.4e9 < matmul < 7.6e9


def test_summarize_drops_warmup_and_sums_the_rest() -> None:
    stats = tm.summarize_steps([5.0, 1.0, 2.0, 3.0], [10, 100, 200, 300], [1.0, 0.01, 0.02, 0.03], warmup=1)
    assert stats.steps == 3 and stats.tokens == 600 and stats.seconds == 6.0
    assert stats.median_step_s == 2.0 and stats.data_wait_s == pytest.approx(0.06)


def test_summarize_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="differ"):
        tm.summarize_steps([1.0], [1, 2], [0.0], 0)
    with pytest.raises(ValueError, match="no step left"):
        tm.summarize_steps([1.0], [1], [0.0], 1)


def test_throughput_per_gpu_mfu_epoch_and_wait() -> None:
    stats = tm.StepStats(steps=10, tokens=4_000_000, seconds=10.0, median_step_s=1.0, data_wait_s=0.1)
    out = tm.throughput(stats, gpus=4, flops_token=1e10, epoch_tokens=36_000_000, peak_tflops=1000.0)
    assert out["tokens_per_s_per_gpu"] == 100_000.0
    assert out["tflops_per_gpu"] == 1000.0 and out["mfu"] == 1.0
    assert out["epoch_hours"] == pytest.approx(36_000_000 / 400_000 / 3600, abs=1e-3)
    assert out["data_wait_pct"] == 1.0


def test_epoch_hours_of_zero_throughput_is_infinite() -> None:
    assert math.isinf(tm.epoch_hours(100, 0.0))


def test_scaling_efficiencies() -> None:
    per_gpu = {1: 100.0, 2: 95.0, 4: 85.5}
    assert tm.scaling_efficiency(per_gpu) == {"1->2": 0.95, "1->4": 0.855}
    assert tm.step_efficiency(per_gpu) == {"1->2": 0.95, "2->4": 0.9}
    assert tm.scaling_efficiency({}) == {}


def test_best_and_goals() -> None:
    rows: list[dict[str, Any]] = [
        {"tokens_per_s_per_gpu": 3.0, "n": "a"},
        {"tokens_per_s_per_gpu": 5.0, "n": "b"},
        {"n": "c"},
    ]
    assert tm.best(rows) == rows[1]
    assert tm.best([]) is None
    assert tm.goal("mfu", 0.52, 0.5)["met"] is True
    assert tm.goal("mfu", None, 0.5)["met"] is False
    assert tm.goal("wait", 1.5, 2.0, lower_is_better=True)["met"] is True
    assert tm.goal("wait", 2.5, 2.0, lower_is_better=True)["met"] is False


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("ncclDevKernel_AllGather_RING_LL", "communication"),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop", "attention"),
        ("nvjet_hsh_256x128_64x4_1x2_h_bz_coopA_NTN", "gemm"),
        ("sm90_xmma_gemm_bf16bf16_bf16f32", "gemm"),
        ("multi_tensor_apply_kernel<AdamFunctor>", "optimizer"),
        ("cross_entropy_kernel", "cross_entropy"),
        ("rmsnorm_fwd_tuned_kernel", "norm_rope_act"),
        ("void at::native::vectorized_elementwise_kernel<add>", "elementwise_other"),
    ],
)
def test_kernel_classes(name: str, label: str) -> None:
    assert tm.kernel_class(name) == label


def test_interval_union_and_exposed_time() -> None:
    assert tm.merge_intervals([(5, 7), (0, 2), (1, 3)]) == [(0, 3), (5, 7)]
    assert tm.covered([(0, 2), (1, 3), (5, 7)]) == 5
    # comm [0, 10) under compute [2, 4) and [6, 12): exposed 0-2 and 4-6
    assert tm.uncovered([(0, 10)], [(2, 4), (6, 12)]) == 4
    assert tm.uncovered([(0, 10)], []) == 10
    assert tm.uncovered([(0, 1), (3, 4)], [(0, 5)]) == 0


def test_kernel_summary_from_a_trace() -> None:
    trace = {
        "traceEvents": [
            {"cat": "kernel", "name": "nvjet_gemm", "ts": 0.0, "dur": 600.0},
            {"cat": "kernel", "name": "ncclDevKernel_ReduceScatter", "ts": 500.0, "dur": 300.0},
            {"cat": "kernel", "name": "rmsnorm_fwd", "ts": 900.0, "dur": 100.0},
            {"cat": "cpu_op", "name": "aten::mm", "ts": 0.0, "dur": 5.0},
        ]
    }
    summary = tm.kernel_summary(tm.trace_kernels(trace))
    assert summary["span_ms"] == 1.0 and summary["kernel_ms"] == 1.0
    assert summary["share_pct"] == {"gemm": 60.0, "communication": 30.0, "norm_rope_act": 10.0}
    assert summary["comm_ms"] == 0.3 and summary["exposed_comm_ms"] == 0.2  # 600-800 has no compute
    assert summary["busy_pct"] == 90.0
    assert tm.kernel_summary([]) == {}


def test_table_formats_every_row() -> None:
    rows = [{"system": "ours", "config": "x mbs 2", "gpus": 1, "tokens_per_s_per_gpu": 65000.0, "mfu": 0.5}]
    table = tm.format_table(rows)
    assert "65000" in table and "50.0%" in table and len(table.splitlines()) == 2


def test_median_rate() -> None:
    assert tm.median_rate(131_068, 4, 1.5, 2) == pytest.approx(131_068 / 4 / 1.5 / 2)
    assert tm.median_rate(100, 0, 1.0, 1) == 0.0


def test_merge_goals_takes_the_last_measured_call_and_the_worst_ceiling() -> None:
    from bench.train_throughput.results import merge_goals

    call1 = [tm.goal("a", 0.6, 0.5), tm.goal("wait", 0.5, 2.0, lower_is_better=True), tm.goal("b", None, 1.0)]
    call2 = [tm.goal("a", 0.4, 0.5), tm.goal("wait", 0.2, 2.0, lower_is_better=True), tm.goal("b", None, 1.0)]
    merged = merge_goals([call1, call2])
    assert [(g["measured"], g["call"]) for g in merged] == [(0.4, 2), (0.5, 1), (None, 2)]


def test_a_loss_positions_only_head_skips_the_head_flops_of_the_other_tokens() -> None:
    assert tm.head_flops_skipped("llama-1b", 1.0) == 0.0
    assert tm.head_flops_skipped("llama-1b", 0.0) == 6.0 * 2048 * 128256
    assert tm.head_flops_skipped("llama-1b", 0.25) == 0.75 * 6.0 * 2048 * 128256
