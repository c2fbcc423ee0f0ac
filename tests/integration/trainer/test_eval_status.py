"""The `evaluation` step's result lands in a real SFTJob's status (real kube-apiserver + etcd).

The trainer process runs in-process here as an SFTJob pod's rank 0 would: `SFT_JOB_NAME` /
`SFT_JOB_NAMESPACE` set, the API server reached with a ServiceAccount token that may only get and
patch this job's status (an ordinary user, not the admin). It trains stories260K on real GSM8K rows,
evaluates `final/` on the held-out rows and reports; the status then holds `evalLoss`,
`evalExactMatch`, ... (the CRD's structural schema keeps them).
"""

import json
from itertools import islice
from pathlib import Path
from urllib.parse import urlparse

import kubernetes
import pytest
import yaml

from devcluster.controlplane import ControlPlane
from sft_operator.api import GROUP, PLURAL, VERSION
from sft_trainer.config import load_config
from sft_trainer.distributed import DistributedEnv
from sft_trainer.run import run_training
from tests.shared_data import SHARED_DATA, require

ROOT = Path(__file__).resolve().parents[3]
MODEL = SHARED_DATA / "models" / "stories260K" / "stories260K.bin"
GSM8K = SHARED_DATA / "instruct" / "gsm8k_train.jsonl"


def trainer_identity(cluster: ControlPlane, namespace: str, job: str, directory: Path) -> Path:
    """A ServiceAccount allowed to get/patch only `job`'s status; its token and the CA as a pod would see them."""
    v1 = kubernetes.client.CoreV1Api(cluster.client)
    rbac = kubernetes.client.RbacAuthorizationV1Api(cluster.client)
    v1.create_namespaced_service_account(namespace, {"metadata": {"name": "trainer"}})
    rule = {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "resourceNames": [job], "verbs": ["get", "patch"]}
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "trainer"}, "rules": [rule]})
    binding = {
        "metadata": {"name": "trainer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "trainer"},
        "subjects": [{"kind": "ServiceAccount", "name": "trainer", "namespace": namespace}],
    }
    rbac.create_namespaced_role_binding(namespace, binding)
    directory.mkdir(parents=True)
    (directory / "token").write_text(cluster.service_account_token(namespace, "trainer"))
    (directory / "ca.crt").write_bytes(Path(cluster.pki.ca.cert).read_bytes())
    return directory


def test_the_evaluation_step_reaches_the_sftjob_status(
    kube_cluster: ControlPlane, namespace: str, sftjob_crd: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require(MODEL, GSM8K)
    with GSM8K.open() as handle:
        rows = list(islice(handle, 24))
    (tmp_path / "train.jsonl").write_text("".join(rows[:16]))
    (tmp_path / "held_out.jsonl").write_text("".join(rows[16:]))
    training = {
        "model": {"source": "llama2c", "path": str(MODEL)},
        "data": {
            "train_file": str(tmp_path / "train.jsonl"),
            "validation_file": str(tmp_path / "held_out.jsonl"),
            "prompt_template": "Q: {question}\nA: {answer}",
            "label_key": "answer",
            "max_seq_length": 512,
        },
        "trainer": {
            "max_steps": 1,
            "global_batch_size": 4,
            "val_check_interval": 1,
            "save_interval": 1,
            "precision": "fp32",
        },
        "logging": {"progress": "none"},
        "evaluation": {"answer_regex": r"####\s*(.+)", "max_examples": 2, "max_new_tokens": 4},
        "output_dir": str(tmp_path / "run"),
    }
    manifest = yaml.safe_load((ROOT / "examples" / "sftjob-demo.yaml").read_text())
    manifest["metadata"] = {"name": "evaljob", "namespace": namespace}
    manifest["spec"]["training"] = training
    manifest["spec"].setdefault("runPolicy", {})["suspend"] = True  # no operator here: nothing else touches it
    custom = kubernetes.client.CustomObjectsApi(kube_cluster.client)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
    identity = trainer_identity(kube_cluster, namespace, "evaljob", tmp_path / "serviceaccount")
    server = urlparse(kube_cluster.server)
    for name, value in {
        "SFT_JOB_NAME": "evaljob",
        "SFT_JOB_NAMESPACE": namespace,
        "KUBERNETES_SERVICE_HOST": str(server.hostname),
        "KUBERNETES_SERVICE_PORT": str(server.port),
        "KUBE_SFT_SERVICEACCOUNT_DIR": str(identity),
        "SFT_TERMINATION_MESSAGE_PATH": str(tmp_path / "termination-log"),
    }.items():
        monkeypatch.setenv(name, value)
    config_path = tmp_path / "job.yaml"
    config_path.write_text(yaml.safe_dump(manifest))
    summary = run_training(load_config(config_path), DistributedEnv())
    assert summary.exit_code == 0 and summary.eval_metrics is not None, summary.message
    status = custom.get_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "evaljob")["status"]
    metrics = status["metrics"]
    step = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert metrics["evalLoss"] == pytest.approx(step["val_loss"], abs=1e-9)
    assert metrics["evalPerplexity"] == pytest.approx(step["perplexity"])
    assert metrics["evalExactMatch"] == step["generation"]["exact_match"]
    assert metrics["evalContains"] == step["generation"]["contains"]
    assert status["finalModel"] == str(tmp_path / "run" / "final")
    assert json.loads((tmp_path / "termination-log").read_text())["eval_metrics"]["eval_loss"] == step["val_loss"]
