"""Platform defaults (ClusterSFTRuntime): the merge under the job's own fields, the choice of runtime,
its resolution, the pods rendered with it, and the decision when it is missing or edited."""

from datetime import timedelta
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from sft_operator import render
from sft_operator.__main__ import parse_args
from sft_operator.api import SFTJob
from sft_operator.api import crd as crd_module
from sft_operator.api.models import AppliedRuntime
from sft_operator.api.references import required_access
from sft_operator.api.runtime import ClusterSFTRuntimeSpec
from sft_operator.controller import Controller, Settings
from sft_operator.kubectl_plugin.text import format_status
from sft_operator.pods import pod_view
from sft_operator.runtime import (
    NO_RUNTIME,
    REF_FIELD,
    RUNTIME_INVALID,
    RUNTIME_NOT_FOUND,
    Choice,
    choose,
    resolve,
    with_runtime,
)
from sft_operator.status import Observed, reconcile
from tests.builders import NOW, manifest
from tests.unit.operator.test_operator_controller import RecordingKube

NCCL = [{"name": "NCCL_DEBUG", "value": "INFO"}, {"name": "NCCL_IB_HCA", "value": "mlx5"}]
GPU_TAINT = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
RUNTIME: dict[str, Any] = {
    "apiVersion": "sft.kube-sft.io/v1alpha1",
    "kind": "ClusterSFTRuntime",
    "metadata": {"name": "h100", "generation": 3, "resourceVersion": "4711", "uid": "rt-1"},
    "spec": {
        "image": "registry.example/trainer:platform",
        "pod": {
            "env": NCCL,
            "tolerations": [GPU_TAINT],
            "nodeSelector": {"pool": "h100", "zone": "a"},
            "imagePullSecrets": [{"name": "registry"}],
            "priorityClassName": "training",
            "labels": {"cost-center": "ml"},
            "annotations": {"platform/managed": "yes"},
            "imagePullPolicy": "IfNotPresent",
        },
        "resources": {"requests": {"cpu": 8, "memory": "64Gi"}, "limits": {"memory": "128Gi"}},
    },
}


def runtime_spec() -> ClusterSFTRuntimeSpec:
    return ClusterSFTRuntimeSpec.model_validate(RUNTIME["spec"])


def job(**spec: Any) -> SFTJob:
    return SFTJob.model_validate(manifest(**spec))


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in pod["spec"]["containers"][0]["env"]}


# --- the merge -------------------------------------------------------------------------------------


def test_a_job_without_fields_of_its_own_gets_every_default() -> None:
    merged = with_runtime(job().spec, runtime_spec())
    assert merged.image == "registry.example/trainer:platform"
    assert [(item.name, item.value) for item in merged.pod.env] == [("NCCL_DEBUG", "INFO"), ("NCCL_IB_HCA", "mlx5")]
    assert merged.pod.tolerations == [GPU_TAINT]
    assert merged.pod.node_selector == {"pool": "h100", "zone": "a"}
    assert [ref.name for ref in merged.pod.image_pull_secrets] == ["registry"]
    assert merged.pod.priority_class_name == "training"
    assert merged.pod.image_pull_policy == "IfNotPresent"
    # requests by key: the job's own cpu (4) and memory (16Gi) win over the runtime's.
    assert merged.resources.requests == {"cpu": 4, "memory": "16Gi"}
    assert merged.resources.limits == {"memory": "128Gi"}


