"""Generation helpers and batched greedy decoding on a real (random) model."""

import torch

from sft_trainer.config import ArchitectureConfig, DataConfig
from sft_trainer.generate import GenerationSettings, cut_at_stop, generate, left_pad, prompt_token_ids
from sft_trainer.models import random_llama
from sft_trainer.tokenization import byte_tokenizer
from tests.builders import tiny_architecture


def test_cut_at_stop_takes_the_earliest() -> None:
    assert cut_at_stop("abc\nUser: x", ("User:", "\n")) == "abc"
    assert cut_at_stop("abc", ()) == "abc"
    assert cut_at_stop("abc", ("zz", "")) == "abc"


def test_left_pad() -> None:
    ids, mask = left_pad([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_prompt_ids_follow_the_training_template() -> None:
    tokenizer = byte_tokenizer()
    data = DataConfig.model_validate({"synthetic": {}, "prompt_template": "Q: {input}\nA: {output}"})
    assert tokenizer.decode(prompt_token_ids(data, tokenizer, "1+1=")) == "Q: 1+1=\nA:"
    assert tokenizer.decode(prompt_token_ids(None, tokenizer, "raw")) == "raw"


def test_batched_greedy_equals_one_at_a_time() -> None:
    tokenizer = byte_tokenizer()
    model = random_llama(
        ArchitectureConfig(**tiny_architecture()),
        len(tokenizer),
        0,
    )
    prompts = [tokenizer.encode(text) for text in ("12+34=", "7+8=", "100+200=")]
    settings = GenerationSettings(max_new_tokens=5)
    together = generate(model, tokenizer, prompts, settings)
    assert together == [generate(model, tokenizer, [p], settings)[0] for p in prompts]
    torch.manual_seed(0)
    sampled = generate(model, tokenizer, prompts, GenerationSettings(max_new_tokens=5, temperature=1.0, seed=3))
    assert sampled == generate(model, tokenizer, prompts, GenerationSettings(max_new_tokens=5, temperature=1.0, seed=3))
