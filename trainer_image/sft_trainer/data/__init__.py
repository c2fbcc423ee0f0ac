"""The data pipeline: formats, converters, templates, answer-only masks, truncation, packing, cache.

Imports neither torch nor transformers (only `attention.py` needs torch; tokenizers are passed in).
What the trainer uses:

- `build_datasets(config, tokenizer) -> DatasetSplits` (`.train`, `.validation`, `.stats`)
- `collate(samples, pad_id, pad_to_multiple_of) -> MicroBatch`
- `prompt_for_generation(data_config, user_text)` for `sft generate`
- `synthetic_rows(task_config)` for the demo's held-out accuracy
"""

from sft_trainer.data.build import DatasetSplits, build_datasets, total_loss_tokens
from sft_trainer.data.collate import collate
from sft_trainer.data.dataset import ExampleDataset, PackedDataset, TokenStore
from sft_trainer.data.errors import DataError
from sft_trainer.data.generation import prompt_for_generation
from sft_trainer.data.prompt_response import prompt_ids
from sft_trainer.data.synthetic import synthetic_rows
from sft_trainer.data.types import IGNORE_INDEX, MicroBatch, Sample

__all__ = [
    "IGNORE_INDEX",
    "DataError",
    "DatasetSplits",
    "ExampleDataset",
    "MicroBatch",
    "PackedDataset",
    "Sample",
    "TokenStore",
    "build_datasets",
    "collate",
    "prompt_for_generation",
    "prompt_ids",
    "synthetic_rows",
    "total_loss_tokens",
]
