"""Shared test builders: SFTJob manifests, a running job's status and tiny Llama models (one shape for
every test layer).

`sftjob(name, spec)` is the one place an SFTJob manifest is assembled; each layer keeps its own spec
(the operator's unit tests: GPU pods on PVCs, `MANIFEST`; the integration tests: Python-script pods on
the node agent; e2e: CPU pods running the real trainer) and builds it through here. The API version
is written out, not imported: the tests state the public API rather than echo the code's constant.

The tiny Llama: `tiny_architecture()` is the trainer config's `model.architecture` (one layer, hidden
32), `random_model()` the whole `model:` section around it, and `tiny_llama()` a Hugging Face model of
the same family built in the test (two layers, grouped-query attention). Each takes changes as
keyword arguments. The megatron tests keep their own shapes (heads and groups divisible by their
tensor-parallel sizes, matched field by field by a megatron TransformerConfig).
"""

import copy
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM

API_VERSION = "sft.kube-sft.io/v1alpha1"
NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def sftjob(name: str, spec: dict[str, Any], namespace: str | None = None, **metadata: Any) -> dict[str, Any]:
    """An SFTJob manifest: `name` (and `namespace` when given, then any other metadata) with `spec`."""
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    meta.update(metadata)
    return {"apiVersion": API_VERSION, "kind": "SFTJob", "metadata": meta, "spec": spec}


MANIFEST: dict[str, Any] = sftjob(
    "demo",
    {
        "training": {
            "output_dir": "/output/demo",
            "model": {"source": "hf", "path": "/models/tiny"},
            "data": {"train_file": "/data/train.jsonl", "validation_file": "/data/val.jsonl"},
            "trainer": {"max_steps": 20, "val_check_interval": 5, "save_interval": 10, "global_batch_size": 8},
            "logging": {"metrics_port": 9400},
        },
        "resources": {"numNodes": 2, "gpusPerNode": 2, "requests": {"cpu": 4, "memory": "16Gi"}},
        "storage": {
            "model": {"mountPath": "/models", "persistentVolumeClaim": {"claimName": "models"}, "readOnly": True},
            "output": {
                "mountPath": "/output",
                "persistentVolumeClaim": {"claimName": "runs"},
                "credentialsSecretRef": {"name": "hf-token"},
            },
        },
    },
    namespace="team-a",
    uid="uid-1",
    generation=1,
)
"""The operator unit tests' job: team-a/demo, 2 nodes x 2 GPUs, model and output on PVCs."""


def manifest(**spec_changes: Any) -> dict[str, Any]:
    """`MANIFEST` with top-level spec keys replaced."""
    result = copy.deepcopy(MANIFEST)
    result["spec"].update(spec_changes)
    return result


def running_status(job: str, nodes: int, failed_rank: int = 0, **metrics: float) -> dict[str, Any]:
    """The status of a job in its third attempt (one retried failure) as the operator and rank 0 write it:
    all `nodes` pods running, step 120/600, a checkpoint at step 100, and the last failure: pod
    `<job>-node-<failed_rank>` exited 70 (NCCL timeout). `metrics` adds or replaces status.metrics fields."""
    return {
        "phase": "Running",
        "restarts": 1,
        "attempt": 2,
        "replicas": {"desired": nodes, "running": nodes},
        "progress": {"step": 120, "totalSteps": 600, "epoch": 0, "percent": 20.0, "eta": "12m30s", "tokens": 1_234_567},
        "metrics": {"loss": 1.23456, "valLoss": 1.5, "bestValLoss": 1.4, "lr": 5e-6, "tokensPerSecond": 12345.6}
        | metrics,
        "latestCheckpoint": {"step": 100, "path": "/output/dolly-2b/checkpoints/step-100"},
        "lastFailure": {
            "reason": "PodFailed",
            "rank": failed_rank,
            "pod": f"{job}-node-{failed_rank}",
            "exitCode": 70,
            "retryable": True,
            "message": "NCCL watchdog timeout",
            "time": "2026-11-28T04:00:00Z",
        },
    }


def tiny_architecture(**changes: Any) -> dict[str, Any]:
    """The trainer config's `model.architecture` of a tiny random Llama: 1 layer, hidden 32, 2 heads
    (2 KV heads), MLP 64, 64 positions. `changes` replace or add fields (`num_layers=2`, `vocab_size=...`)."""
    return {
        "hidden_size": 32,
        "num_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
    } | changes


def random_model(**architecture: Any) -> dict[str, Any]:
    """The trainer config's `model:` for a randomly initialised tiny Llama with the byte tokenizer."""
    return {"source": "random", "tokenizer": {"type": "byte"}, "architecture": tiny_architecture(**architecture)}


def tiny_llama(seed: int = 0, **changes: Any) -> "LlamaForCausalLM":
    """A Hugging Face Llama, randomly initialised from `seed`, in eval mode: 2 layers, hidden 32,
    grouped-query attention (4 heads, 2 KV heads), MLP 64, vocabulary 64, 64 positions, untied head.
    `changes` replace or add LlamaConfig fields."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    shape: dict[str, Any] = {
        "vocab_size": 64,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        "tie_word_embeddings": False,
    }
    return LlamaForCausalLM(LlamaConfig(**(shape | changes))).eval()