def test_the_jobs_own_fields_win_key_by_key() -> None:
    own_toleration = {"key": "team", "operator": "Equal", "value": "a", "effect": "NoSchedule"}
    spec = job(
        image="registry.example/trainer:mine",
        pod={
            "env": [{"name": "NCCL_DEBUG", "value": "WARN"}, {"name": "MINE", "value": "1"}],
            "tolerations": [own_toleration, GPU_TAINT],
            "nodeSelector": {"zone": "b"},
            "imagePullSecrets": [{"name": "mine"}, {"name": "registry"}],
            "priorityClassName": "low",
            "labels": {"cost-center": "team-a"},
        },
    ).spec
    merged = with_runtime(spec, runtime_spec())
    assert merged.image == "registry.example/trainer:mine"
    assert [(item.name, item.value) for item in merged.pod.env] == [
        ("NCCL_IB_HCA", "mlx5"),
        ("NCCL_DEBUG", "WARN"),
        ("MINE", "1"),
    ]
    assert merged.pod.tolerations == [GPU_TAINT, own_toleration]  # appended, an identical one once
    assert merged.pod.node_selector == {"pool": "h100", "zone": "b"}
    assert [ref.name for ref in merged.pod.image_pull_secrets] == ["registry", "mine"]
    assert merged.pod.priority_class_name == "low"
    assert merged.pod.labels == {"cost-center": "team-a"}
    assert merged.pod.annotations == {"platform/managed": "yes"}


def test_the_merge_changes_neither_the_spec_nor_its_template_hash() -> None:
    original = job()
    before = original.spec.model_dump()
    shape = render.template_hash(original)
    pod = render.pod(original, 0, runtime=runtime_spec())
    assert original.spec.model_dump() == before
    assert pod["metadata"]["annotations"][render.ANNOTATION_TEMPLATE_HASH] == shape
    assert render.pod(original, 0)["metadata"]["annotations"][render.ANNOTATION_TEMPLATE_HASH] == shape


def test_the_pods_get_the_defaults_and_the_operators_own_fields_still_win() -> None:
    defaults = runtime_spec().model_copy(deep=True)
    defaults.pod.env.append(defaults.pod.env[0].model_copy(update={"name": "SFT_JOB_NAME", "value": "other"}))
    pod = render.pod(job(), 1, runtime=defaults)
    spec, container = pod["spec"], pod["spec"]["containers"][0]
    assert container["image"] == "registry.example/trainer:platform"
    assert spec["tolerations"] == [GPU_TAINT]
    assert spec["priorityClassName"] == "training"
    assert spec["imagePullSecrets"] == [{"name": "registry"}]
    assert spec["nodeSelector"] == {"pool": "h100", "zone": "a"}
    assert env_of(pod)["NCCL_IB_HCA"] == "mlx5"
    assert container["resources"]["limits"] == {"memory": "128Gi", "nvidia.com/gpu": "2"}
    assert pod["metadata"]["labels"]["cost-center"] == "ml"
    assert pod["metadata"]["labels"][render.LABEL_RANK] == "1"
    # The operator's variables come first; Kubernetes takes the last of a name, so the reporter's is
    # shadowed only as the job's own env could: the runtime is the platform's, checked by no author.
    names = [item["name"] for item in container["env"]]
    assert names.index("SFT_JOB_NAME") < names.index("NCCL_DEBUG")


def test_no_runtime_renders_the_pod_as_before() -> None:
    assert render.pod(job(), 0, runtime=None) == render.pod(job(), 0)
    assert with_runtime(job().spec, None) is not None


# --- which runtime, and resolving it -------------------------------------------------------------------


def test_the_jobs_reference_wins_over_the_operators_default() -> None:
    assert choose(job(runtimeRef={"name": "h100"}).spec, "default-gpu") == Choice("h100", default=False)
    assert choose(job().spec, "default-gpu") == Choice("default-gpu", default=True)
    assert choose(job().spec, None) is None
    assert resolve(None, None) == NO_RUNTIME


def test_a_resolved_runtime_is_recorded_with_its_version() -> None:
    resolved = resolve(Choice("h100", default=False), RUNTIME)
    assert resolved.problem == "" and resolved.defaults == runtime_spec()
    assert resolved.applied is not None
    assert (resolved.applied.name, resolved.applied.generation, resolved.applied.resource_version) == (
        "h100",
        3,
        "4711",
    )


