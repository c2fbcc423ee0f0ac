"""NeMo-Aligner's SFT keys (`gpt_sft.yaml`, `train_gpt_sft.py` overrides) mapped onto our schema.

`nemo_rule(key)` says what one NeMo dotted key becomes: a key of ours (with its value converted),
or nothing, with the reason. `docs/migration.md` has one row per rule; a test keeps them equal.
Everything here is pure (no I/O), so the operator and the CLI share it.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

Leaf = tuple[str, Any]  # (our dotted key, value)
MISSING = "???"  # OmegaConf's mandatory-value marker


@dataclass(frozen=True)
class NemoRule:
    """What a NeMo key becomes: `target` (ours) or None (ignored, `note` says why)."""

    target: str | None
    note: str = ""
    convert: Callable[[Any], list[Leaf]] | None = None

    def apply(self, value: Any) -> list[Leaf]:
        """Our (key, value) pairs for this NeMo value; raises ValueError for a value with no counterpart."""
        if self.target is None:
            return []
        if self.convert is not None:
            return self.convert(value)
        return [(self.target, value)]


def _same(target: str, note: str = "") -> NemoRule:
    return NemoRule(target, note)


def _ignored(note: str) -> NemoRule:
    return NemoRule(None, note)


def _to(target: str, note: str, function: Callable[[Any], Any]) -> NemoRule:
    return NemoRule(target, note, lambda value: [(target, function(value))])


def model_source_for(path: str) -> str:
    """Our `model.source` for a NeMo `restore_from_path`: a llama2.c `.bin`, else a Hugging Face directory."""
    suffix = PurePath(path).suffix
    if suffix == ".nemo":
        raise ValueError(
            f"{path}: .nemo archives are not read here; export the model to a Hugging Face directory "
            "(NeMo's scripts/checkpoint_converters) and give its path"
        )
    return "llama2c" if suffix == ".bin" else "hf"


def _restore_from_path(value: Any) -> list[Leaf]:
    return [("model.path", value), ("model.source", model_source_for(str(value)))]


def _chat(value: Any) -> str:
    return "nemo_chat" if value in (True, "true", "True") else "prompt_response"


_OPTIMIZERS = {"fused_adam": "adamw", "adam": "adamw", "adamw": "adamw", "distributed_fused_adam": "adamw"}


def _optimizer(value: Any) -> list[Leaf]:
    name = _OPTIMIZERS.get(str(value), value)
    leaves: list[Leaf] = [("optim.name", name)]
    if value == "distributed_fused_adam":
        leaves.append(("parallelism.distributed_optimizer", True))
    return leaves


_SCHEDULES = {"CosineAnnealing": "cosine", "Constant": "constant", "ConstantLR": "constant"}
_PEFT = {"none": "full", "lora": "lora"}
_LORA_TARGETS = {"attention_qkv": "qkv", "attention_dense": "out", "mlp_fc1": "up", "mlp_fc2": "down", "all": "all"}


def _lora_targets(value: Any) -> list[Any]:
    items = value if isinstance(value, list) else [value]
    return [_LORA_TARGETS.get(str(item), item) for item in items]


def _resume(value: Any) -> str:
    return "auto" if value in (True, "true", "True") else "never"


def _granularity(value: Any) -> Any:
    return "none" if value is None else value


_SHARED_DATA = (
    "label_key",
    "add_eos",
    "add_sep",
    "add_bos",
    "truncation_field",
    "truncation_method",
    "prompt_template",
)
_WHY_NOT_VALIDATION = "validation shares the training data settings ({target})"
_DATA_IGNORED = {
    "min_seq_length": "samples whose loss mask would be empty are dropped and counted",
    "drop_last": "a partial last global batch is dropped in training, kept in validation",
    "memmap_workers": "the tokenized cache is memory-mapped; no workers",
    "hf_dataset": "JSONL is read directly",
    "concat_sampling_probabilities": "one training file per run",
    "file_names": "one training file per run (data.train_file)",
    "output_original_text": "sft eval keeps the original text itself",
}


def _data_rules() -> dict[str, NemoRule]:
    train = "model.data.train_ds."
    val = "model.data.validation_ds."
    rules: dict[str, NemoRule] = {
        train + "file_path": _same("data.train_file"),
        train + "global_batch_size": _same("trainer.global_batch_size"),
        train + "micro_batch_size": _same("trainer.micro_batch_size"),
        train + "shuffle": _same("data.shuffle", "reshuffled every epoch from data.seed"),
        train + "max_seq_length": _same("data.max_seq_length"),
        train + "index_mapping_dir": _same("data.cache_dir"),
        val + "file_path": _same("data.validation_file"),
        val + "global_batch_size": _ignored("validation batches are trainer.global_batch_size rows"),
        val + "micro_batch_size": _ignored("validation micro-batches are trainer.micro_batch_size rows"),
        val + "shuffle": _ignored("validation is read in file order"),
        val + "max_seq_length": _ignored(_WHY_NOT_VALIDATION.format(target="data.max_seq_length")),
        val + "index_mapping_dir": _ignored(_WHY_NOT_VALIDATION.format(target="data.cache_dir")),
        "model.data.test_ds.*": _ignored("no test split; run `sft eval` on a held-out file"),
    }
    for key in _SHARED_DATA:
        rules[train + key] = _same(f"data.{key}")
        rules[val + key] = _ignored(_WHY_NOT_VALIDATION.format(target=f"data.{key}"))
    for key, why in _DATA_IGNORED.items():
        rules[train + key] = _ignored(why)
        rules[val + key] = _ignored(why)
    return rules


_CHECKPOINT = "exp_manager.checkpoint_callback_params."
_LIGHTNING = "internal to Lightning in NeMo; this loop has no Lightning trainer"

NEMO_RULES: dict[str, NemoRule] = {
    "trainer.accelerator": _ignored("GPU when CUDA is visible, else CPU"),
    "trainer.sft.max_epochs": _same("trainer.max_epochs"),
    "trainer.sft.max_steps": _same("trainer.max_steps"),
    "trainer.sft.val_check_interval": _same("trainer.val_check_interval"),
    "trainer.sft.save_interval": _same("trainer.save_interval"),
    "trainer.sft.limit_val_batches": _same("trainer.limit_val_batches"),
    "trainer.sft.limit_train_batches": _ignored("use trainer.max_steps"),
    "trainer.sft.gradient_clip_val": _same("trainer.gradient_clip_val"),
    "trainer.sft.inference_metrics": _ignored("run `sft eval` (exact match, contains, regex) on a held-out file"),
    "trainer.sft.inference_metrics.*": _ignored("run `sft eval` (exact match, contains, regex) on a held-out file"),
    "trainer.logger": _ignored(_LIGHTNING),
    "trainer.enable_checkpointing": _ignored(_LIGHTNING),
    "trainer.use_distributed_sampler": _ignored(_LIGHTNING),
    "trainer.max_time": _ignored("spec.runPolicy.activeDeadlineSeconds bounds wall time on a cluster"),
    "exp_manager.explicit_log_dir": _same("output_dir"),
    "exp_manager.exp_dir": _same("output_dir"),
    "exp_manager.name": _ignored("the run's name is `name`"),
    "exp_manager.create_wandb_logger": _ignored(
        "true: logging.wandb (offline unless logging.wandb.mode=online); false: no W&B, wandb_logger_kwargs ignored"
    ),
    "exp_manager.wandb_logger_kwargs.project": _same("logging.wandb.project"),
    "exp_manager.wandb_logger_kwargs.name": _same("logging.wandb.name"),
    "exp_manager.wandb_logger_kwargs.tags": _same("logging.wandb.tags"),
    "exp_manager.resume_if_exists": _to("checkpoint.resume", "true: auto, false: never", _resume),
    "exp_manager.resume_ignore_no_checkpoint": _ignored("a run without a checkpoint always starts fresh"),
    "exp_manager.create_checkpoint_callback": _ignored("checkpoints are always written every trainer.save_interval"),
    _CHECKPOINT + "monitor": _same("checkpoint.monitor"),
    _CHECKPOINT + "mode": _same("checkpoint.mode"),
    _CHECKPOINT + "save_top_k": _same("checkpoint.save_top_k", "plus the newest (checkpoint.save_last)"),
    _CHECKPOINT + "save_nemo_on_train_end": _ignored("final/ is always written, in Hugging Face format"),
    _CHECKPOINT + "always_save_nemo": _ignored("final/ is always written, in Hugging Face format"),
    _CHECKPOINT + "filename": _ignored("state is kept in meta.json, never parsed from names"),
    _CHECKPOINT + "model_parallel_size": _ignored("read from parallelism.*"),
    _CHECKPOINT + "save_best_model": _ignored("retention keeps the save_top_k best and the newest"),
    _CHECKPOINT + "every_n_train_steps": _ignored("use trainer.save_interval"),
    "model.seed": _same("trainer.seed"),
    "model.tensor_model_parallel_size": _same("parallelism.tensor_model_parallel_size"),
    "model.pipeline_model_parallel_size": _same("parallelism.pipeline_model_parallel_size"),
    "model.virtual_pipeline_model_parallel_size": _same("parallelism.virtual_pipeline_model_parallel_size"),
    "model.restore_from_path": NemoRule("model.path", "model.source from the path", _restore_from_path),
    "model.resume_from_checkpoint": _same("checkpoint.resume"),
    "model.save_nemo_on_validation_end": _ignored("checkpoints every save_interval, final/ at the end"),
    "model.sync_batch_comm": _ignored("no pipeline batch communication switch"),
    "model.megatron_amp_O2": _ignored("implied by trainer.precision=bf16 on the megatron backend"),
    "model.encoder_seq_length": _ignored("the model's own; the sequence length is data.max_seq_length"),
    "model.sequence_parallel": _same("parallelism.sequence_parallel"),
    "model.activations_checkpoint_granularity": _to("parallelism.activation_recompute", "null: none", _granularity),
    "model.activations_checkpoint_method": _ignored("full recompute is uniform, one layer at a time"),
    "model.activations_checkpoint_num_layers": _ignored("full recompute is uniform, one layer at a time"),
    "model.activations_checkpoint_layers_per_pipeline": _ignored("full recompute is uniform, one layer at a time"),
    "model.answer_only_loss": _same("data.answer_only_loss"),
    "model.gradient_as_bucket_view": _ignored("DDP buckets are managed by the backend"),
    "model.seq_len_interpolation_factor": _ignored("the model's own (its config.json)"),
    "model.use_flash_attention": _ignored("SDPA / Transformer Engine choose the kernel"),
    "model.hidden_dropout": _ignored("dropout is off for fine-tuning"),
    "model.attention_dropout": _ignored("dropout is off for fine-tuning"),
    "model.ffn_dropout": _ignored("dropout is off for fine-tuning"),
    "model.inference.*": _ignored("sampling is set per call: sft generate / sft eval options"),
    "model.steerlm": _ignored("SteerLM labels are in the data (sft data convert oasst)"),
    "model.steerlm.*": _ignored("SteerLM labels are in the data (sft data convert oasst)"),
    "model.steerable_attributes.*": _ignored("sft generate defaults to the label training used most (--label)"),
    "model.peft.peft_scheme": _to("training.method", "none: full, lora: lora", lambda v: _PEFT.get(str(v), v)),
    "model.peft.restore_from_path": _ignored("resume adapters with checkpoint.resume"),
    "model.peft.lora_tuning.adapter_dim": _same("training.lora.rank"),
    "model.peft.lora_tuning.adapter_dropout": _same("training.lora.dropout"),
    "model.peft.lora_tuning.target_modules": _to(
        "training.lora.target_modules", "attention_qkv: qkv, attention_dense: out", _lora_targets
    ),
    "model.peft.lora_tuning.column_init_method": _ignored("A is Kaiming-uniform, B zero (PEFT's init)"),
    "model.peft.lora_tuning.row_init_method": _ignored("A is Kaiming-uniform, B zero (PEFT's init)"),
    "model.peft.lora_tuning.layer_selection": _ignored("adapters go on every layer"),
    "model.peft.lora_tuning.weight_tying": _ignored("adapters are not tied"),
    "model.peft.lora_tuning.position_embedding_strategy": _ignored("adapters are not tied"),
    "model.data.chat": _to("data.format", "true: nemo_chat, false: prompt_response", _chat),
    "model.data.chat_prompt_tokens.system_turn_start": _same("data.chat_prompt_tokens.system_turn_start"),
    "model.data.chat_prompt_tokens.turn_start": _same("data.chat_prompt_tokens.turn_start"),
    "model.data.chat_prompt_tokens.label_start": _same("data.chat_prompt_tokens.label_start"),
    "model.data.chat_prompt_tokens.end_of_turn": _same("data.chat_prompt_tokens.end_of_turn"),
    "model.data.chat_prompt_tokens.end_of_name": _same("data.chat_prompt_tokens.end_of_name"),
    "model.data.sample": _ignored("steps past the data start a new epoch"),
    "model.data.num_workers": _ignored("the tokenized cache is memory-mapped; no loader workers are needed"),
    "model.data.dataloader_type": _ignored("one sampler: a seeded per-epoch permutation"),
    **_data_rules(),
    "model.optim.name": NemoRule(
        "optim.name", "adamw; distributed_fused_adam adds the distributed optimizer", _optimizer
    ),
    "model.optim.lr": _same("optim.lr"),
    "model.optim.weight_decay": _same("optim.weight_decay"),
    "model.optim.betas": _same("optim.betas"),
    "model.optim.eps": _same("optim.eps"),
    "model.optim.sched.name": _to("optim.sched.name", "CosineAnnealing: cosine", lambda v: _SCHEDULES.get(str(v), v)),
    "model.optim.sched.warmup_steps": _same("optim.sched.warmup_steps"),
    "model.optim.sched.constant_steps": _same("optim.sched.constant_steps"),
    "model.optim.sched.min_lr": _same("optim.sched.min_lr"),
    "model.optim.sched.max_steps": _ignored("the schedule's length is the run's total steps"),
}


def nemo_rule(key: str) -> NemoRule | None:
    """The rule for a NeMo dotted key: exact, else the longest `prefix.*` rule; None for an unknown key."""
    if key in NEMO_RULES:
        return NEMO_RULES[key]
    parts = key.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        rule = NEMO_RULES.get(".".join(parts[:depth]) + ".*")
        if rule is not None:
            return rule
    return None


def resolve_interpolations(tree: dict[str, Any]) -> dict[str, Any]:
    """OmegaConf's whole-value interpolations (`${a.b}` absolute, `${.x}` relative) resolved in place.

    Only values that are exactly one interpolation are resolved (what gpt_sft.yaml uses for the
    keys that matter); others stay strings. Chains resolve; a cycle or a missing target stays as is.
    """

    def lookup(path: list[str]) -> Any:
        node: Any = tree
        for part in path:
            if not isinstance(node, dict) or part not in node:
                raise KeyError(part)
            node = node[part]
        return node

    def resolve(value: Any, where: list[str], depth: int = 0) -> Any:
        if not (isinstance(value, str) and value.startswith("${") and value.endswith("}")) or depth > 16:
            return value
        inner = value[2:-1]
        if not inner or any(c in inner for c in "${}:"):
            return value
        dots = len(inner) - len(inner.lstrip("."))
        rest = inner[dots:].split(".")
        path = (where[: len(where) - (dots - 1)] if dots else []) + rest
        try:
            target = lookup(path)
        except KeyError:
            return value
        return resolve(target, path[:-1], depth + 1)

    def walk(node: dict[str, Any], where: list[str]) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, [*where, str(key)])
            else:
                node[key] = resolve(value, where)

    walk(tree, [])
    return tree
