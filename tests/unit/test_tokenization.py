"""load_tokenizer: every kind offline, with a pad token, and save_pretrained round trips."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoTokenizer

from sft_trainer.config import TokenizerConfig
from sft_trainer.tokenization import TokenizerError, load_tokenizer
from tests.shared_data import shared


def test_byte_tokenizer_round_trips_any_text(tmp_path: Path) -> None:
    tokenizer = load_tokenizer(TokenizerConfig(type="byte"))
    text = "37+85=122 héllo 🫖\x11"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode("utf-8")) and max(ids) < 256
    assert tokenizer.decode(ids) == text
    assert len(tokenizer) == 259
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (256, 257, 258)
    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text, add_special_tokens=False)["input_ids"] == ids and again.pad_token_id == 258


def test_gpt2_bpe_reuses_eos_as_pad() -> None:
    tokenizer = load_tokenizer(TokenizerConfig(type="gpt2_bpe", path=str(shared("tokenizers/gpt2"))))
    assert len(tokenizer) == 50257
    assert tokenizer("Hello world", add_special_tokens=False)["input_ids"] == [15496, 995]
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 50256


def test_sentencepiece_model_file(tmp_path: Path) -> None:
    tokenizer = load_tokenizer(
        TokenizerConfig(type="sentencepiece", path=str(shared("models/stories260K/tok512.model")))
    )
    assert len(tokenizer) == 512 and tokenizer.pad_token_id is not None
    ids = tokenizer("Once upon a time", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == "Once upon a time"
    tokenizer.save_pretrained(tmp_path)
    hf = load_tokenizer(TokenizerConfig(type="hf", path=str(tmp_path)))
    assert hf("Once upon a time", add_special_tokens=False)["input_ids"] == ids


def test_auto_finds_the_tokenizer_beside_a_llama2c_model() -> None:
    tokenizer = load_tokenizer(TokenizerConfig(type="auto"), str(shared("models/stories260K/stories260K.bin")))
    assert len(tokenizer) == 512


def test_missing_paths_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match=r"needs model\.tokenizer\.path"):
        load_tokenizer(TokenizerConfig(type="gpt2_bpe"))
    with pytest.raises(TokenizerError, match="no such file"):
        load_tokenizer(TokenizerConfig(type="sentencepiece", path=str(tmp_path / "x.model")))
    with pytest.raises(TokenizerError, match=r"encoder\.json"):
        load_tokenizer(TokenizerConfig(type="gpt2_bpe", path=str(tmp_path)))
