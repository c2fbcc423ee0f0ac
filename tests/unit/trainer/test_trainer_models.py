"""Model loading: llama2.c import (real stories260K), Hugging Face directories offline, random init.

Needs ../shared/data/models/stories260K and ../shared/data/tokenizers/gpt2 (fails loudly if missing).
"""

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

from sft_trainer.config import ArchitectureConfig, ModelConfig, TokenizerConfig
from sft_trainer.generate import GenerationSettings, generate
from sft_trainer.models import load_hf, load_llama2c, load_model, random_llama
from sft_trainer.tokenization import byte_tokenizer, load_tokenizer
from tests.builders import tiny_architecture
from tests.shared_data import SHARED_DATA

STORIES = SHARED_DATA / "models" / "stories260K"
GPT2_TOKENIZER = SHARED_DATA / "tokenizers" / "gpt2"
TINY = ArchitectureConfig(**tiny_architecture(num_key_value_heads=1))


def test_llama2c_import_reproduces_the_documented_story() -> None:
    model = load_llama2c(STORIES / "stories260K.bin")
    tokenizer = load_tokenizer(TokenizerConfig(type="sentencepiece", path=str(STORIES / "tok512.model")))
    assert model.config.tie_word_embeddings and model.config.num_key_value_heads == 4
    (text,) = generate(model, tokenizer, [[tokenizer.bos_token_id]], GenerationSettings(max_new_tokens=20))
    assert text.startswith("Once upon a time, there was a little girl named Lily")


def test_llama2c_through_the_model_config_with_auto_tokenizer() -> None:
    config = ModelConfig(source="llama2c", path=str(STORIES / "stories260K.bin"))
    tokenizer = load_tokenizer(config.tokenizer, config.path)
    model = load_model(config, vocab_size=len(tokenizer), seed=0)
    assert model.config.vocab_size == len(tokenizer) == 512


def test_random_init_is_seeded_and_sized_by_the_tokenizer() -> None:
    a, b = random_llama(TINY, vocab_size=259, seed=3), random_llama(TINY, vocab_size=259, seed=3)
    assert a.config.vocab_size == 259
    assert a.config._attn_implementation == "sdpa"
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.lm_head.weight, random_llama(TINY, vocab_size=259, seed=4).lm_head.weight)


def test_hf_llama_directory_loads_offline_with_its_tokenizer(tmp_path: Path) -> None:
    source = random_llama(TINY, vocab_size=512, seed=0)
    source.save_pretrained(tmp_path)
    load_tokenizer(TokenizerConfig(type="sentencepiece", path=str(STORIES / "tok512.model"))).save_pretrained(tmp_path)
    config = ModelConfig(source="hf", path=str(tmp_path))
    tokenizer = load_tokenizer(config.tokenizer, config.path)
    model = load_model(config, vocab_size=len(tokenizer), seed=0)
    assert isinstance(model, LlamaForCausalLM)
    assert torch.equal(model.lm_head.weight, source.lm_head.weight)
    assert tokenizer.encode("Once upon a time") == load_tokenizer(config.tokenizer, str(tmp_path)).encode(
        "Once upon a time"
    )


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
def test_hf_mistral_and_qwen2_directories_load_offline(tmp_path: Path, family: str) -> None:
    shape = {"vocab_size": 259, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
    shape |= {"num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}
    config = AutoConfig.for_model(family, **shape)
    source = AutoModelForCausalLM.from_config(config)
    source.save_pretrained(tmp_path)
    byte_tokenizer().save_pretrained(tmp_path)
    model_config = ModelConfig(source="hf", path=str(tmp_path))
    model = load_model(model_config, vocab_size=259, seed=0)
    assert type(model) is type(source) and model.config.model_type == family
    ids = torch.tensor([load_tokenizer(model_config.tokenizer, model_config.path).encode("7+8=")])
    assert torch.allclose(model(ids).logits, source.eval()(ids).logits)


def test_hf_gpt2_directory_loads_offline(tmp_path: Path) -> None:
    tokenizer = load_tokenizer(TokenizerConfig(type="gpt2_bpe", path=str(GPT2_TOKENIZER)))
    source = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=64))
    source.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = load_hf(tmp_path)
    assert isinstance(model, GPT2LMHeadModel)
    assert torch.equal(model.transformer.wte.weight, source.transformer.wte.weight)
    ids = torch.tensor([tokenizer.encode("hello world")])
    assert torch.allclose(model(ids).logits, source.eval()(ids).logits)
