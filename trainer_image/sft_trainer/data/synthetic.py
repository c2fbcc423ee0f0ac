"""Generated tasks (the demo): seeded, offline, with a validation split disjoint from training.

`arithmetic`: `{"input": "37+85=", "output": "122"}`. Distinct problems are drawn without
replacement, so no validation problem is ever seen in training. Short strings keep it learnable by
a small randomly initialised model with the byte tokenizer in minutes on a CPU.
"""

import json
import random
from pathlib import Path

from sft_trainer.config.data import SyntheticTaskConfig
from sft_trainer.data.jsonl import Row, write_jsonl


def _problem(a: int, op: str, b: int) -> Row:
    if op == "-" and a < b:
        a, b = b, a
    result = a + b if op == "+" else a - b
    return {"input": f"{a}{op}{b}=", "output": str(result)}


def synthetic_rows(config: SyntheticTaskConfig) -> tuple[list[Row], list[Row]]:
    """`(train_rows, validation_rows)` of the configured task; the same seed gives the same rows."""
    rng = random.Random(config.seed)
    operations = sorted(set(config.operations))
    wanted = config.train_examples + config.validation_examples
    seen: set[str] = set()
    rows: list[Row] = []
    while len(rows) < wanted:
        a = rng.randint(config.min_operand, config.max_operand)
        b = rng.randint(config.min_operand, config.max_operand)
        row = _problem(a, rng.choice(operations), b)
        if row["input"] not in seen:
            seen.add(row["input"])
            rows.append(row)
    return rows[: config.train_examples], rows[config.train_examples :]


def write_synthetic(config: SyntheticTaskConfig, directory: str | Path) -> tuple[Path, Path]:
    """Write the task's train/validation JSONL into `directory` (atomically; unchanged files are kept)."""
    train_rows, validation_rows = synthetic_rows(config)
    directory = Path(directory)
    paths = (directory / f"{config.task}_train.jsonl", directory / f"{config.task}_validation.jsonl")
    for path, rows in zip(paths, (train_rows, validation_rows), strict=True):
        if not _same_rows(path, rows):
            write_jsonl(path, rows)
    return paths


def _same_rows(path: Path, rows: list[Row]) -> bool:
    """Whether `path` already holds exactly these rows (keeps mtimes, and so the cache key, stable)."""
    if not path.is_file():
        return False
    expected = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return path.read_text(encoding="utf-8") == expected
