"""The training schema (everything but `data`, which lives in `data.py`).

Knob names and meanings follow NeMo-Aligner's `gpt_sft.yaml` (the seed) where it has them.
No torch import here: the operator validates SFTJob specs with these same models.
"""

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sft_trainer.config.data import DataConfig


class Strict(BaseModel):
    """Base for every block: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


Precision = Literal["bf16", "fp16", "fp32"]
_PRECISION_ALIASES = {"bf16-mixed": "bf16", "16-mixed": "fp16", "16": "fp16", "32": "fp32", "32-true": "fp32"}


class TrainerConfig(Strict):
    """Loop length, batch sizes, validation and checkpoint cadence (the seed's `trainer.sft.*`)."""

    max_steps: int = Field(default=-1, ge=-1, description="Optimizer steps; -1: run max_epochs.")
    max_epochs: int = Field(default=1, ge=-1, description="Epochs; -1: unlimited (then max_steps must be set).")
    val_check_interval: int = Field(default=100, ge=1, description="Validate every N steps.")
    limit_val_batches: int | float = Field(
        default=1.0, description="Validation batches per check: int N batches, or a fraction (0, 1] of them."
    )
    save_interval: int = Field(default=100, ge=1, description="Checkpoint every N steps (a multiple of val).")
    micro_batch_size: int = Field(default=1, ge=1, description="Rows per forward pass per data-parallel rank.")
    global_batch_size: int = Field(default=8, ge=1, description="Rows per optimizer step across all ranks.")
    gradient_clip_val: float = Field(default=1.0, ge=0.0, description="Max global grad norm; 0 disables.")
    precision: Precision = "bf16"
    seed: int = 1234
    num_nodes: int = Field(default=1, ge=1)
    devices: int = Field(default=1, ge=1, description="Processes (GPUs) per node.")
    log_every_n_steps: int = Field(default=1, ge=1)

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_alias(cls, value: object) -> object:
        return _PRECISION_ALIASES.get(str(value), value)

    @field_validator("limit_val_batches")
    @classmethod
    def _limit_val_batches_range(cls, value: int | float) -> int | float:
        if isinstance(value, float) and not 0.0 < value <= 1.0:
            raise ValueError("a fraction must be in (0, 1]; use an int for a number of batches")
        if isinstance(value, int) and value < 0:
            raise ValueError("must be >= 0")
        return value


class SchedulerConfig(Strict):
    """Learning-rate schedule (NeMo CosineAnnealing): linear warmup, cosine decay to min_lr, then hold min_lr for constant_steps."""

    name: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = Field(default=0, ge=0)
    constant_steps: int = Field(default=0, ge=0)
    min_lr: float = Field(default=0.0, ge=0.0)


class OptimConfig(Strict):
    """AdamW settings (the seed's `model.optim`)."""

    name: Literal["adamw"] = "adamw"
    lr: float = Field(default=1e-5, gt=0.0)
    weight_decay: float = Field(default=0.01, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(default=1e-8, gt=0.0)
    sched: SchedulerConfig = Field(default_factory=SchedulerConfig)

    @model_validator(mode="after")
    def _min_lr_below_lr(self) -> "OptimConfig":
        if self.sched.min_lr > self.lr:
            raise ValueError("optim.sched.min_lr must not exceed optim.lr")
        return self


class ArchitectureConfig(Strict):
    """A Llama-style architecture for random initialisation (the demo, benchmarks)."""

    family: Literal["llama"] = "llama"
    hidden_size: int = Field(default=256, ge=8)
    num_layers: int = Field(default=4, ge=1)
    num_attention_heads: int = Field(default=4, ge=1)
    num_key_value_heads: int = Field(default=4, ge=1)
    intermediate_size: int = Field(default=688, ge=8)
    vocab_size: int | None = Field(default=None, ge=8, description="Default: the tokenizer's size.")
    max_position_embeddings: int = Field(default=4096, ge=8)
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False

    @model_validator(mode="after")
    def _heads_divide(self) -> "ArchitectureConfig":
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be divisible by num_key_value_heads")
        return self


class TokenizerConfig(Strict):
    """Where the tokenizer comes from. `auto` reads it from the model directory."""

    type: Literal["auto", "hf", "sentencepiece", "gpt2_bpe", "byte"] = Field(
        default="auto",
        description="auto: the model's; hf: a tokenizer directory; sentencepiece: a .model file; "
        "gpt2_bpe: a directory with encoder.json + vocab.bpe; byte: a built-in byte-level tokenizer.",
    )
    path: str | None = None


class ModelConfig(Strict):
    """The model to fine-tune."""

    source: Literal["hf", "llama2c", "random"] = Field(
        default="hf",
        description="hf: a Hugging Face checkpoint directory; llama2c: a llama2.c .bin file; random: "
        "initialise `architecture` randomly.",
    )
    path: str | None = None
    architecture: ArchitectureConfig | None = None
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)

    @model_validator(mode="after")
    def _source_needs(self) -> "ModelConfig":
        if self.source == "random" and self.architecture is None:
            raise ValueError("model.source=random needs model.architecture")
        if self.source != "random" and not self.path:
            raise ValueError(f"model.source={self.source} needs model.path")
        if self.source == "random" and self.tokenizer.type == "auto":
            raise ValueError("model.source=random needs an explicit model.tokenizer.type")
        return self


LoraTarget = Literal["qkv", "out", "up", "gate", "down", "all"]


def _all_targets() -> list[LoraTarget]:
    return ["all"]


class LoraConfig(Strict):
    """Low-rank adapters (training.method=lora)."""

    rank: int = Field(default=16, ge=1)
    alpha: float = Field(default=32.0, gt=0.0)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: list[LoraTarget] = Field(default_factory=_all_targets)


class TrainingConfig(Strict):
    """Full fine-tuning or parameter-efficient (LoRA)."""

    method: Literal["full", "lora"] = "full"
    lora: LoraConfig = Field(default_factory=LoraConfig)


#: `checkpoint.monitor` names (ours and NeMo's) -> the metric of metrics.jsonl / meta.json they rank by.
MONITOR_METRICS = {
    "val_loss": "val_loss",
    "validation_loss": "val_loss",
    "val_perplexity": "val_perplexity",
    "loss": "loss",
    "train_loss": "loss",
    "reduced_train_loss": "loss",
    "grad_norm": "grad_norm",
}
Monitor = Literal[
    "val_loss", "validation_loss", "val_perplexity", "loss", "train_loss", "reduced_train_loss", "grad_norm"
]


class CheckpointConfig(Strict):
    """Checkpoint retention and resume."""

    resume: str = Field(
        default="auto",
        description="auto: newest checkpoint in output_dir, if any; never: start fresh; or a checkpoint path.",
    )
    save_top_k: int = Field(default=1, ge=0, description="Keep the k best by `monitor`, plus `last`.")
    monitor: Monitor = Field(
        default="val_loss",
        description="The logged metric that ranks checkpoints: val_loss (= NeMo's validation_loss), "
        "val_perplexity, loss (= train_loss, reduced_train_loss) or grad_norm.",
    )
    mode: Literal["min", "max"] = Field(default="min", description="Whether a lower or a higher `monitor` is better.")
    save_last: bool = True

    @property
    def metric(self) -> str:
        """The metrics.jsonl name of `monitor`."""
        return MONITOR_METRICS[self.monitor]


class ParallelismConfig(Strict):
    """How the model is spread over devices."""

    backend: Literal["auto", "torch", "megatron"] = Field(
        default="auto", description="auto: megatron on GPUs when megatron-core imports, else torch."
    )
    data_parallel: Literal["ddp", "fsdp2"] = "ddp"
    tensor_model_parallel_size: int = Field(default=1, ge=1)
    pipeline_model_parallel_size: int = Field(default=1, ge=1)
    virtual_pipeline_model_parallel_size: int | None = Field(default=None, ge=1)
    context_parallel_size: int = Field(default=1, ge=1)
    sequence_parallel: bool = False
    distributed_optimizer: bool = True
    overlap_grad_reduce: bool = True
    overlap_param_gather: bool = True
    activation_recompute: Literal["none", "selective", "full"] = "none"
    fp8: Literal["none", "hybrid", "e4m3"] = "none"
    fp8_recipe: Literal["delayed", "tensorwise", "blockwise"] = "tensorwise"
    distributed_timeout_seconds: int = Field(
        default=300, ge=10, description="Collective timeout: a lost rank fails the run after this."
    )

    @property
    def model_parallel_size(self) -> int:
        """Devices one model replica spans."""
        return self.tensor_model_parallel_size * self.pipeline_model_parallel_size * self.context_parallel_size


class WandbConfig(Strict):
    """Weights & Biases logging; `offline` needs no network."""

    project: str = "kube-sft"
    mode: Literal["offline", "online"] = "offline"
    name: str | None = Field(default=None, description="The run's name (default: the config's `name`).")
    tags: list[str] = Field(default_factory=list, description="Tags of the W&B run.")


class LoggingConfig(Strict):
    """Where progress goes besides metrics.jsonl."""

    progress: Literal["auto", "bar", "lines", "none"] = Field(
        default="auto", description="auto: a bar on a terminal, plain lines otherwise."
    )
    tensorboard: bool = False
    wandb: WandbConfig | None = None
    metrics_port: int | None = Field(default=None, ge=0, le=65535, description="Serve Prometheus /metrics.")
    peak_tflops_per_device: float | None = Field(
        default=None,
        gt=0.0,
        description="Peak dense TFLOP/s of one device for MFU; default: known GPUs' bf16 peak (H100/H200 989), "
        "none on CPU (MFU is then not reported).",
    )


class EvaluationConfig(Strict):
    """`sft eval` after training (an SFTJob step): loss on a held-out file, and generation metrics.

    The result is written to `<output_dir>/eval.json` and reported in the job's status metrics.
    """

    file: str | None = Field(
        default=None, description="Held-out JSONL in the run's data format (default: data.validation_file)."
    )
    generate: bool = Field(default=True, description="Also answer the rows and score the answers.")
    max_examples: int = Field(
        default=100, ge=1, description="Rows answered for the generation metrics (the loss uses all)."
    )
    max_new_tokens: int = Field(default=128, ge=1)
    answer_regex: str | None = Field(
        default=None,
        description="Extract the answer (group 1, else the whole match) from reference and generation before comparing, "
        "e.g. '####\\s*(.+)' for GSM8K.",
    )
    match_regex: str | None = Field(default=None, description="Also report the share of answers this regex finds.")
    stop: list[str] = Field(default_factory=list, description="Stop strings that end an answer.")

    @field_validator("answer_regex", "match_regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"not a valid regular expression: {error}") from None
        return value


class SFTConfig(Strict):
    """A whole fine-tuning run: `sft train --config run.yaml` and an SFTJob's `spec.training`."""

    name: str = Field(default="sft", min_length=1, max_length=63)
    output_dir: str = "runs/sft"
    model: ModelConfig
    data: DataConfig
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    parallelism: ParallelismConfig = Field(default_factory=ParallelismConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    evaluation: EvaluationConfig | None = Field(
        default=None, description="Evaluate final/ after training (sft eval); the result lands in the status metrics."
    )

    @property
    def world_size(self) -> int:
        """Processes the configuration asks for."""
        return self.trainer.num_nodes * self.trainer.devices

    @property
    def data_parallel_size(self) -> int:
        """Model replicas: world size over the model-parallel size."""
        return self.world_size // self.parallelism.model_parallel_size

    @model_validator(mode="after")
    def _consistent(self) -> "SFTConfig":
        problems = consistency_problems(self, self.world_size)
        if problems:
            raise ValueError("\n".join(problems))
        return self


def consistency_problems(config: SFTConfig, world_size: int) -> list[str]:
    """Cross-field rules, checked at load time and again with the real world size at start-up.

    Each message starts with the dotted key it is about.
    """
    problems: list[str] = []
    t, p = config.trainer, config.parallelism
    if t.max_steps == -1 and t.max_epochs == -1:
        problems.append("trainer.max_steps: -1 together with trainer.max_epochs=-1 would never stop; set one")
    if t.save_interval % t.val_check_interval:
        problems.append(
            f"trainer.save_interval: {t.save_interval} is not a multiple of "
            f"trainer.val_check_interval={t.val_check_interval}"
        )
    if world_size % p.model_parallel_size:
        problems.append(
            f"parallelism.tensor_model_parallel_size: TP x PP x CP = {p.model_parallel_size} does not "
            f"divide the {world_size} processes (trainer.num_nodes x trainer.devices)"
        )
        return problems
    data_parallel = world_size // p.model_parallel_size
    if t.global_batch_size % (t.micro_batch_size * data_parallel):
        problems.append(
            f"trainer.global_batch_size: {t.global_batch_size} is not divisible by micro_batch_size x "
            f"data-parallel size = {t.micro_batch_size} x {data_parallel}"
        )
    if p.virtual_pipeline_model_parallel_size is not None and p.pipeline_model_parallel_size == 1:
        problems.append("parallelism.virtual_pipeline_model_parallel_size: needs pipeline_model_parallel_size > 1")
    if p.sequence_parallel and p.tensor_model_parallel_size == 1:
        problems.append("parallelism.sequence_parallel: needs tensor_model_parallel_size > 1")
    if p.fp8 != "none" and t.precision != "bf16":
        problems.append("parallelism.fp8: FP8 training needs trainer.precision=bf16")
    if config.model.architecture and config.data.max_seq_length > config.model.architecture.max_position_embeddings:
        problems.append(
            "data.max_seq_length: longer than model.architecture.max_position_embeddings "
            f"({config.data.max_seq_length} > {config.model.architecture.max_position_embeddings})"
        )
    return problems
