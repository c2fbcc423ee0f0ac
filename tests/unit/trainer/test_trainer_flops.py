"""MFU arithmetic (NeMo causal formula)."""

import pytest
from transformers import GPT2Config, LlamaConfig

from sft_trainer.flops import effective_sequence_length, flops_per_token, matmul_parameters, mfu, peak_tflops


def test_llama_1b_shape_matches_the_issue_model() -> None:
    # Llama-3.2-1B shape: its 1.236 B parameters minus the 262 M input embedding (tied: counted once, as the head).
    config = LlamaConfig(
        hidden_size=2048,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=8192,
        vocab_size=128256,
        tie_word_embeddings=True,
    )
    assert matmul_parameters(config) == 16 * (2048 * 64 * (64 + 16) + 3 * 2048 * 8192) + 2048 * 128256
    assert matmul_parameters(config) == pytest.approx(1.236e9 - 2048 * 16 * 2, rel=0.01)
    assert flops_per_token(config, 4096) == 6 * matmul_parameters(config) + 6 * 16 * 2048 * 4096


def test_gpt2_counts_two_mlp_matrices() -> None:
    config = GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=100)
    assert matmul_parameters(config) == 2 * (64 * 16 * 16 + 2 * 64 * 256) + 64 * 100


def test_effective_length_weights_long_rows() -> None:
    assert effective_sequence_length([4, 4]) == 4
    assert effective_sequence_length([1, 3]) == pytest.approx(10 / 4)
    assert effective_sequence_length([]) == 0.0


def test_peak_is_configured_or_known_or_unknown() -> None:
    assert peak_tflops("NVIDIA H100 80GB HBM3", None) == 989.0
    assert peak_tflops("cpu", 2.5) == 2.5
    assert peak_tflops("cpu", None) is None
    assert mfu(tokens_per_s=1000.0, flops_per_token_value=1e9, peak_tflops_per_device=1.0, devices=2) == 0.5
