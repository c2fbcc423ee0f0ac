"""Model FLOPs utilisation (MFU) with the NeMo causal formula.

Training FLOPs per token = 6 x (parameters in matrix multiplies, the output head included)
+ 6 x layers x hidden x sequence length (attention scores and values). MFU is the achieved
model FLOP/s over the device's dense bf16 peak. The sequence term uses the effective sequence
length of the step's rows, sum(L^2) / sum(L): exact for unpadded rows of one example, an
overestimate for packed rows (whose examples attend only within themselves).
"""

from collections.abc import Sequence
from typing import Any

# Dense bf16 peak TFLOP/s by device-name fragment (datasheet figures, without sparsity).
PEAK_TFLOPS_BY_DEVICE = {"H200": 989.0, "H100": 989.0, "A100": 312.0}


def matmul_parameters(model_config: Any) -> int:
    """Weights that take part in matrix multiplies, from a Llama-family or GPT-2 config."""
    hidden = _first(model_config, "hidden_size", "n_embd")
    layers = _first(model_config, "num_hidden_layers", "n_layer")
    heads = _first(model_config, "num_attention_heads", "n_head")
    kv_heads = getattr(model_config, "num_key_value_heads", None) or heads
    vocab = model_config.vocab_size
    head_dim = getattr(model_config, "head_dim", None) or hidden // heads
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)  # q, o and k, v projections
    if getattr(model_config, "intermediate_size", None):  # gated MLP: gate, up, down
        mlp = 3 * hidden * model_config.intermediate_size
    else:  # GPT-2: fc and proj
        mlp = 2 * hidden * (getattr(model_config, "n_inner", None) or 4 * hidden)
    return layers * (attention + mlp) + hidden * vocab


def flops_per_token(model_config: Any, sequence_length: float) -> float:
    """Training FLOPs for one token at the given (effective) sequence length."""
    hidden = _first(model_config, "hidden_size", "n_embd")
    layers = _first(model_config, "num_hidden_layers", "n_layer")
    return 6.0 * matmul_parameters(model_config) + 6.0 * layers * hidden * sequence_length


def effective_sequence_length(lengths: Sequence[int]) -> float:
    """sum(L^2) / sum(L): the attention length an average token sees."""
    total = sum(lengths)
    return sum(length * length for length in lengths) / total if total else 0.0


def peak_tflops(device_name: str | None, configured: float | None) -> float | None:
    """The configured peak, else the datasheet peak of a known device, else None (MFU not reported)."""
    if configured is not None:
        return configured
    for fragment, peak in PEAK_TFLOPS_BY_DEVICE.items():
        if device_name and fragment in device_name:
            return peak
    return None


def mfu(tokens_per_s: float, flops_per_token_value: float, peak_tflops_per_device: float, devices: int) -> float:
    """Achieved model FLOP/s over the peak of all devices."""
    return tokens_per_s * flops_per_token_value / (peak_tflops_per_device * 1e12 * devices)


def _first(model_config: Any, *names: str) -> int:
    for name in names:
        value = getattr(model_config, name, None)
        if value:
            return int(value)
    raise ValueError(f"model config has none of {names}")