def test_a_missing_or_invalid_runtime_names_the_field() -> None:
    missing = resolve(Choice("nope", default=False), None)
    assert missing.reason == RUNTIME_NOT_FOUND and missing.defaults is None
    assert missing.problem.startswith(f"{REF_FIELD}: ClusterSFTRuntime 'nope' not found")
    default = resolve(Choice("gone", default=True), None)
    assert "--default-runtime" in default.problem
    broken = {**RUNTIME, "spec": {"pod": {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s"}}}]}}}
    invalid = resolve(Choice("h100", default=False), broken)
    assert invalid.reason == RUNTIME_INVALID and "pod.env.0.valueFrom" in invalid.problem


def property_names(schema: Any) -> list[str]:
    """Every property name anywhere in a structural schema."""
    if isinstance(schema, list):
        return [name for item in schema for name in property_names(item)]
    if not isinstance(schema, dict):
        return []
    names = list((schema.get("properties") or {}).keys())
    return names + [name for value in schema.values() for name in property_names(value)]


def test_a_runtime_can_name_nothing_in_another_namespace() -> None:
    """Every name a runtime holds is resolved in the job's namespace: its schema has no namespace field,
    and an env var cannot read a Secret or ConfigMap."""
    spec = crd_module.runtime_spec_schema()
    affinity = spec["properties"]["pod"]["properties"].pop("affinity")  # pod (anti-)affinity terms: scheduling only
    assert affinity["properties"].keys() == {"nodeAffinity", "podAffinity", "podAntiAffinity"}
    fields = set(property_names(spec))
    assert not {name for name in fields if "namespace" in name.lower()}, fields
    assert not fields & {"valueFrom", "secretKeyRef", "configMapKeyRef", "volumes", "serviceAccountName"}
    with pytest.raises(ValueError, match="namespace"):
        ClusterSFTRuntimeSpec.model_validate({"pod": {"imagePullSecrets": [{"name": "r", "namespace": "kube-system"}]}})


def test_the_authors_access_checks_see_only_what_the_author_wrote() -> None:
    """The creator's rights are checked for the job's own references; the runtime's pull secret is the
    platform's (never added to the author's checks, and never removing one of theirs)."""
    raw = manifest(runtimeRef={"name": "h100"}, pod={"imagePullSecrets": [{"name": "mine"}]})
    names = {(check.resource, check.name) for check in required_access(raw)}
    assert ("secrets", "mine") in names and ("secrets", "registry") not in names


def test_the_runtime_crd_is_cluster_scoped_and_refuses_reserved_labels() -> None:
    crd = crd_module.runtime_crd()
    assert crd["spec"]["scope"] == "Cluster"
    labels = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["pod"]
    rule = labels["properties"]["labels"]["x-kubernetes-validations"][0]["rule"]
    assert "kube-sft[.]io/" in rule


# --- the decision ---------------------------------------------------------------------------------


def decide(raw: dict[str, Any], resolution: Any, pods: list[dict[str, Any]] | None = None) -> Any:
    return reconcile(SFTJob.model_validate(raw), [pod_view(p) for p in pods or []], NOW, Observed(runtime=resolution))


def test_a_new_job_gets_its_runtime_recorded_and_a_true_condition() -> None:
    raw = manifest(runtimeRef={"name": "h100"})
    plan = decide(raw, resolve(Choice("h100", default=False), RUNTIME))
    assert plan.create_pods
    assert plan.status.runtime is not None and plan.status.runtime.resource_version == "4711"
    assert plan.status.runtime.attempt == 0
    condition = next(item for item in plan.status.conditions if item.type == "RuntimeApplied")
    assert condition.status == "True" and "'h100' (generation 3, resourceVersion 4711)" in condition.message


def test_a_missing_runtime_keeps_the_job_from_starting_once_with_one_event() -> None:
    raw = manifest(runtimeRef={"name": "nope"})
    missing = resolve(Choice("nope", default=False), None)
    plan = decide(raw, missing)
    assert not plan.create_pods
    assert plan.status.phase == "Pending" and plan.status.reason == RUNTIME_NOT_FOUND
    assert plan.status.attempt_start_time is None  # no clock runs: no gang-start timeout, no restarts
    condition = next(item for item in plan.status.conditions if item.type == "RuntimeApplied")
    assert condition.status == "False" and REF_FIELD in condition.message
    assert [event.reason for event in plan.events if event.type == "Warning"] == [RUNTIME_NOT_FOUND]
    again = decide({**raw, "status": plan.status.wire()}, missing)
    assert not again.create_pods and not [event for event in again.events if event.type == "Warning"]
    # The cluster admin creates it: the job starts with it.
    started = decide({**raw, "status": again.status.wire()}, resolve(Choice("nope", default=False), RUNTIME))
    assert started.create_pods and started.status.reason == "Pending"
    assert next(item for item in started.status.conditions if item.type == "RuntimeApplied").status == "True"


def test_a_restart_reads_the_runtime_again_and_records_the_new_attempt() -> None:
    first = decide(manifest(runtimeRef={"name": "h100"}), resolve(Choice("h100", default=False), RUNTIME))
    status = first.status.model_copy(
        update={"phase": "Restarting", "next_attempt_time": NOW - timedelta(seconds=1), "reason": "PodFailed"}
    )
    edited = {**RUNTIME, "metadata": {**RUNTIME["metadata"], "generation": 4, "resourceVersion": "5000"}}
    plan = decide(
        {**manifest(runtimeRef={"name": "h100"}), "status": status.wire()},
        resolve(Choice("h100", default=False), edited),
    )
    assert plan.create_pods and plan.status.attempt == 1
    assert plan.status.runtime is not None
    assert (plan.status.runtime.generation, plan.status.runtime.attempt) == (4, 1)


def test_a_job_without_a_runtime_has_no_runtime_condition() -> None:
    plan = decide(manifest(), None)
    assert plan.status.runtime is None
    assert "RuntimeApplied" not in [item.type for item in plan.status.conditions]


# --- the controller: one GET when a gang starts, the pods created with what it read ----------------------


class RuntimeKube(RecordingKube):
    """RecordingKube with ClusterSFTRuntimes (name -> object) the operator may get."""

    def __init__(self, runtimes: dict[str, dict[str, Any]]) -> None:
        super().__init__(patch_seconds=0)
        self.runtimes = runtimes
        self.pods: list[dict[str, Any]] = []
        self.patches: list[dict[str, Any]] = []

    def get_runtime(self, name: str) -> dict[str, Any] | None:
        self._record("get", f"ClusterSFTRuntime/{name}", 0.0)
        return self.runtimes.get(name)

    def create(self, obj: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
        if obj["kind"] == "Pod":
            self.pods.append(obj)
        return super().create(obj, dry_run)

    def patch_job_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.patches.append(patch)
        return super().patch_job_status(namespace, name, patch)


def run_once(kube: RuntimeKube, raw: dict[str, Any], default_runtime: str | None = None) -> None:
    controller = Controller(kube, Settings(default_runtime=default_runtime))  # type: ignore[arg-type]
    controller.store.put_job({**raw, "metadata": {**raw["metadata"], "resourceVersion": "1"}})
    controller.synced.set()
    controller.reconcile(("team-a", "demo"))
    controller.recorder.shutdown(wait=True)
    controller.stop()


def test_the_controller_creates_the_gang_with_the_runtime_it_read() -> None:
    kube = RuntimeKube({"h100": RUNTIME})
    run_once(kube, manifest(runtimeRef={"name": "h100"}))
    assert [what for verb, what, _, _ in kube.calls if verb == "get"] == ["ClusterSFTRuntime/h100"]
    assert len(kube.pods) == 2
    assert all(pod["spec"]["tolerations"] == [GPU_TAINT] for pod in kube.pods)
    assert all(pod["spec"]["priorityClassName"] == "training" for pod in kube.pods)
    assert kube.patches[0]["runtime"] == {
        "name": "h100",
        "generation": 3,
        "resourceVersion": "4711",
        "attempt": 0,
        "isDefault": False,
    }


def test_the_controller_applies_the_default_runtime_to_jobs_without_a_reference() -> None:
    kube = RuntimeKube({"platform": RUNTIME})
    run_once(kube, manifest(), default_runtime="platform")
    assert all(env_of(pod)["NCCL_DEBUG"] == "INFO" for pod in kube.pods) and len(kube.pods) == 2
    assert kube.patches[0]["runtime"]["isDefault"] is True


def test_the_controller_creates_nothing_for_a_missing_runtime() -> None:
    kube = RuntimeKube({})
    run_once(kube, manifest(runtimeRef={"name": "nope"}))
    assert [what for verb, what, _, _ in kube.calls if verb == "create"] == []
    assert kube.patches[0]["reason"] == RUNTIME_NOT_FOUND and REF_FIELD in kube.patches[0]["message"]
    assert [what for verb, what, _, _ in kube.calls if verb == "event"] == ["Accepted", RUNTIME_NOT_FOUND]


def test_a_job_without_a_runtime_costs_no_get() -> None:
    kube = RuntimeKube({"h100": RUNTIME})
    run_once(kube, manifest())
    assert [verb for verb, _, _, _ in kube.calls if verb == "get"] == [] and len(kube.pods) == 2


def test_the_status_schema_keeps_every_field_of_the_applied_runtime() -> None:
    """The API server prunes what the schema lacks: every AppliedRuntime field must be in the CRD."""
    runtime = crd_module.status_schema()["properties"]["runtime"]
    wanted = {info.serialization_alias or name for name, info in AppliedRuntime.model_fields.items()}
    assert set(runtime["properties"]) == wanted


def test_kubectl_sft_status_names_the_runtime() -> None:
    raw = manifest(runtimeRef={"name": "h100"})
    raw["status"] = {"phase": "Running", "runtime": {"name": "h100", "resourceVersion": "4711", "attempt": 2}}
    text = format_status(raw)
    assert "Runtime:      h100 (resourceVersion 4711, spec.runtimeRef, attempt 2)" in text
    assert "Runtime:" not in format_status(manifest())


class ForbiddenKube(RuntimeKube):
    """A chart older than the operator: no `get` on clustersftruntimes."""

    def get_runtime(self, name: str) -> dict[str, Any] | None:
        raise ApiException(status=403, reason="Forbidden")


def test_a_runtime_the_operator_may_not_read_holds_the_job_and_says_why() -> None:
    kube = ForbiddenKube({})
    run_once(kube, manifest(runtimeRef={"name": "h100"}))
    assert [what for verb, what, _, _ in kube.calls if verb == "create"] == []
    assert kube.patches[0]["reason"] == "RuntimeForbidden"
    assert "lacks get on clustersftruntimes" in kube.patches[0]["message"]
    (held,) = [item for item in kube.patches[0]["conditions"] if item["type"] == "RuntimeApplied"]
    assert held["status"] == "False"


def test_a_spec_that_drops_its_runtime_clears_the_record_at_the_next_attempt() -> None:
    first = decide(manifest(runtimeRef={"name": "h100"}), resolve(Choice("h100", default=False), RUNTIME))
    status = first.status.model_copy(update={"phase": "Restarting", "next_attempt_time": NOW, "reason": "SpecChanged"})
    plan = decide({**manifest(), "status": status.wire()}, NO_RUNTIME)
    assert plan.create_pods and plan.status.attempt == 1 and plan.status.runtime is None
    assert "RuntimeApplied" not in [item.type for item in plan.status.conditions]


def test_the_operator_flag_and_its_environment_variable() -> None:
    assert parse_args(["--default-runtime", "h100"], environ={}).default_runtime == "h100"
    assert parse_args([], environ={"KUBE_SFT_DEFAULT_RUNTIME": "platform"}).default_runtime == "platform"
    assert parse_args([], environ={}).default_runtime is None


def test_the_runtime_crd_is_generated_into_crds_and_the_chart_and_kept_fresh() -> None:
    directories = crd_module.OUTPUTS["clustersftruntime.yaml"]
    assert {directory.name for directory in directories} == {"crds"} and len(directories) == 2
    for directory in directories:
        path = directory / "clustersftruntime.yaml"
        assert path not in crd_module.stale_files()
        assert yaml.safe_load(path.read_text())["metadata"]["name"] == "clustersftruntimes.sft.kube-sft.io"
