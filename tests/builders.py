"""Shared test builders: SFTJob manifests and a running job's status (one shape for every test layer).

`sftjob(name, spec)` is the one place an SFTJob manifest is assembled; each layer keeps its own spec
(the operator's unit tests: GPU pods on PVCs, `MANIFEST`; the integration tests: Python-script pods on
the node agent; e2e: CPU pods running the real trainer) and builds it through here. The API version
is written out, not imported: the tests state the public API rather than echo the code's constant.
"""

import copy
from datetime import UTC, datetime
from typing import Any

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
