"""HF <-> megatron-core state-dict conversion on CPU (no megatron-core needed: pure tensor code).

Checks, for Llama (GQA, tied and untied), Qwen2 (QKV bias) and Mistral:
- HF -> megatron -> HF is bit-exact, through every TP in {1, 2, 4} x PP in {1, 2} (and an interleaved
  virtual pipeline);
- the shards have the shapes megatron allocates and re-assemble exactly;
- the megatron layout means the same function: a plain-torch forward over the megatron-layout
  weights (fused QKV per query group, [gate; up] fc1, norms fused into the next linear) gives
  the Hugging Face model's logits.
"""

import math
from typing import Any

import pytest
import torch
from torch.nn import functional as F  # noqa: N812
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

from sft_trainer.backends.megatron import conversion as cv

SMALL: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "vocab_size": 250,
    "max_position_embeddings": 64,
}

HFCausalLM = LlamaForCausalLM | MistralForCausalLM | Qwen2ForCausalLM


def _llama(tied: bool) -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(**SMALL, tie_word_embeddings=tied))


def _llama_scaled() -> LlamaForCausalLM:
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32, "rope_theta": 500000.0}  # fmt: skip
    return LlamaForCausalLM(LlamaConfig(**SMALL, rope_parameters=scaling))


def _qwen2() -> Qwen2ForCausalLM:
    return Qwen2ForCausalLM(Qwen2Config(**SMALL, tie_word_embeddings=False))


def _mistral() -> MistralForCausalLM:
    return MistralForCausalLM(MistralConfig(**SMALL, sliding_window=None))


MODELS = {
    "llama-gqa-untied": lambda: _llama(False),
    "llama-gqa-tied": lambda: _llama(True),
    "llama3-rope-scaling": _llama_scaled,
    "qwen2-qkv-bias": _qwen2,
    "mistral": _mistral,
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request: pytest.FixtureRequest) -> HFCausalLM:
    torch.manual_seed(0)
    m = MODELS[request.param]()
    with torch.no_grad():  # norms start at exactly 1: randomise them so a swap would show
        for name, p in m.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.normal_()
    return m.eval()


