"""Load the tokenizer a run asks for, offline, always with a pad token.

Every kind comes back as a `transformers` fast tokenizer, so `save_pretrained` writes it beside the
final model and `AutoTokenizer.from_pretrained` reads it back there.
"""

import os
from pathlib import Path

from sft_trainer.config.schema import TokenizerConfig

# Never reach for the network: every tokenizer is read from local files or built in code.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoTokenizer,
    GPT2Tokenizer,
    LlamaTokenizer,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

BYTE_SPECIAL_TOKENS = ("<s>", "</s>", "<pad>")


class TokenizerError(ValueError):
    """The tokenizer cannot be loaded (missing or unreadable files, unknown type)."""


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer built in code: ids 0-255 are bytes, then `<s>`, `</s>`, `<pad>`.

    Every UTF-8 byte is one token (no merges), so any text round-trips and strings stay short
    for small demo models.
    """
    byte_to_char = bytes_to_unicode()  # the printable stand-ins ByteLevel pre-tokenization emits
    vocab = {byte_to_char[b]: b for b in range(256)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(BYTE_SPECIAL_TOKENS))
    bos, eos, pad = BYTE_SPECIAL_TOKENS
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos, pad_token=pad)


def load_tokenizer(config: TokenizerConfig, model_path: str | None = None) -> PreTrainedTokenizerBase:
    """Load the tokenizer `config` names; `model_path` is the model's location (for `type: auto`).

    Raises TokenizerError naming the path when files are missing or unreadable.
    """
    kind = config.type
    path = config.path
    if kind == "byte":
        tokenizer: PreTrainedTokenizerBase = byte_tokenizer()
    elif kind == "gpt2_bpe":
        tokenizer = _gpt2_bpe(_required(path, kind))
    elif kind == "sentencepiece":
        tokenizer = _sentencepiece(_required(path, kind))
    elif kind == "hf":
        tokenizer = _hf_dir(_required(path, kind))
    elif kind == "auto":
        tokenizer = _auto(path or model_path)
    else:  # pragma: no cover - the schema's Literal forbids it
        raise TokenizerError(f"unknown tokenizer type {kind!r}")
    return ensure_pad_token(tokenizer)


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give the tokenizer a pad token: its own, else eos, else unk. Padding never carries loss."""
    if tokenizer.pad_token_id is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise TokenizerError("the tokenizer has no pad, eos or unk token to pad with")
        tokenizer.pad_token = fallback
    return tokenizer


def _required(path: str | None, kind: str) -> Path:
    if not path:
        raise TokenizerError(f"model.tokenizer.type={kind} needs model.tokenizer.path")
    resolved = Path(path)
    if not resolved.exists():
        raise TokenizerError(f"{resolved}: no such file or directory (model.tokenizer.path)")
    return resolved


def _gpt2_bpe(path: Path) -> PreTrainedTokenizerBase:
    """A directory with GPT-2's `encoder.json` + `vocab.bpe` (or `vocab.json` + `merges.txt`)."""
    for vocab_name, merges_name in (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt")):
        vocab, merges = path / vocab_name, path / merges_name
        if vocab.is_file() and merges.is_file():
            return GPT2Tokenizer(vocab=str(vocab), merges=str(merges))
    raise TokenizerError(f"{path}: expected encoder.json + vocab.bpe (or vocab.json + merges.txt)")


def _sentencepiece(path: Path) -> PreTrainedTokenizerBase:
    """A SentencePiece `.model` file, converted to a fast Llama-style tokenizer."""
    if not path.is_file():
        raise TokenizerError(f"{path}: expected a SentencePiece .model file")
    try:
        return LlamaTokenizer.from_pretrained(str(path.parent), vocab_file=str(path), local_files_only=True)
    except Exception as error:
        raise TokenizerError(f"{path}: not a readable SentencePiece model ({error})") from error


def _hf_dir(path: Path) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as error:
        raise TokenizerError(f"{path}: not a Hugging Face tokenizer directory ({error})") from error


def _auto(path: str | None) -> PreTrainedTokenizerBase:
    """The model's own tokenizer: a HF directory, or a SentencePiece file beside a llama2.c `.bin`."""
    if not path:
        raise TokenizerError("model.tokenizer.type=auto needs model.path (or model.tokenizer.path)")
    location = Path(path)
    if location.is_file():
        candidates = sorted(location.parent.glob("tokenizer.model")) + sorted(location.parent.glob("tok*.model"))
        if location.suffix == ".model":
            return _sentencepiece(location)
        if candidates:
            return _sentencepiece(candidates[0])
        raise TokenizerError(f"{location}: no tokenizer beside the model; set model.tokenizer.type and path")
    if not location.is_dir():
        raise TokenizerError(f"{location}: no such file or directory (model.path)")
    if (location / "encoder.json").is_file() or (location / "vocab.bpe").is_file():
        return _gpt2_bpe(location)
    return _hf_dir(location)
