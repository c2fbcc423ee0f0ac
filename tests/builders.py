"""Shared builders for the operator's unit tests."""

import copy
from datetime import UTC, datetime
from typing import Any

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)

MANIFEST: dict[str, Any] = {
    "apiVersion": "sft.kube-sft.io/v1alpha1",
    "kind": "SFTJob",
    "metadata": {"name": "demo", "namespace": "team-a", "uid": "uid-1", "generation": 1},
    "spec": {
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
}


def manifest(**spec_changes: Any) -> dict[str, Any]:
    """The base manifest with top-level spec keys replaced."""
    result = copy.deepcopy(MANIFEST)
    result["spec"].update(spec_changes)
    return result
