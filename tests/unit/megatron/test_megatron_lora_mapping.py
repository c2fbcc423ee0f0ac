"""The pure parts of the megatron LoRA (`backends/megatron/lora.py`): no megatron-core, CPU only.

Layer mapping, per-rank shapes, HF (PEFT) <-> megatron adapter shards, and the key property: on
every tensor-parallel rank, the adapter adds exactly that rank's slice (in the base layer's layout,
as `conversion.tp_split` slices the base weight) of the full update `scale * B @ A`.
"""

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sft_trainer.backends.megatron import conversion as cv
from sft_trainer.backends.megatron import lora as ml
from sft_trainer.backends.megatron import lora_layers as llay
from sft_trainer.backends.megatron import lora_mapping as lmap
from sft_trainer.backends.megatron import lora_merge as lmrg
from sft_trainer.config.schema import LoraConfig, SFTConfig

SHAPE = cv.ModelShape(
    num_layers=4,
    hidden_size=64,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=8,
    intermediate_size=96,
    vocab_size=250,
)
LAYOUTS = [(1, 1, None), (2, 1, None), (4, 1, None), (1, 2, None), (2, 2, None), (2, 2, 2), (4, 2, 2)]


def _random_adapter(config: LoraConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A PEFT-layout adapter with non-zero B (fresh adapters have B = 0, which proves nothing)."""
    state = lmap.init_hf_adapter(SHAPE, config, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    return {k: torch.randn(v.shape, generator=generator) if ".lora_B." in k else v for k, v in state.items()}


# ---------------------------------------------------------------------------------------------
# mapping
# ---------------------------------------------------------------------------------------------


def test_targets_map_to_megatron_layers() -> None:
    layers = lmap.adapted_layers(["all"])
    assert [(x.module, x.parallel, x.projections) for x in layers] == [
        ("self_attention.linear_qkv", "column", ("q_proj", "k_proj", "v_proj")),
        ("self_attention.linear_proj", "row", ("o_proj",)),
        ("mlp.linear_fc1", "column", ("gate_proj", "up_proj")),
        ("mlp.linear_fc2", "row", ("down_proj",)),
    ]
    assert lmap.adapted_layers(["up", "gate"]) == [
        lmap.AdaptedLayer("mlp.linear_fc1", "column", ("gate_proj", "up_proj"))
    ]
    assert lmap.adapted_layers(["up"]) == [lmap.AdaptedLayer("mlp.linear_fc1", "column", ("up_proj",))]
    assert lmap.adapted_layers(["down", "qkv"])[0].module == "self_attention.linear_qkv"
    assert lmap.peft_target_modules(lmap.adapted_layers(["out", "up"])) == ["o_proj", "up_proj"]
    assert lmap.peft_target_modules(lmap.adapted_layers(["all"])) == [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    ]  # fmt: skip


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_local_shapes_per_tensor_parallel_rank(tp: int) -> None:
    r, h, f = 8, SHAPE.hidden_size, SHAPE.intermediate_size
    q, kv = SHAPE.num_attention_heads * SHAPE.head_dim, SHAPE.num_key_value_heads * SHAPE.head_dim
    expected = {
        "q_proj": ((r, h), (q // tp, r)),  # column: A replicated, B split on rows
        "k_proj": ((r, h), (kv // tp, r)),
        "v_proj": ((r, h), (kv // tp, r)),
        "o_proj": ((r, q // tp), (h, r)),  # row: A split on input features, B replicated
        "gate_proj": ((r, h), (f // tp, r)),
        "up_proj": ((r, h), (f // tp, r)),
        "down_proj": ((r, f // tp), (h, r)),
    }
    for projection, (a, b) in expected.items():
        assert lmap.local_shape(projection, "A", SHAPE, r, tp) == a
        assert lmap.local_shape(projection, "B", SHAPE, r, tp) == b
    with pytest.raises(ValueError, match="not divisible"):
        lmap.local_shape("q_proj", "B", SHAPE, r, 3)


def test_split_and_merge_are_inverse_and_replicas_must_agree() -> None:
    a = torch.randn(8, 64)
    for projection in ("q_proj", "o_proj"):
        for which in ("A", "B"):
            shards = lmap.tp_split_adapter(projection, which, a if which == "A" else a.T, 4)
            assert torch.equal(lmap.tp_merge_adapter(projection, which, shards), a if which == "A" else a.T)
    broken = [a, a + 1]
    with pytest.raises(ValueError, match="differs"):
        lmap.tp_merge_adapter("q_proj", "A", broken)


def test_names() -> None:
    layer = lmap.adapted_layers(["qkv"])[0]
    key = lmap.megatron_key(3, layer, "k_proj", "B")
    assert key == "decoder.layers.3.self_attention.linear_qkv_lora.lora_B.k_proj"
    assert lmap.is_adapter_key(key) and not lmap.is_adapter_key("decoder.layers.3.self_attention.linear_qkv.weight")
    assert lmap.hf_key(5, "gate_proj", "A") == "base_model.model.model.layers.5.mlp.gate_proj.lora_A.weight"


# ---------------------------------------------------------------------------------------------
# HF (PEFT) <-> megatron shards
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("tp", "pp", "vpp"), LAYOUTS)
@pytest.mark.parametrize("targets", [["all"], ["qkv", "down"], ["gate"]])
def test_adapter_round_trip_bit_exact(tp: int, pp: int, vpp: int | None, targets: list) -> None:
    config = LoraConfig(rank=4, target_modules=targets)
    layers = lmap.adapted_layers(config.target_modules)
    hf = _random_adapter(config)
    keys = [(r, c, t) for (r, c) in cv.layer_ranges(SHAPE.num_layers, pp, vpp) for t in range(tp)]
    shards = {k: lmap.hf_adapter_to_megatron_shard(hf, SHAPE, layers, k, tp, pp, vpp) for k in keys}
    for local in shards.values():
        for name, tensor in local.items():
            projection = name.rsplit(".", 1)[1]
            which: lmap.Which = "A" if ".lora_A." in name else "B"
            assert tuple(tensor.shape) == lmap.local_shape(projection, which, SHAPE, 4, tp), name
    back = lmap.megatron_adapter_shards_to_hf(shards, SHAPE, layers)
    assert back.keys() == hf.keys()
    assert all(torch.equal(back[k], hf[k]) for k in hf)


def test_fresh_adapters_are_seeded_peft_style_and_layout_independent() -> None:
    config = LoraConfig(rank=8)
    one, two = lmap.init_hf_adapter(SHAPE, config, 7), lmap.init_hf_adapter(SHAPE, config, 7)
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert not torch.equal(
        one[lmap.hf_key(0, "q_proj", "A")], lmap.init_hf_adapter(SHAPE, config, 8)[lmap.hf_key(0, "q_proj", "A")]
    )
    for name, tensor in one.items():
        if ".lora_B." in name:
            assert not tensor.any()
        else:  # kaiming-uniform with a = sqrt(5): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            assert tensor.abs().max() <= 1 / tensor.shape[1] ** 0.5
    lmap.check_hf_adapter(one, SHAPE, config)
    with pytest.raises(ValueError, match="missing"):
        lmap.check_hf_adapter({k: v for k, v in one.items() if "layers.0." not in k}, SHAPE, config)
    wrong = dict(one)
    wrong[lmap.hf_key(0, "q_proj", "A")] = torch.zeros(4, 64)
    with pytest.raises(ValueError, match="shape"):
        lmap.check_hf_adapter(wrong, SHAPE, config)


# ---------------------------------------------------------------------------------------------
# Each rank adds its slice of scale * B @ A, in the base layer's layout
# ---------------------------------------------------------------------------------------------


def _full_delta(layer: lmap.AdaptedLayer, hf: dict[str, torch.Tensor], scale: float) -> torch.Tensor:
    """The megatron-layout (unsharded) update of one layer of layer 0, built with conversion's own layout code."""
    delta = {p: scale * hf[lmap.hf_key(0, p, "B")] @ hf[lmap.hf_key(0, p, "A")] for p in layer.projections}
    if layer.module == "self_attention.linear_qkv":
        return cv.pack_qkv(delta["q_proj"], delta["k_proj"], delta["v_proj"], SHAPE)
    if layer.module == "mlp.linear_fc1":
        like = next(iter(delta.values()))
        return torch.cat([delta.get("gate_proj", torch.zeros_like(like)), delta.get("up_proj", torch.zeros_like(like))])
    return next(iter(delta.values()))


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("targets", [["all"], ["up"], ["gate"]])
def test_each_rank_adds_its_slice_of_the_update(tp: int, targets: list) -> None:
    config = LoraConfig(rank=4, alpha=8.0, target_modules=targets)
    hf = {k: v.double() for k, v in _random_adapter(config).items()}
    layers = lmap.adapted_layers(config.target_modules)
    x = torch.randn(5, 1, SHAPE.hidden_size, dtype=torch.float64)
    x_row = {"self_attention.linear_proj": torch.randn(5, 1, 64, dtype=torch.float64),
             "mlp.linear_fc2": torch.randn(5, 1, 96, dtype=torch.float64)}  # fmt: skip
    for layer in layers:
        full = _full_delta(layer, hf, lmap.scaling(config))
        name = layer.module.rsplit(".", 1)[1] + ".weight"
        adapters = []
        for t in range(tp):
            adapter = llay.LoraAdapter(layer, SHAPE, config, tp, dtype=torch.float64)
            local = lmap.hf_adapter_to_megatron_shard(hf, SHAPE, layers, (0, 0, t), tp)
            adapter.load_state_dict(
                {
                    f"lora_{k.split('.lora_')[1]}": v
                    for k, v in local.items()
                    if k.startswith(f"decoder.layers.0.{layer.module}_lora.")
                }
            )
            adapters.append(adapter)
        with torch.no_grad():
            if layer.parallel == "column":  # replicated input, each rank its own output rows
                for t, adapter in enumerate(adapters):
                    expected = x @ cv.tp_split(name, full, tp)[t].T
                    assert torch.allclose(adapter.up(adapter.down(x)), expected, atol=1e-12), (layer, t)
            else:  # sliced input: partial A products summed (the all-reduce), replicated B
                xs = x_row[layer.module].chunk(tp, dim=-1)
                h = torch.stack([adapter.down(xt) for adapter, xt in zip(adapters, xs, strict=True)]).sum(0)
                for adapter in adapters:
                    assert torch.allclose(adapter.up(h), x_row[layer.module] @ full.T, atol=1e-12), layer


def test_te_outputs_are_unpacked() -> None:
    out, bias, ln = torch.ones(2), torch.zeros(2), torch.full((2,), 3.0)
    assert llay.split_te_output(((out, ln), None)) == (out, None, ln)  # return_layernorm_output, bias not returned
    assert llay.split_te_output((out, bias, ln)) == (out, bias, ln)  # TE returned the bias itself
    assert llay.split_te_output((out, None)) == (out, None, None)  # a plain (row-parallel) layer


def test_single_rank_forward_is_scale_b_a_x() -> None:
    config = LoraConfig(rank=4, alpha=16.0, target_modules=["out"])
    layer = lmap.adapted_layers(config.target_modules)[0]
    adapter = llay.LoraAdapter(layer, SHAPE, config, dtype=torch.float64)
    with torch.no_grad():
        for param in adapter.parameters():
            param.normal_()
    x = torch.randn(3, 2, 64, dtype=torch.float64)
    expected = 4.0 * x @ adapter.lora_A["o_proj"].T @ adapter.lora_B["o_proj"].T
    assert torch.allclose(adapter(x), expected)


# ---------------------------------------------------------------------------------------------
# peft agrees on names, merging and files
# ---------------------------------------------------------------------------------------------


def _tiny_peft() -> tuple[LlamaForCausalLM, Any, LoraConfig]:
    import peft

    torch.manual_seed(0)
    hf_config = LlamaConfig(
        vocab_size=250, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=4, max_position_embeddings=64,
    )  # fmt: skip
    base = LlamaForCausalLM(hf_config).eval()
    config = LoraConfig(rank=4, alpha=8.0, target_modules=["all"])
    layers = lmap.adapted_layers(config.target_modules)
    wrapped = peft.get_peft_model(copy.deepcopy(base), lmrg.peft_lora_config(config, layers))
    peft.set_peft_model_state_dict(wrapped, _random_adapter(config))
    return base, wrapped, config


def test_peft_names_shapes_merge_and_files(tmp_path: Path) -> None:
    import peft

    base, wrapped, config = _tiny_peft()
    state = peft.get_peft_model_state_dict(wrapped)
    assert sorted(state) == sorted(lmap.expected_hf_keys(SHAPE, lmap.adapted_layers(config.target_modules)))
    lmap.check_hf_adapter(state, SHAPE, config)
    ids = torch.randint(0, 250, (2, 16))
    with torch.no_grad():
        ref = wrapped(input_ids=ids).logits
    merged_state = lmrg.merge_into_hf(base.state_dict(), state, lmap.scaling(config))
    merged = LlamaForCausalLM(base.config).eval()
    merged.load_state_dict(merged_state)
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, ref, atol=1e-5)
    lmrg.write_peft(
        tmp_path / "adapter", state, lmrg.peft_lora_config(config, lmap.adapted_layers(config.target_modules))
    )
    loaded = peft.PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, ref)


