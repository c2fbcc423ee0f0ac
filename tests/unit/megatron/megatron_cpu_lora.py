"""Real megatron-core (local layer spec, no Transformer Engine) + `MegatronLora` on the CPU, vs peft.

    PYTHONPATH=<megatron-core>:trainer_image:. python tests/unit/megatron/megatron_cpu_lora.py RANK WORLD PORT

Run by `test_lora_megatron_cpu.py` (one process for TP=1, two gloo processes for TP=2) where
megatron-core imports. Builds a 2-layer GPTModel, loads a tiny Llama's weights through
`conversion`, attaches the adapters of a peft model with random B through `MegatronLora`, and
prints one JSON line: max |logits - peft logits|, max |adapter grads - peft grads| (TP shards
gathered through `megatron_adapter_shards_to_hf`, which also checks that replicated grads agree),
and whether any base parameter got a gradient. The local spec's column layers take the normalised
input as their argument, so this covers everything but TE's `return_layernorm_output` path.
"""

import contextlib
import copy
import json
import os
import sys
import types

import torch
import torch.distributed as dist


def main(rank: int, world: int, port: int) -> None:
    """Build, attach, compare; rank 0 prints the JSON line."""
    import peft
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region, get_cuda_rng_tracker
    from megatron.core.transformer import TransformerConfig
    from transformers import LlamaConfig, LlamaForCausalLM

    from sft_trainer.backends.megatron import conversion as cv
    from sft_trainer.backends.megatron import lora as ml
    from sft_trainer.backends.megatron import lora_mapping as lmap
    from sft_trainer.backends.megatron import lora_merge as lmrg
    from sft_trainer.backends.megatron.model import hf_inv_freq
    from sft_trainer.config.schema import LoraConfig, SFTConfig

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo")
    ps.initialize_model_parallel(world, 1)
    torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment,return-value]  # megatron's RoPE asks
    get_cuda_rng_tracker().fork = lambda *a, **k: contextlib.nullcontext()  # no CUDA RNG on the CPU

    torch.manual_seed(0)
    hf_config = LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=4, max_position_embeddings=64, architectures=["LlamaForCausalLM"],
    )  # fmt: skip
    base = LlamaForCausalLM(hf_config).eval()
    shape = cv.shape_from_hf_config(hf_config, padded_vocab=256)
    tconfig = TransformerConfig(
        num_layers=2, hidden_size=64, num_attention_heads=8, num_query_groups=4, kv_channels=8, ffn_hidden_size=96,
        normalization="RMSNorm", layernorm_epsilon=hf_config.rms_norm_eps, gated_linear_unit=True,
        activation_func=torch.nn.functional.silu, add_bias_linear=False, hidden_dropout=0.0, attention_dropout=0.0,
        use_cpu_initialization=True, params_dtype=torch.float32, bias_activation_fusion=False,
        masked_softmax_fusion=False, apply_rope_fusion=False, gradient_accumulation_fusion=False,
        persist_layer_norm=False, tensor_model_parallel_size=world,
    )  # fmt: skip
    model = GPTModel(
        config=tconfig,
        transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
        vocab_size=256,
        max_sequence_length=64,
        position_embedding_type="rope",
        share_embeddings_and_output_weights=False,
    )
    model.rotary_pos_emb.inv_freq = hf_inv_freq(hf_config)
    full = cv.hf_to_megatron({k: v for k, v in base.state_dict().items() if "rotary" not in k}, shape)
    local = {}
    for name, tensor in full.items():  # the local spec keeps its norms outside the linear layers
        name = name.replace("self_attention.linear_qkv.layer_norm_weight", "input_layernorm.weight")
        name = name.replace("mlp.linear_fc1.layer_norm_weight", "pre_mlp_layernorm.weight")
        local[name] = cv.tp_split(name, tensor, world)[rank]
    loaded = model.load_state_dict(local, strict=False)
    assert not [k for k in loaded.missing_keys if "extra_state" not in k] and not loaded.unexpected_keys

    lora = LoraConfig(rank=4, alpha=8.0, target_modules=["all"])
    config = SFTConfig.model_validate(
        {
            "model": {"source": "random", "architecture": {"hidden_size": 64}, "tokenizer": {"type": "byte"}},
            "data": {"train_file": "x.jsonl"},
            "trainer": {"devices": world},
            "parallelism": {"tensor_model_parallel_size": world},
            "training": {"method": "lora", "lora": lora.model_dump()},
        }
    )
    wrapped = peft.get_peft_model(copy.deepcopy(base), lmrg.peft_lora_config(lora, lmap.adapted_layers(["all"])))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    init = {k: v.clone() for k, v in peft.get_peft_model_state_dict(wrapped).items()}
    backend = types.SimpleNamespace(
        config=config,
        plan=types.SimpleNamespace(shape=shape, hf_config=hf_config),
        tconfig=tconfig,
        device=torch.device("cpu"),
        chunks=[model],
        _rank_key=lambda index: (0, index, rank),
    )
    adapters = ml.MegatronLora(backend, init)

    ids = torch.randint(0, 256, (2, 16))
    positions = torch.arange(16)[None].expand(2, 16)
    mask = torch.triu(torch.ones(16, 16), 1).bool()[None, None]
    ours = gather_from_tensor_model_parallel_region(model(ids, positions, mask))
    ref = wrapped(input_ids=ids).logits
    ours.float().logsumexp(-1).mean().backward()
    ref.logsumexp(-1).mean().backward()
    mine = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    every: list = [None] * world
    dist.all_gather_object(every, mine)
    grads = lmap.megatron_adapter_shards_to_hf({(0, 0, t): every[t] for t in range(world)}, shape, adapters.layers)
    peft_grads = {n.replace(".default", ""): p.grad for n, p in wrapped.named_parameters() if p.grad is not None}
    result = {
        "world": world,
        "logits_max_abs_diff": float((ours - ref).abs().max()),
        "adapter_effect": float((ref - base(input_ids=ids).logits).abs().max()),
        "grad_max_abs_diff": max(float((grads[k] - peft_grads[k]).abs().max()) for k in peft_grads),
        "grads": len(grads),
        "base_grads": sum(p.grad is not None for p in model.parameters() if not p.requires_grad),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    if rank == 0:
        print(json.dumps(result), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
