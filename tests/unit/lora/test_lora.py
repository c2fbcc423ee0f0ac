"""sft_trainer.lora on tiny real Llama and GPT-2 models with real peft."""

import json
from pathlib import Path

import peft
import pytest
import torch
from safetensors.torch import load_file

from sft_trainer import lora
from sft_trainer.config.schema import LoraConfig
from tests.builders import tiny_llama
from tests.unit.lora.tiny_models import logits, randomise_adapters, tiny_gpt2, token_batch

# Merging adds B @ A * alpha / r into W: the same math in another order, so fp32 logits move by
# rounding only. Measured max |diff| on these models: about 5e-7 (Llama) and 1e-6 (GPT-2).
MERGE_ATOL = 1e-5

LLAMA_LINEARS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.mark.parametrize(
    ("targets", "expected"),
    [
        (["qkv"], ["q_proj", "k_proj", "v_proj"]),
        (["out"], ["o_proj"]),
        (["up", "gate", "down"], ["up_proj", "gate_proj", "down_proj"]),
        (["all"], ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "gate_proj", "down_proj"]),
        (["qkv", "qkv", "down"], ["q_proj", "k_proj", "v_proj", "down_proj"]),
    ],
)
def test_llama_targets(targets: list[str], expected: list[str]) -> None:
    assert lora.target_module_names(LoraConfig(target_modules=targets), tiny_llama()) == expected


@pytest.mark.parametrize(
    ("targets", "expected"),
    [
        (["qkv"], ["attn.c_attn"]),
        (["out"], ["attn.c_proj"]),
        (["up", "down"], ["mlp.c_fc", "mlp.c_proj"]),
        (["all"], ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]),  # GPT-2 has no gate
    ],
)
def test_gpt2_targets(targets: list[str], expected: list[str]) -> None:
    assert lora.target_module_names(LoraConfig(target_modules=targets), tiny_gpt2()) == expected


def test_a_target_the_model_lacks_is_an_error() -> None:
    with pytest.raises(lora.LoraError, match="'gate' matches no module"):
        lora.target_module_names(LoraConfig(target_modules=["gate"]), tiny_gpt2())


def test_peft_config_carries_rank_alpha_dropout() -> None:
    config = lora.peft_config(LoraConfig(rank=4, alpha=8.0, dropout=0.1, target_modules=["qkv"]), tiny_llama())
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 8.0, 0.1)
    assert set(config.target_modules or ()) == {"q_proj", "k_proj", "v_proj"}
    assert config.fan_in_fan_out is False
    assert lora.peft_config(LoraConfig(), tiny_gpt2()).fan_in_fan_out is True  # Conv1D is (in, out)


def test_only_adapters_train_and_their_shapes_follow_the_rank() -> None:
    rank = 4
    model = lora.apply_lora(tiny_llama(), LoraConfig(rank=rank))
    trainable = dict((n, p) for n, p in model.named_parameters() if p.requires_grad)
    assert trainable and all(".lora_A.default." in n or ".lora_B.default." in n for n in trainable)
    modules = dict(model.named_modules())
    for name, param in trainable.items():
        base = modules[name.split(".lora_")[0]].base_layer
        expected = (rank, base.in_features) if ".lora_A." in name else (base.out_features, rank)
        assert tuple(param.shape) == expected, name
    # 2 layers x 7 projections x (A, B)
    assert len(trainable) == 2 * len(LLAMA_LINEARS) * 2


def test_fresh_adapters_do_not_change_the_output() -> None:
    ids = token_batch()
    reference = logits(tiny_llama(), ids)
    assert torch.equal(logits(lora.apply_lora(tiny_llama(), LoraConfig()), ids), reference)


