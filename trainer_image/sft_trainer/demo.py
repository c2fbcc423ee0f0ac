"""The demo's yardstick: held-out exact-match accuracy of greedy answers on a synthetic task.

`sft train` runs it before and after training whenever `data.synthetic` is set.
"""

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sft_trainer.config.data import DataConfig
from sft_trainer.config.schema import SFTConfig
from sft_trainer.generate import GenerationSettings, generate, prompt_token_ids

MAX_EVAL_ROWS = 200
BATCH_SIZE = 100


@dataclass(frozen=True)
class Accuracy:
    """Exact matches out of a number of held-out rows."""

    correct: int
    total: int

    @property
    def fraction(self) -> float:
        """correct / total (0 when empty)."""
        return self.correct / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"{100 * self.fraction:.1f}% ({self.correct}/{self.total})"


def exact_match(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: DataConfig, rows: list[dict[str, str]]
) -> Accuracy:
    """Greedy answers to each row's input (through the training template) compared with its output."""
    rows = rows[:MAX_EVAL_ROWS]
    longest = max((len(tokenizer.encode(row[data.label_key], add_special_tokens=False)) for row in rows), default=1)
    settings = GenerationSettings(max_new_tokens=longest + 1)
    correct = 0
    for start in range(0, len(rows), BATCH_SIZE):
        batch = rows[start : start + BATCH_SIZE]
        prompts = [prompt_token_ids(data, tokenizer, row["input"]) for row in batch]
        answers = generate(model, tokenizer, prompts, settings)
        correct += sum(
            answer.strip() == row[data.label_key].strip() for answer, row in zip(answers, batch, strict=True)
        )
    return Accuracy(correct, len(rows))


def held_out_rows(data: DataConfig) -> list[dict[str, str]]:
    """The synthetic task's validation rows (never trained on)."""
    from sft_trainer.data.synthetic import synthetic_rows

    assert data.synthetic is not None
    _, validation = synthetic_rows(data.synthetic)
    return [{key: str(value) for key, value in row.items()} for row in validation]


class DemoAccuracy:
    """Prints held-out exact-match accuracy before and after training (rank 0, synthetic tasks)."""

    def __init__(self, config: SFTConfig, tokenizer: PreTrainedTokenizerBase) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.rows = held_out_rows(config.data)

    def _report(self, label: str, model: PreTrainedModel) -> None:
        accuracy = exact_match(model, self.tokenizer, self.config.data, self.rows)
        Console(stderr=True).print(
            f"[bold]held-out exact match {label} training: {accuracy}", highlight=False, soft_wrap=True
        )

    def before(self) -> None:
        """Accuracy of the initial weights (the same the backend starts from)."""
        from sft_trainer.models import load_model

        self._report("before", load_model(self.config.model, len(self.tokenizer), self.config.trainer.seed))

    def after(self, final: Path) -> None:
        """Accuracy of the exported final model, read back from disk."""
        from sft_trainer.models import load_hf

        self._report("after", load_hf(final))
