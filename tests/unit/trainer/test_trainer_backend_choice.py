"""Which backend `parallelism.backend` resolves to (a pure function)."""

from sft_trainer.backends import choose_backend


def test_auto_picks_megatron_only_on_cuda_with_megatron_installed() -> None:
    assert choose_backend("auto", cuda=True, megatron_available=True) == "megatron"
    assert choose_backend("auto", cuda=False, megatron_available=True) == "torch"
    assert choose_backend("auto", cuda=True, megatron_available=False) == "torch"


def test_auto_picks_megatron_for_lora_too() -> None:
    assert choose_backend("auto", cuda=True, megatron_available=True, method="lora") == "megatron"
    assert choose_backend("auto", cuda=False, megatron_available=True, method="lora") == "torch"


def test_an_explicit_choice_is_kept() -> None:
    assert choose_backend("megatron", cuda=False, megatron_available=False) == "megatron"
    assert choose_backend("torch", cuda=True, megatron_available=True) == "torch"