def test_adapter_state_dict_holds_exactly_the_adapters() -> None:
    model = lora.apply_lora(tiny_llama(), LoraConfig(rank=4, target_modules=["qkv", "out"]))
    state = lora.adapter_state_dict(model)
    expected = {n.replace(".default", "") for n in lora.trainable_names(model)}
    assert set(state) == expected
    assert sum(t.numel() for t in state.values()) == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert not any("base_layer" in key or "embed" in key or "norm" in key for key in state)


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_peft_export_loads_onto_the_base_with_the_same_logits(build, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = lora.apply_lora(build(), LoraConfig(rank=4, alpha=16.0))
    randomise_adapters(model)
    ids = token_batch()
    expected = logits(model, ids)
    lora.save_adapter(model, tmp_path)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in tmp_path.iterdir()}
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 4, 16.0)
    assert set(load_file(tmp_path / "adapter_model.safetensors")) == set(lora.adapter_state_dict(model))

    reloaded = peft.PeftModel.from_pretrained(build(), str(tmp_path))
    torch.testing.assert_close(logits(reloaded, ids), expected, rtol=0, atol=0)


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2, lambda: tiny_llama(tie_word_embeddings=True)])
def test_merged_equals_unmerged(build) -> None:  # type: ignore[no-untyped-def]
    model = lora.apply_lora(build(), LoraConfig(rank=4, alpha=16.0))
    randomise_adapters(model)
    ids = token_batch()
    unmerged = logits(model, ids)
    merged = lora.merged_model(model)
    assert not isinstance(merged, peft.PeftModel)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    diff = (logits(merged, ids) - unmerged).abs().max().item()
    assert diff <= MERGE_ATOL
    assert not torch.equal(unmerged, logits(build(), ids))  # the adapter did change the model
    torch.testing.assert_close(logits(model, ids), unmerged, rtol=0, atol=0)  # the model was left alone


def test_load_adapter_is_strict(tmp_path: Path) -> None:
    small = lora.apply_lora(tiny_llama(), LoraConfig(target_modules=["qkv"]))
    lora.save_adapter(small, tmp_path)
    everything = lora.apply_lora(tiny_llama(), LoraConfig(target_modules=["all"]))
    with pytest.raises(lora.LoraError, match="does not fit"):
        lora.load_adapter(everything, everything, tmp_path)


def test_load_adapter_restores_the_trained_values(tmp_path: Path) -> None:
    trained = lora.apply_lora(tiny_llama(), LoraConfig(rank=4))
    randomise_adapters(trained)
    lora.save_adapter(trained, tmp_path)
    fresh = lora.apply_lora(tiny_llama(), LoraConfig(rank=4))
    lora.load_adapter(fresh, fresh, tmp_path)
    ids = token_batch()
    torch.testing.assert_close(logits(fresh, ids), logits(trained, ids), rtol=0, atol=0)


def test_find_adapter_in_runs_finals_checkpoints_and_adapter_dirs(tmp_path: Path) -> None:
    for place in ("run/final/adapter", "run2/checkpoints/step-3/adapter"):
        (tmp_path / place).mkdir(parents=True)
        (tmp_path / place / lora.ADAPTER_CONFIG).write_text("{}")
    (tmp_path / "run2/checkpoints/last").symlink_to("step-3")
    assert lora.find_adapter(tmp_path / "run") == tmp_path / "run/final/adapter"
    assert lora.find_adapter(tmp_path / "run/final") == tmp_path / "run/final/adapter"
    assert lora.find_adapter(tmp_path / "run/final/adapter") == tmp_path / "run/final/adapter"
    assert lora.find_adapter(tmp_path / "run2") == tmp_path / "run2/checkpoints/last/adapter"
    assert lora.find_adapter(tmp_path / "run2/checkpoints/step-3") == tmp_path / "run2/checkpoints/step-3/adapter"
    with pytest.raises(lora.LoraError, match="no LoRA adapter"):
        lora.find_adapter(tmp_path)


def test_load_adapter_refuses_a_directory_without_one(tmp_path: Path) -> None:
    model = lora.apply_lora(tiny_llama(), LoraConfig())
    with pytest.raises(lora.LoraError, match="not a LoRA checkpoint"):
        lora.load_adapter(model, model, tmp_path)


def test_lora_errors_are_permanent_model_errors() -> None:
    from sft_trainer.contract import ExitCode
    from sft_trainer.failures import exit_code_for

    assert exit_code_for(lora.LoraError("x")) == ExitCode.MODEL_ERROR


def test_the_schema_and_the_sftjob_crd_carry_the_lora_block() -> None:
    import yaml
    from pydantic import ValidationError

    from sft_trainer.config.schema import TrainingConfig

    parsed = TrainingConfig.model_validate(
        {"method": "lora", "lora": {"rank": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["qkv", "down"]}}
    )
    assert (parsed.lora.rank, parsed.lora.alpha, parsed.lora.target_modules) == (8, 16.0, ["qkv", "down"])
    with pytest.raises(ValidationError):
        TrainingConfig.model_validate({"method": "lora", "lora": {"target_modules": ["mlp"]}})
    crd = yaml.safe_load((Path(__file__).parents[3] / "crds" / "sftjob.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    training = spec["properties"]["training"]["properties"]["training"]["properties"]
    assert training["method"]["enum"] == ["full", "lora"]
    targets = training["lora"]["properties"]["target_modules"]["items"]["enum"]
    assert set(targets) == {"qkv", "out", "up", "gate", "down", "all"}
