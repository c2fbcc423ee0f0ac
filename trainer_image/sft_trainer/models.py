"""Build the model to fine-tune: a Hugging Face checkpoint, a llama2.c file, or a random Llama.

Every model is a `transformers` causal LM using PyTorch's scaled-dot-product attention ("sdpa").
Nothing here reaches for the network.
"""

import struct
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel
from transformers.utils import logging as hf_logging

from sft_trainer.config.schema import ArchitectureConfig, ModelConfig

ATTN_IMPLEMENTATION = "sdpa"
hf_logging.disable_progress_bar()  # loading and saving bars would interleave with training progress


class ModelError(ValueError):
    """The model cannot be built (missing or unreadable files, unsupported format)."""


def load_model(config: ModelConfig, vocab_size: int, seed: int) -> PreTrainedModel:
    """The model `config` names, in float32 on the CPU (the backend moves and wraps it).

    `vocab_size` (the tokenizer's) sizes a random model whose architecture leaves it unset.
    `seed` makes random initialisation reproducible.
    """
    if config.source == "hf":
        return load_hf(Path(_path(config)))
    if config.source == "llama2c":
        return load_llama2c(Path(_path(config)))
    if config.source == "random":
        assert config.architecture is not None  # the schema guarantees it
        return random_llama(config.architecture, vocab_size, seed)
    raise ModelError(f"model.source={config.source} is not supported by the torch backend")


def _path(config: ModelConfig) -> str:
    assert config.path is not None  # the schema guarantees it
    return config.path


def load_hf(directory: Path) -> PreTrainedModel:
    """A Hugging Face checkpoint directory (config.json + safetensors), offline."""
    if not (directory / "config.json").is_file():
        raise ModelError(f"{directory}: not a Hugging Face model directory (no config.json)")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(directory), local_files_only=True, dtype=torch.float32, attn_implementation=ATTN_IMPLEMENTATION
        )
    except (OSError, ValueError) as error:
        raise ModelError(f"{directory}: cannot load the model ({error})") from error
    return model


def llama_config(arch: ArchitectureConfig, vocab_size: int) -> LlamaConfig:
    """The `LlamaConfig` of an architecture block."""
    return LlamaConfig(
        vocab_size=arch.vocab_size or vocab_size,
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_key_value_heads,
        max_position_embeddings=arch.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": arch.rope_theta},
        rms_norm_eps=arch.rms_norm_eps,
        tie_word_embeddings=arch.tie_word_embeddings,
    )


def random_llama(arch: ArchitectureConfig, vocab_size: int, seed: int) -> LlamaForCausalLM:
    """A randomly initialised Llama-style model; the same seed gives the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(llama_config(arch, vocab_size))
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    return model.float()


LLAMA2C_HEADER = struct.Struct("<7i")


def load_llama2c(path: Path) -> LlamaForCausalLM:
    """Import a llama2.c model file (legacy version-0 format) as a `LlamaForCausalLM`.

    The file is a header of 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
    seq_len; a negative vocab_size means the classifier is not shared with the embedding), then
    float32 weights in llama2.c order. llama2.c rotates interleaved (even, odd) pairs of each head
    while Hugging Face rotates its two halves, so q and k rows are permuted, as in
    transformers' `convert_llama_weights_to_hf`.
    """
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ModelError(f"{path}: cannot read the llama2.c file ({error.strerror})") from error
    if len(raw) < LLAMA2C_HEADER.size:
        raise ModelError(f"{path}: too short for a llama2.c header")
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = LLAMA2C_HEADER.unpack_from(raw)
    shared = vocab > 0
    vocab = abs(vocab)
    head_size = dim // heads
    weights = np.frombuffer(raw, dtype="<f4", offset=LLAMA2C_HEADER.size)
    reader = _Reader(weights, path)

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=seq_len,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=shared,
        bos_token_id=1,
        eos_token_id=2,
    )
    embed = reader.take(vocab, dim)
    attn_norm = reader.take(layers, dim)
    wq = reader.take(layers, heads * head_size, dim)
    wk = reader.take(layers, kv_heads * head_size, dim)
    wv = reader.take(layers, kv_heads * head_size, dim)
    wo = reader.take(layers, dim, heads * head_size)
    ffn_norm = reader.take(layers, dim)
    w1 = reader.take(layers, hidden, dim)
    w2 = reader.take(layers, dim, hidden)
    w3 = reader.take(layers, hidden, dim)
    final_norm = reader.take(dim)
    reader.skip(2 * seq_len * head_size // 2)  # the precomputed RoPE tables (freq_cis_real, freq_cis_imag)
    classifier = embed if shared else reader.take(vocab, dim)

    state: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": embed,
        "model.norm.weight": final_norm,
        "lm_head.weight": classifier,
    }
    for i in range(layers):
        prefix = f"model.layers.{i}."
        state[prefix + "input_layernorm.weight"] = attn_norm[i]
        state[prefix + "post_attention_layernorm.weight"] = ffn_norm[i]
        state[prefix + "self_attn.q_proj.weight"] = _interleaved_to_halves(wq[i], heads)
        state[prefix + "self_attn.k_proj.weight"] = _interleaved_to_halves(wk[i], kv_heads)
        state[prefix + "self_attn.v_proj.weight"] = wv[i]
        state[prefix + "self_attn.o_proj.weight"] = wo[i]
        state[prefix + "mlp.gate_proj.weight"] = w1[i]
        state[prefix + "mlp.down_proj.weight"] = w2[i]
        state[prefix + "mlp.up_proj.weight"] = w3[i]
    model = LlamaForCausalLM(config)
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    model.load_state_dict(state, strict=True)
    return model.float()


def _interleaved_to_halves(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder each head's rows from interleaved rotary pairs to Hugging Face's rotate-half layout."""
    rows, cols = weight.shape
    return weight.view(heads, rows // heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


class _Reader:
    """Consumes consecutive float32 tensors from a llama2.c weight buffer."""

    def __init__(self, weights: np.ndarray, path: Path) -> None:
        self.weights = weights
        self.offset = 0
        self.path = path

    def take(self, *shape: int) -> torch.Tensor:
        count = int(np.prod(shape))
        if self.offset + count > self.weights.size:
            raise ModelError(f"{self.path}: truncated llama2.c file (weights end early)")
        chunk = self.weights[self.offset : self.offset + count]
        self.offset += count
        return torch.from_numpy(chunk.copy()).view(*shape)

    def skip(self, count: int) -> None:
        self.offset += count
