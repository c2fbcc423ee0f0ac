"""The `data` block of the training schema: where examples come from and how they become tokens.

Semantics follow NeMo-Aligner's SFT datasets (`model.data.train_ds.*` in `gpt_sft.yaml`), flattened
to one block because train and validation share everything but the file.
"""

import string
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


def prompt_template_problem(template: str, label_key: str) -> str | None:
    """Why `template` cannot train (None when it can): plain `{name}` placeholders, the label once and last."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        return f"not a valid format string: {error}"
    names: list[str] = []
    trailing_text = False
    for literal, name, spec, conversion in parsed:
        trailing_text = bool(literal)
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            return f"placeholder {{{name}}} must be a plain {{field_name}}"
        names.append(name)
        trailing_text = False
    if label_key not in names:
        return f"the template has no label placeholder {{{label_key}}}"
    if names.count(label_key) > 1:
        return f"the label placeholder {{{label_key}}} appears more than once"
    if names[-1] != label_key or trailing_text:
        return f"the label placeholder {{{label_key}}} must come last in the template"
    return None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ChatPromptTokens(_Strict):
    """Special strings of the NeMo chat format (NeMo-Aligner's `chat_prompt_tokens`)."""

    system_turn_start: str = "\x00"
    turn_start: str = "\x11"
    label_start: str = "\x12"
    end_of_turn: str = "\n"
    end_of_name: str = "\n"


Operation = Literal["+", "-"]


def _addition_only() -> list[Operation]:
    return ["+"]


class SyntheticTaskConfig(_Strict):
    """A task the project generates itself (the demo): no files, no downloads."""

    task: Literal["arithmetic"] = "arithmetic"
    train_examples: int = Field(default=4000, ge=1)
    validation_examples: int = Field(default=200, ge=1)
    seed: int = 0
    min_operand: int = Field(default=10, ge=0, description="Smallest operand (10: two digits).")
    max_operand: int = Field(default=99, ge=1, description="Largest operand (99: two digits, sums of 2-3 digits).")
    operations: list[Operation] = Field(
        default_factory=_addition_only, min_length=1, description="'-' keeps results >= 0 (a >= b)."
    )

    @model_validator(mode="after")
    def _enough_problems(self) -> "SyntheticTaskConfig":
        if self.max_operand < self.min_operand:
            raise ValueError("synthetic.max_operand must be >= synthetic.min_operand")
        span = self.max_operand - self.min_operand + 1
        distinct = span * span * len(set(self.operations))
        if self.train_examples + self.validation_examples > distinct:
            raise ValueError(
                f"synthetic: {self.train_examples} + {self.validation_examples} examples asked, "
                f"but only {distinct} distinct problems exist; widen the operand range"
            )
        return self


class DataConfig(_Strict):
    """Training and validation data."""

    format: Literal["prompt_response", "nemo_chat", "hf_chat"] = Field(
        default="prompt_response",
        description="prompt_response: JSONL rows rendered by prompt_template; nemo_chat: NeMo "
        "conversations; hf_chat: `messages` rendered by a Jinja chat template.",
    )
    train_file: str | None = Field(default=None, description="JSONL (optionally .gz) of training rows.")
    validation_file: str | None = Field(default=None, description="JSONL (optionally .gz) for validation.")
    synthetic: SyntheticTaskConfig | None = Field(
        default=None, description="Generate a synthetic task instead of reading files (the demo)."
    )
    max_seq_length: int = Field(default=2048, ge=8, le=1_048_576)
    prompt_template: str = Field(
        default="{input} {output}",
        description="Python format string over row fields; the label placeholder must come last.",
    )
    label_key: str = Field(default="output", description="Field holding the response (the trained part).")
    truncation_field: str = Field(default="input", description="Comma-separated fields that may be cut when too long.")
    truncation_method: Literal["left", "right"] = "right"
    add_bos: bool = False
    add_eos: bool = True
    add_sep: bool = False
    answer_only_loss: bool = True
    chat_prompt_tokens: ChatPromptTokens = Field(default_factory=ChatPromptTokens)
    chat_template: str | None = Field(
        default=None, description="hf_chat: path to a Jinja chat template (default: the tokenizer's)."
    )
    packing: bool = Field(default=False, description="Pack examples into max_seq_length bins.")
    packing_algorithm: Literal["first_fit_decreasing", "first_fit_shuffle"] = "first_fit_decreasing"
    shuffle: bool = True
    seed: int = 1234
    skip_bad_rows: bool = Field(default=False, description="Skip and count malformed rows instead of failing.")
    cache_dir: str | None = Field(
        default=None, description="Where the tokenized cache lives (default: <output_dir>/data_cache)."
    )

    @model_validator(mode="after")
    def _one_source(self) -> "DataConfig":
        if self.synthetic is None and self.train_file is None:
            raise ValueError("set data.train_file (or data.synthetic for a generated task)")
        if self.synthetic is not None and self.train_file is not None:
            raise ValueError("data.train_file and data.synthetic are exclusive: set one")
        if self.format == "prompt_response":
            problem = prompt_template_problem(self.prompt_template, self.label_key)
            if problem:
                raise ValueError(f"prompt_template: {problem}")
        return self
