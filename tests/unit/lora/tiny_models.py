"""Tiny randomly initialised Hugging Face models for the LoRA tests (no downloads, CPU, float32).

The tiny Llama is tests/builders.py's `tiny_llama`; GPT-2 (a second family for the LoRA targets) is here."""

import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel

VOCAB = 64  # tests/builders.tiny_llama's vocabulary too


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    """Two layers, hidden 32, 2 heads; dropout off so train/eval logits agree."""
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config).eval()


def randomise_adapters(model: torch.nn.Module, seed: int = 1) -> None:
    """Give lora_B non-zero values (peft starts it at zero, which would make every test trivial)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


def logits(model: PreTrainedModel | torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Eval-mode logits without gradients."""
    model.eval()
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def token_batch(seed: int = 2, rows: int = 2, length: int = 12) -> torch.Tensor:
    """Random token ids."""
    return torch.randint(0, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))