def _hf_state(model: HFCausalLM) -> dict[str, torch.Tensor]:
    state = {k: v for k, v in model.state_dict().items() if "rotary_emb" not in k}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    return state


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize(("pp", "vpp"), [(1, None), (2, None), (2, 2)])
def test_round_trip_bit_exact(model: HFCausalLM, tp: int, pp: int, vpp: int | None) -> None:
    hf = _hf_state(model)
    shape = cv.shape_from_hf_config(model.config, padded_vocab=cv.padded_vocab_size(model.config.vocab_size, tp))
    shards = cv.hf_to_megatron_shards(hf, shape, tp=tp, pp=pp, vpp=vpp)
    assert len(shards) == tp * pp * (vpp or 1)
    back = cv.megatron_shards_to_hf(shards, shape)
    assert back.keys() == hf.keys()
    assert set(cv.expected_hf_keys(shape)) == set(back)
    for name, tensor in hf.items():
        assert back[name].dtype == tensor.dtype
        assert torch.equal(back[name], tensor), name


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize(("pp", "vpp"), [(1, None), (2, None), (2, 2)])
def test_shards_have_megatron_shapes_and_reassemble(model: HFCausalLM, tp: int, pp: int, vpp: int | None) -> None:
    shape = cv.shape_from_hf_config(model.config, padded_vocab=cv.padded_vocab_size(model.config.vocab_size, tp))
    full = cv.hf_to_megatron(_hf_state(model), shape)
    shards = cv.shard(full, shape, tp=tp, pp=pp, vpp=vpp)
    h, d, f = shape.hidden_size, shape.head_dim, shape.intermediate_size
    qkv_rows = (shape.num_attention_heads + 2 * shape.num_key_value_heads) * d
    layers_per_chunk = shape.num_layers // (pp * (vpp or 1))
    for (rank, chunk, _), local in shards.items():
        first, last = (rank, chunk) == (0, 0), (rank, chunk) == (pp - 1, (vpp or 1) - 1)
        assert ("embedding.word_embeddings.weight" in local) == first
        assert ("decoder.final_layernorm.weight" in local) == last
        has_output = last and (not shape.tie_word_embeddings or not first)
        assert ("output_layer.weight" in local) == has_output
        for i in range(layers_per_chunk):
            p = f"decoder.layers.{i}."
            assert local[p + "self_attention.linear_qkv.weight"].shape == (qkv_rows // tp, h)
            assert local[p + "self_attention.linear_proj.weight"].shape == (h, shape.num_attention_heads * d // tp)
            assert local[p + "mlp.linear_fc1.weight"].shape == (2 * f // tp, h)
            assert local[p + "mlp.linear_fc2.weight"].shape == (h, f // tp)
        assert f"decoder.layers.{layers_per_chunk}.mlp.linear_fc2.weight" not in local
        if first:
            assert local["embedding.word_embeddings.weight"].shape == (shape.vocab_rows // tp, h)
    rebuilt = cv.unshard(shards, shape)
    assert rebuilt.keys() == full.keys()
    assert all(torch.equal(rebuilt[k], full[k]) for k in full)


def test_tp_shard_holds_whole_query_groups() -> None:
    """TP rank t's fused QKV holds exactly query groups [t*g/tp, (t+1)*g/tp) with their q, k, v heads."""
    shape = cv.ModelShape(
        1, 8, num_attention_heads=4, num_key_value_heads=2, head_dim=2, intermediate_size=4, vocab_size=8
    )
    q = torch.arange(8 * 8).reshape(8, 8).float()
    k, v = q[:4] + 1000, q[:4] + 2000
    rank0, rank1 = cv.tp_split("linear_qkv.weight", cv.pack_qkv(q, k, v, shape), 2)
    assert torch.equal(rank0, torch.cat([q[:4], k[:2], v[:2]]))
    assert torch.equal(rank1, torch.cat([q[4:], k[2:], v[2:]]))


def test_vocab_padding_and_errors() -> None:
    assert cv.padded_vocab_size(50257, 1) == 50304
    assert cv.padded_vocab_size(50257, 2) == 50432
    assert cv.padded_vocab_size(128256, 4) == 128512
    assert cv.padded_vocab_size(250, 1, multiple=1) == 250
    with pytest.raises(ValueError, match="pipeline stages"):
        cv.layer_ranges(5, 2)
    assert cv.layer_ranges(8, 2, 2) == {
        (0, 0): range(0, 2),
        (1, 0): range(2, 4),
        (0, 1): range(4, 6),
        (1, 1): range(6, 8),
    }
    with pytest.raises(ValueError, match="unsupported"):
        cv.shape_from_hf_config(LlamaConfig(**SMALL, architectures=["GPT2LMHeadModel"]))


# ---------------------------------------------------------------------------------------------
# The megatron layout computes the HF function: a plain-torch forward over megatron-layout weights
# ---------------------------------------------------------------------------------------------


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rope(x: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    pos = torch.arange(x.shape[1], dtype=torch.float64)
    freqs = torch.outer(pos, inv_freq.double())
    emb = torch.cat([freqs, freqs], dim=-1)[None, :, None, :]
    x1, x2 = x.chunk(2, dim=-1)
    return x * emb.cos() + torch.cat([-x2, x1], dim=-1) * emb.sin()


def _megatron_layout_forward(
    mg: dict[str, torch.Tensor], shape: cv.ModelShape, ids: torch.Tensor, inv_freq: torch.Tensor, eps: float
) -> torch.Tensor:
    """Logits [B, S, V] from a full megatron-layout state dict, in float64 (reference semantics)."""
    g, qpg, d = shape.num_key_value_heads, shape.queries_per_group, shape.head_dim
    x = F.embedding(ids, mg["embedding.word_embeddings.weight"])
    b, s, _ = x.shape
    for i in range(shape.num_layers):
        p = f"decoder.layers.{i}."
        h = _rms(x, mg[p + "self_attention.linear_qkv.layer_norm_weight"], eps)
        qkv = F.linear(h, mg[p + "self_attention.linear_qkv.weight"], mg.get(p + "self_attention.linear_qkv.bias"))
        qkv = qkv.view(b, s, g, (qpg + 2) * d)
        q, k, v = torch.split(qkv, [qpg * d, d, d], dim=-1)
        q = _rope(q.reshape(b, s, g * qpg, d), inv_freq)
        k = _rope(k, inv_freq).repeat_interleave(qpg, dim=2)
        v = v.repeat_interleave(qpg, dim=2)
        att = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + F.linear(att.transpose(1, 2).reshape(b, s, -1), mg[p + "self_attention.linear_proj.weight"])
        h = _rms(x, mg[p + "mlp.linear_fc1.layer_norm_weight"], eps)
        gate, up = F.linear(h, mg[p + "mlp.linear_fc1.weight"]).chunk(2, dim=-1)
        x = x + F.linear(F.silu(gate) * up, mg[p + "mlp.linear_fc2.weight"])
    x = _rms(x, mg["decoder.final_layernorm.weight"], eps)
    out_w = mg["embedding.word_embeddings.weight" if shape.tie_word_embeddings else "output_layer.weight"]
    return F.linear(x, out_w)[..., : shape.vocab_size]


def test_megatron_layout_computes_hf_logits(model: HFCausalLM) -> None:
    shape = cv.shape_from_hf_config(model.config, padded_vocab=256)
    mg = {k: v.double() for k, v in cv.hf_to_megatron(_hf_state(model), shape).items()}
    ids = torch.randint(0, model.config.vocab_size, (2, 24))
    inv_freq = model.model.rotary_emb.inv_freq
    assert math.isclose(getattr(model.model.rotary_emb, "attention_scaling", 1.0), 1.0)
    ours = _megatron_layout_forward(mg, shape, ids, inv_freq, model.config.rms_norm_eps)
    with torch.no_grad():
        ref = model.double()(ids).logits
    model.float()
    # HF computes RoPE's cos/sin in float32, so agreement is at float32 rounding; a layout error is O(1).
    assert ((ours - ref).norm() / ref.norm()).item() < 1e-6


# ---------------------------------------------------------------------------------------------
# model.py's pure parts: the plan and HF's RoPE frequencies
# ---------------------------------------------------------------------------------------------


def test_hf_inv_freq_matches_transformers(model: HFCausalLM) -> None:
    from sft_trainer.backends.megatron.model import hf_inv_freq

    assert torch.equal(hf_inv_freq(model.config), model.model.rotary_emb.inv_freq.float())


def test_plan_pads_vocab_and_refuses_what_megatron_cannot_do() -> None:
    from sft_trainer.backends.megatron.model import make_plan
    from sft_trainer.config.schema import ParallelismConfig

    plan = make_plan(LlamaConfig(**{**SMALL, "vocab_size": 50257}), ParallelismConfig(tensor_model_parallel_size=2))
    assert plan.shape.vocab_rows == 50432 and plan.shape.vocab_size == 50257
    with pytest.raises(ValueError, match="sliding-window"):
        make_plan(MistralConfig(**SMALL, sliding_window=16), ParallelismConfig())
    assert make_plan(MistralConfig(**SMALL, sliding_window=16), ParallelismConfig(), max_seq_length=16)
    with pytest.raises(ValueError, match="key/value heads"):
        make_plan(LlamaConfig(**SMALL), ParallelismConfig(tensor_model_parallel_size=8))
