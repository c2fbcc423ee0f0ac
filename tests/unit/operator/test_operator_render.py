"""render: the desired children of an SFTJob."""

import yaml

from sft_operator import render
from sft_operator.api import SFTJob
from tests.builders import manifest


def _env(pod: dict, name: str) -> str:
    container = pod["spec"]["containers"][0]
    return next(item["value"] for item in container["env"] if item["name"] == name)


def test_one_pod_per_node_with_stable_dns_names(job: SFTJob) -> None:
    pods = render.pods(job)
    assert [pod["metadata"]["name"] for pod in pods] == ["demo-node-0", "demo-node-1"]
    for rank, pod in enumerate(pods):
        assert pod["spec"]["hostname"] == f"demo-node-{rank}"
        assert pod["spec"]["subdomain"] == "demo"
        assert pod["spec"]["restartPolicy"] == "Never"
        assert pod["metadata"]["labels"][render.LABEL_RANK] == str(rank)


def test_a_restarted_gang_never_reuses_a_pod_name_but_keeps_its_dns_names(job: SFTJob) -> None:
    """Pod names are per attempt (a node agent acting late by name on the failed gang finds nothing);
    hostnames, MASTER_ADDR and the rank label are the same in every attempt."""
    attempts = [render.pods(job.model_copy(update={"status": job.status.model_copy(update={"attempt": n})}))
                for n in range(3)]  # fmt: skip
    names = [[pod["metadata"]["name"] for pod in gang] for gang in attempts]
    assert names == [
        ["demo-node-0", "demo-node-1"],
        ["demo-node-0-a1", "demo-node-1-a1"],
        ["demo-node-0-a2", "demo-node-1-a2"],
    ]
    for gang in attempts:
        assert [pod["spec"]["hostname"] for pod in gang] == ["demo-node-0", "demo-node-1"]
        assert {_env(pod, "MASTER_ADDR") for pod in gang} == {"demo-node-0.demo"}


def test_torch_distributed_env(job: SFTJob) -> None:
    pod = render.pods(job)[1]
    assert _env(pod, "MASTER_ADDR") == "demo-node-0.demo"
    assert _env(pod, "MASTER_PORT") == "29500"
    assert _env(pod, "NNODES") == "2"
    assert _env(pod, "NODE_RANK") == "1"
    assert _env(pod, "NPROC_PER_NODE") == "2"
    assert _env(pod, "WORLD_SIZE") == "4"
    assert _env(pod, "PET_NODE_RANK") == "1"
    assert _env(pod, "PET_MASTER_ADDR") == "demo-node-0.demo"
    assert _env(pod, "SFT_JOB_NAME") == "demo"
    assert _env(pod, "SFT_JOB_NAMESPACE") == "team-a"


def test_single_process_pods_get_rank_directly() -> None:
    job = SFTJob.model_validate(manifest(resources={"numNodes": 4, "gpusPerNode": 0}))
    pod = render.pods(job)[2]
    assert _env(pod, "RANK") == "2"
    assert _env(pod, "WORLD_SIZE") == "4"
    assert "limits" not in pod["spec"]["containers"][0]["resources"]


def test_gpus_shm_config_and_credentials(job: SFTJob) -> None:
    pod = render.pod(job, 0)
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["resources"]["requests"] == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "2"}
    volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Gi"}
    assert volumes["sft-config"]["configMap"]["name"] == "demo-config"
    assert volumes["sft-model"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert {"/dev/shm", "/etc/kube-sft", "/models", "/output"} <= mounts
    assert container["envFrom"] == [{"secretRef": {"name": "hf-token"}}]
    assert container["command"][-1] == render.CONFIG_PATH
    assert {"name": "metrics", "containerPort": 9400, "protocol": "TCP"} in container["ports"]


def test_security_context_is_locked_down(job: SFTJob) -> None:
    pod = render.pod(job, 0)
    container = pod["spec"]["containers"][0]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert pod["spec"]["serviceAccountName"] == "demo-trainer"


def test_every_child_is_owned_by_the_job(job: SFTJob) -> None:
    for child in [*render.supporting_objects(job), *render.pods(job)]:
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner == {
            "apiVersion": "sft.kube-sft.io/v1alpha1",
            "kind": "SFTJob",
            "name": "demo",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert child["metadata"]["namespace"] == "team-a"


def test_headless_service_publishes_not_ready_addresses(job: SFTJob) -> None:
    service = render.headless_service(job)
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {render.LABEL_JOB: "demo"}


def test_role_may_only_patch_this_jobs_status(job: SFTJob) -> None:
    (rule,) = render.role(job)["rules"]
    assert rule == {
        "apiGroups": ["sft.kube-sft.io"],
        "resources": ["sftjobs/status"],
        "resourceNames": ["demo"],
        "verbs": ["get", "patch"],
    }
    binding = render.role_binding(job)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "demo-trainer", "namespace": "team-a"}]


def test_config_map_holds_the_full_trainer_config(job: SFTJob) -> None:
    config = yaml.safe_load(render.config_map(job)["data"]["config.yaml"])
    assert config["trainer"]["num_nodes"] == 2 and config["trainer"]["devices"] == 2
    assert config["model"]["path"] == "/models/tiny"


def test_kueue_pod_group(job: SFTJob) -> None:
    queued = SFTJob.model_validate(manifest(scheduling={"queueName": "gpu-queue", "schedulerName": "volcano"}))
    pod = render.pod(queued, 1)
    assert pod["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert pod["metadata"]["labels"]["kueue.x-k8s.io/pod-group-name"] == "demo-0"
    assert pod["metadata"]["annotations"]["kueue.x-k8s.io/pod-group-total-count"] == "2"
    assert pod["spec"]["schedulerName"] == "volcano"


def test_pod_overrides_apply(job: SFTJob) -> None:
    changed = SFTJob.model_validate(
        manifest(
            pod={
                "nodeSelector": {"pool": "a100"},
                "tolerations": [{"key": "gpu", "operator": "Exists"}],
                "priorityClassName": "high",
                "env": [{"name": "NCCL_DEBUG", "value": "INFO"}],
                "command": ["sleep", "1"],
            },
            image="registry.local/trainer:1",
        )
    )
    pod = render.pod(changed, 0)
    assert pod["spec"]["nodeSelector"] == {"pool": "a100"}
    assert pod["spec"]["priorityClassName"] == "high"
    assert pod["spec"]["containers"][0]["image"] == "registry.local/trainer:1"
    assert pod["spec"]["containers"][0]["command"] == ["sleep", "1"]
    assert _env(pod, "NCCL_DEBUG") == "INFO"
    assert render.template_hash(changed) != render.template_hash(job)


def test_run_policy_does_not_change_the_template(job: SFTJob) -> None:
    changed = SFTJob.model_validate(manifest(runPolicy={"backoffLimit": 9, "suspend": True}))
    assert render.template_hash(changed) == render.template_hash(job)
