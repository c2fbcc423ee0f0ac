"""CEL validation rules of the SFTJob CRD: the cross-field checks the API server runs at apply.

They mirror `sft_trainer.config.consistency_problems` and `SFTJobSpec`'s validators, so a bad
spec is refused by `kubectl apply` with the same message `sft run` prints. Every optional field is
read through `has()` with the pydantic default, so a rule never fails on a missing key.
"""

from typing import Any

from sft_trainer.config import ParallelismConfig, TrainerConfig

Rule = dict[str, Any]


def field(path: str, default: object) -> str:
    """CEL for `self.<path>`, or `default` when any part of the path is absent."""
    parts = path.split(".")
    guards = " && ".join("has(self." + ".".join(parts[: i + 1]) + ")" for i in range(len(parts)))
    return f"({guards} ? self.{path} : {_literal(default)})"


def _literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _default(model: type[TrainerConfig] | type[ParallelismConfig], name: str) -> object:
    return model.model_fields[name].default


def _trainer(name: str) -> str:
    return field(f"training.trainer.{name}", _default(TrainerConfig, name))


def _parallel(name: str) -> str:
    return field(f"training.parallelism.{name}", _default(ParallelismConfig, name))


GPUS = field("resources.gpusPerNode", 1)
NODES = field("resources.numNodes", 1)
NPROC = f"(has(self.resources) && has(self.resources.processesPerNode) ? self.resources.processesPerNode : ({GPUS} > 0 ? {GPUS} : 1))"
WORLD = f"({NODES} * {NPROC})"
MODEL_PARALLEL = (
    f"({_parallel('tensor_model_parallel_size')} * {_parallel('pipeline_model_parallel_size')}"
    f" * {_parallel('context_parallel_size')})"
)
DATA_PARALLEL = f"({WORLD} / {MODEL_PARALLEL})"


def spec_rules() -> list[Rule]:
    """Rules on `spec` (cross-field: parallelism, batch sizes, cadence, node counts)."""
    return [
        {
            "rule": f"{WORLD} % {MODEL_PARALLEL} == 0",
            "message": "tensor_model_parallel_size x pipeline_model_parallel_size x context_parallel_size "
            "must divide the trainer processes (resources.numNodes x processes per node)",
            "fieldPath": ".training.parallelism",
            "reason": "FieldValueInvalid",
        },
        {
            "rule": f"{WORLD} % {MODEL_PARALLEL} != 0 || "
            f"{_trainer('global_batch_size')} % ({_trainer('micro_batch_size')} * {DATA_PARALLEL}) == 0",
            "message": "global_batch_size must be divisible by micro_batch_size x data-parallel size "
            "(trainer processes / (TP x PP x CP))",
            "fieldPath": ".training.trainer.global_batch_size",
            "reason": "FieldValueInvalid",
        },
        {
            "rule": f"{_trainer('save_interval')} % {_trainer('val_check_interval')} == 0",
            "message": "save_interval must be a multiple of val_check_interval",
            "fieldPath": ".training.trainer.save_interval",
            "reason": "FieldValueInvalid",
        },
        {
            "rule": f"!({_trainer('max_steps')} == -1 && {_trainer('max_epochs')} == -1)",
            "message": "max_steps=-1 together with max_epochs=-1 would never stop; set one",
            "fieldPath": ".training.trainer.max_steps",
            "reason": "FieldValueInvalid",
        },
        {
            "rule": "has(self.training.data.train_file) != has(self.training.data.synthetic)",
            "message": "set exactly one of training.data.train_file and training.data.synthetic",
            "fieldPath": ".training.data",
            "reason": "FieldValueRequired",
        },
        {
            "rule": f"{field('training.model.source', 'hf')} == 'random' || has(self.training.model.path)",
            "message": "training.model.path is required unless training.model.source is random",
            "fieldPath": ".training.model",
            "reason": "FieldValueRequired",
        },
        {
            "rule": f"!has(self.training.trainer) || !has(self.training.trainer.num_nodes) || "
            f"self.training.trainer.num_nodes == {NODES}",
            "message": "training.trainer.num_nodes must equal resources.numNodes (or be left unset)",
            "fieldPath": ".training.trainer.num_nodes",
            "reason": "FieldValueInvalid",
        },
        {
            "rule": f"!has(self.training.trainer) || !has(self.training.trainer.devices) || "
            f"self.training.trainer.devices == {NPROC}",
            "message": "training.trainer.devices must equal the processes per node (or be left unset)",
            "fieldPath": ".training.trainer.devices",
            "reason": "FieldValueInvalid",
        },
    ]


def immutable(what: str, hint: str) -> list[Rule]:
    """A transition rule refusing any change of the field it sits on."""
    return [{"rule": "self == oldSelf", "message": f"{what} is immutable: {hint}"}]


def name_rules(max_length: int) -> list[Rule]:
    """Rules on the object root: the name must fit `<name>-node-<rank>` and be a DNS-1035 label."""
    return [
        {
            "rule": f"self.metadata.name.size() <= {max_length}",
            "message": f"metadata.name must be at most {max_length} characters (pods are named <name>-node-<rank>)",
        },
        {
            "rule": "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
            "message": "metadata.name must start with a letter and contain only a-z, 0-9 and '-' (it names a Service)",
        },
    ]


def one_volume_source_rule() -> list[Rule]:
    """A storage location names at most one volume source."""
    count = " + ".join(f"(has(self.{key}) ? 1 : 0)" for key in ("persistentVolumeClaim", "hostPath", "emptyDir"))
    return [{"rule": f"{count} <= 1", "message": "set at most one of persistentVolumeClaim, hostPath, emptyDir"}]
