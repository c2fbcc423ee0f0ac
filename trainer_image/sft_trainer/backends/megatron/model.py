"""megatron-core GPTModel construction (Transformer Engine layer spec) from a Hugging Face config.

Megatron-core and Transformer Engine are imported inside the functions, never at module import, so
this module imports on a CPU-only machine (CI) without them.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from sft_trainer.backends.megatron.conversion import ModelShape, padded_vocab_size, shape_from_hf_config
from sft_trainer.config.schema import ParallelismConfig

if TYPE_CHECKING:
    from megatron.core.models.gpt import GPTModel
    from megatron.core.transformer import TransformerConfig


@dataclass(frozen=True)
class ModelPlan:
    """Everything needed to build the megatron model for one HF architecture and parallel layout."""

    shape: ModelShape
    rope_theta: float
    rms_norm_eps: float
    max_position_embeddings: int
    init_std: float
    hf_config: Any  # the transformers config: RoPE scaling and export need it


def make_plan(
    hf_config: Any, parallelism: ParallelismConfig, vocab_multiple: int = 128, max_seq_length: int | None = None
) -> ModelPlan:
    """Shapes (with the vocabulary padded for tensor parallelism) and scalar hyper-parameters.

    A sliding attention window (Mistral v0.1) is accepted when no example can be longer than it
    (`max_seq_length`, default the model's context): then it never masks anything.
    """
    tp = parallelism.tensor_model_parallel_size
    vocab = int(hf_config.vocab_size)
    padded = padded_vocab_size(vocab, tp, vocab_multiple) if vocab_multiple > 1 or vocab % tp else vocab
    shape = shape_from_hf_config(hf_config, padded_vocab=padded)
    if shape.num_key_value_heads % tp:
        raise ValueError(f"{shape.num_key_value_heads} key/value heads do not divide over tensor parallel size {tp}")
    if getattr(hf_config, "sliding_window", None) and getattr(hf_config, "use_sliding_window", True):
        window = int(hf_config.sliding_window)
        longest = max_seq_length or int(hf_config.max_position_embeddings)
        if window < longest:
            raise ValueError(
                f"sliding-window attention ({window} tokens) with examples up to {longest} tokens is not "
                "supported by the megatron backend; set data.max_seq_length <= the window"
            )
    rope = getattr(hf_config, "rope_parameters", None) or {}
    theta = float(rope.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0)))
    return ModelPlan(
        shape=shape,
        rope_theta=theta,
        rms_norm_eps=float(hf_config.rms_norm_eps),
        max_position_embeddings=int(hf_config.max_position_embeddings),
        init_std=float(getattr(hf_config, "initializer_range", 0.02)),
        hf_config=hf_config,
    )


def hf_inv_freq(hf_config: Any) -> torch.Tensor:
    """RoPE inverse frequencies exactly as transformers computes them (any static `rope_type`).

    Megatron's own RoPE only knows Llama 3 scaling with fixed factors; copying HF's frequencies
    into megatron's RotaryEmbedding covers default, linear, llama3 and the rest in one way.
    """
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = getattr(hf_config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default")
    if rope_type == "dynamic":
        raise ValueError("dynamic RoPE scaling depends on the sequence length; not supported")
    if rope_type == "default":
        base = float(rope.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0)))
        dim = int(getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads)
        return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    inv_freq, attention_scaling = ROPE_INIT_FUNCTIONS[rope_type](hf_config, "cpu")
    if abs(float(attention_scaling) - 1.0) > 1e-12:
        raise ValueError(f"RoPE type {rope_type} scales attention ({attention_scaling}); not supported")
    return inv_freq.float()


_RECOMPUTE: dict[str, dict[str, Any]] = {
    "none": {},
    "selective": {"recompute_granularity": "selective", "recompute_modules": ["core_attn"]},
    "full": {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1},
}


def pipeline_p2p_settings(parallelism: ParallelismConfig) -> dict[str, Any]:
    """`TransformerConfig` fields for the pipeline's point-to-point exchange.

    Interleaved PP must not batch its sends and receives (`batch_p2p_comm`, megatron's default): in
    the steady state each step sends an activation forward and a gradient backward and receives
    both, in one `batch_isend_irecv` ordered [send prev, recv prev, send next, recv next]. With two
    stages the previous and the next rank are the same peer, and NCCL / gloo match a pair's sends
    and receives in issue order, so stage 1 receives stage 0's *gradient* as its input activation
    and the activation as its output gradient (measured on the CPU: micro-batches after the first
    group get a wrong forward, the loss stops falling, docs/notes/megatron-vpp.md). Unbatched,
    megatron's `_p2p_ops` orders the calls by even / odd rank and, for two stages, sends each
    direction over its own group (its overlapped p2p mode, `overlap_p2p_comm`, uses that path too).
    """
    if parallelism.virtual_pipeline_model_parallel_size:
        return {"batch_p2p_comm": False}
    return {}


def transformer_config(plan: ModelPlan, parallelism: ParallelismConfig, precision: str = "bf16") -> "TransformerConfig":
    """megatron-core TransformerConfig for a Llama-family decoder under the given parallel layout."""
    from megatron.core.transformer import TransformerConfig

    shape = plan.shape
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    fp8: dict[str, Any] = {}
    if parallelism.fp8 != "none":
        fp8 = {"fp8": parallelism.fp8, "fp8_recipe": parallelism.fp8_recipe, "fp8_param": False}
    return TransformerConfig(
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        num_attention_heads=shape.num_attention_heads,
        num_query_groups=shape.num_key_value_heads,
        kv_channels=shape.head_dim,
        ffn_hidden_size=shape.intermediate_size,
        normalization="RMSNorm",
        layernorm_epsilon=plan.rms_norm_eps,
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        add_bias_linear=False,
        add_qkv_bias=shape.qkv_bias,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=plan.init_std,
        tensor_model_parallel_size=parallelism.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallelism.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=parallelism.virtual_pipeline_model_parallel_size,
        context_parallel_size=parallelism.context_parallel_size,
        sequence_parallel=parallelism.sequence_parallel,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        params_dtype=dtype,
        pipeline_dtype=dtype,
        autocast_dtype=dtype,
        variable_seq_lengths=False,  # the backend pads a step's micro-batches to one THD length under PP
        calculate_per_token_loss=True,
        bias_activation_fusion=True,
        apply_rope_fusion=True,
        cross_entropy_loss_fusion=True,
        cross_entropy_fusion_impl="te",
        masked_softmax_fusion=True,
        attention_softmax_in_fp32=True,
        deallocate_pipeline_outputs=True,
        **_RECOMPUTE[parallelism.activation_recompute],
        **pipeline_p2p_settings(parallelism),
        **fp8,
    )


def build_gpt_chunk(
    plan: ModelPlan, config: "TransformerConfig", *, pre_process: bool, post_process: bool, vp_stage: int | None
) -> "GPTModel":
    """One model chunk (a pipeline stage or virtual-pipeline chunk) on the current CUDA device."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

    model = GPTModel(
        config=config,
        transformer_layer_spec=get_gpt_layer_with_transformer_engine_spec(  # TE's fused MLP ops, where the config asks
            use_te_op_fuser=config.use_transformer_engine_op_fuser, use_te_activation_func=config.use_te_activation_func
        ),
        vocab_size=plan.shape.vocab_rows,
        max_sequence_length=plan.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=plan.shape.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_base=int(plan.rope_theta),
        vp_stage=vp_stage,
    )
    rotary = getattr(model, "rotary_pos_emb", None)
    if rotary is not None:  # HF's exact frequencies (scaling included), before the first forward caches them
        rotary.inv_freq = hf_inv_freq(plan.hf_config).to(rotary.inv_freq.device)
    return model


def build_model_chunks(plan: ModelPlan, config: "TransformerConfig") -> list["GPTModel"]:
    """This rank's model chunks: one, or `virtual_pipeline_model_parallel_size` of them."""
    from megatron.core import parallel_state as ps

    chunks = config.virtual_pipeline_model_parallel_size or 1
    vp = (lambda c: c) if config.virtual_pipeline_model_parallel_size else (lambda c: None)
    return [
        build_gpt_chunk(
            plan,
            config,
            pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp(c)),
            post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp(c)),
            vp_stage=vp(c),
        )
        for c in range(chunks)
    ]