def test_sequence_parallel_is_refused_for_lora_only() -> None:
    def config(method: str) -> SFTConfig:
        return SFTConfig.model_validate(
            {
                "model": {"source": "random", "architecture": {"hidden_size": 64}, "tokenizer": {"type": "byte"}},
                "data": {"train_file": "x.jsonl"},
                "trainer": {"devices": 2},
                "training": {"method": method},
                "parallelism": {"tensor_model_parallel_size": 2, "sequence_parallel": True},
            }
        )

    (problem,) = lmap.lora_config_problems(config("lora"))
    assert problem.key == "parallelism.sequence_parallel" and "LoRA" in problem.message
    assert lmap.lora_config_problems(config("full")) == []


def test_backend_refuses_sequence_parallel_before_touching_a_gpu() -> None:
    from transformers import LlamaConfig

    from sft_trainer.config import ConfigError

    config = SFTConfig.model_validate(
        {
            "model": {"source": "random", "architecture": {"hidden_size": 64}, "tokenizer": {"type": "byte"}},
            "data": {"train_file": "x.jsonl"},
            "trainer": {"devices": 2},
            "training": {"method": "lora"},
            "parallelism": {"backend": "megatron", "tensor_model_parallel_size": 2, "sequence_parallel": True},
        }
    )
    with pytest.raises(ConfigError, match=r"parallelism\.sequence_parallel"):
        ml.MegatronLoraBackend(config, LlamaConfig())


def test_importing_the_lora_module_needs_no_megatron() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import sft_trainer.backends.megatron.lora as m; assert m.MegatronLoraBackend.__doc__; "
        "assert not any(k.startswith(('megatron', 'transformer_engine')) for k in sys.modules), 'megatron imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
