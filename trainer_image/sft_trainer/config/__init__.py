"""The training schema: one pydantic model for `sft train --config`, overrides and SFTJob specs."""

from sft_trainer.config.data import ChatPromptTokens, DataConfig, SyntheticTaskConfig
from sft_trainer.config.loading import ConfigError, ConfigProblem, load_config, validate
from sft_trainer.config.schema import (
    ArchitectureConfig,
    CheckpointConfig,
    EvaluationConfig,
    LoggingConfig,
    LoraConfig,
    ModelConfig,
    OptimConfig,
    ParallelismConfig,
    SchedulerConfig,
    SFTConfig,
    TokenizerConfig,
    TrainerConfig,
    TrainingConfig,
    WandbConfig,
    consistency_problems,
)

__all__ = [
    "ArchitectureConfig",
    "ChatPromptTokens",
    "CheckpointConfig",
    "ConfigError",
    "ConfigProblem",
    "DataConfig",
    "EvaluationConfig",
    "LoggingConfig",
    "LoraConfig",
    "ModelConfig",
    "OptimConfig",
    "ParallelismConfig",
    "SFTConfig",
    "SchedulerConfig",
    "SyntheticTaskConfig",
    "TokenizerConfig",
    "TrainerConfig",
    "TrainingConfig",
    "WandbConfig",
    "consistency_problems",
    "load_config",
    "validate",
]
