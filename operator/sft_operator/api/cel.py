"""CEL validation rules of the SFTJob CRD: the cross-field checks the API server runs at apply.

They mirror `sft_trainer.config.consistency_problems` and `SFTJobSpec`'s validators, so a bad
spec is refused by `kubectl apply` with the same words and values `sft run` prints: a rule's
`fieldPath` is the key the CLI names and its `messageExpression` the CLI's text after `key: `
(tests/integration/test_cel_messages.py compares both on a real API server). Every optional field
is read through `has()` with the pydantic default, so a rule never fails on a missing key.
"""

from typing import Any

from sft_trainer.config import ParallelismConfig, TrainerConfig

Rule = dict[str, Any]


def field(path: str, default: object) -> str:
    """CEL for `self.<path>`, or `default` when any part of the path is absent."""
    parts = path.split(".")
    guards = " && ".join("has(self." + ".".join(parts[: i + 1]) + ")" for i in range(len(parts)))
    return f"({guards} ? self.{path} : {_literal(default)})"


def formatted(template: str, *values: str) -> str:
    """CEL for `template` with each `%d` / `%s` replaced by a CEL value (the strings library's `format`,
    Kubernetes 1.30+): `'...' + string(n)` would exceed the CRD's cost budget (unbounded string size)."""
    return f"{_literal(template)}.format([{', '.join(values)}])"


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
SOURCE = field("training.model.source", "hf")


def spec_rules() -> list[Rule]:
    """Rules on `spec` (cross-field: parallelism, batch sizes, cadence, node counts)."""
    return [
        {
            "rule": f"{WORLD} % {MODEL_PARALLEL} == 0",
            "message": "TP x PP x CP does not divide the processes (trainer.num_nodes x trainer.devices)",
            "messageExpression": formatted(
                "TP x PP x CP = %d does not divide the %d processes (trainer.num_nodes x trainer.devices)",
                MODEL_PARALLEL,
                WORLD,
            ),
            "fieldPath": ".training.parallelism.tensor_model_parallel_size",
            "reason": "FieldValueInvalid",
        },
        {
            "rule": f"{WORLD} % {MODEL_PARALLEL} != 0 || "
            f"{_trainer('global_batch_size')} % ({_trainer('micro_batch_size')} * {DATA_PARALLEL}) == 0",
            "message": "trainer.global_batch_size is not divisible by micro_batch_size x data-parallel size",
            "messageExpression": formatted(
                "%d is not divisible by micro_batch_size x data-parallel size = %d x %d",
                _trainer("global_batch_size"),
                _trainer("micro_batch_size"),
                DATA_PARALLEL,
            ),
            "fieldPath": ".training.trainer.global_batch_size",
            "reason": "FieldValueInvalid",
        },
        {
            "rule": f"{_trainer('save_interval')} % {_trainer('val_check_interval')} == 0",
            "message": "trainer.save_interval is not a multiple of trainer.val_check_interval",
            "messageExpression": formatted(
                "%d is not a multiple of trainer.val_check_interval=%d",
                _trainer("save_interval"),
                _trainer("val_check_interval"),
            ),
            "fieldPath": ".training.trainer.save_interval",
            "reason": "FieldValueInvalid",
        },
        {
            "rule": f"!({_trainer('max_steps')} == -1 && {_trainer('max_epochs')} == -1)",
            "message": "-1 together with trainer.max_epochs=-1 would never stop; set one",
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
            "rule": f"{SOURCE} == 'random' || has(self.training.model.path)",
            "message": "model.source needs model.path (unless it is random)",
            "messageExpression": formatted("model.source=%s needs model.path", SOURCE),
            "fieldPath": ".training.model",
            "reason": "FieldValueRequired",
        },
        {
            "rule": f"!has(self.training.trainer) || !has(self.training.trainer.num_nodes) || "
            f"self.training.trainer.num_nodes == {NODES}",
            "message": "training.trainer.num_nodes contradicts resources.numNodes; leave it unset",
            "messageExpression": formatted(
                "%d contradicts resources (%d); leave it unset", "self.training.trainer.num_nodes", NODES
            ),
            "fieldPath": ".training.trainer.num_nodes",
            "reason": "FieldValueInvalid",
        },
        {
            "rule": f"!has(self.training.trainer) || !has(self.training.trainer.devices) || "
            f"self.training.trainer.devices == {NPROC}",
            "message": "training.trainer.devices contradicts the processes per node; leave it unset",
            "messageExpression": formatted(
                "%d contradicts resources (%d); leave it unset", "self.training.trainer.devices", NPROC
            ),
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
