"""SFTJob models: defaults, cross-field rules, and the CRD generated from them."""

from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from sft_operator.api import SFTJob, SFTJobStatus
from sft_operator.api import crd as crd_module
from tests.builders import API_VERSION, manifest


def test_resources_fill_the_trainer_node_and_process_counts(job: SFTJob) -> None:
    assert job.spec.training.trainer.num_nodes == 2
    assert job.spec.training.trainer.devices == 2
    assert job.spec.resources.world_size == 4


def test_contradicting_num_nodes_is_refused() -> None:
    bad = manifest()
    bad["spec"]["training"]["trainer"]["num_nodes"] = 3
    with pytest.raises(ValidationError, match=r"num_nodes: 3 contradicts resources"):
        SFTJob.model_validate(bad)


def test_parallelism_must_divide_the_world_size() -> None:
    bad = manifest()
    bad["spec"]["training"]["parallelism"] = {"tensor_model_parallel_size": 3}
    with pytest.raises(ValidationError, match=r"TP x PP x CP = 3 does not divide the 4 processes"):
        SFTJob.model_validate(bad)


def test_global_batch_must_divide() -> None:
    bad = manifest()
    bad["spec"]["training"]["trainer"]["global_batch_size"] = 6
    with pytest.raises(ValidationError, match="global_batch_size: 6 is not divisible"):
        SFTJob.model_validate(bad)


def test_inline_unknown_keys_and_two_volume_sources_are_refused() -> None:
    with pytest.raises(ValidationError):
        SFTJob.model_validate(manifest(resources={"numNodes": 1, "gpus": 1}))
    two = {"mountPath": "/m", "hostPath": {"path": "/x"}, "emptyDir": {}}
    with pytest.raises(ValidationError, match="at most one of"):
        SFTJob.model_validate(manifest(storage={"model": two}))


def test_cpu_job_runs_one_process_per_node() -> None:
    job = SFTJob.model_validate(manifest(resources={"numNodes": 2, "gpusPerNode": 0}))
    assert job.spec.resources.nproc_per_node == 1
    assert job.spec.training.trainer.devices == 1


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.items():
            found += _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _walk(value, f"{path}[{index}]")
    return found


def test_crd_schema_is_structural_and_bounded() -> None:
    schema = crd_module.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert ("$ref" not in node and "$defs" not in node and "anyOf" not in node) or node.get(
            "x-kubernetes-int-or-string"
        ), path
        assert node.get("additionalProperties") is not False, path
        assert not ("properties" in node and "additionalProperties" in node), path
        if node.get("type") == "string" and "anyOf" not in path and not path.endswith(("apiVersion", "kind")):
            assert "maxLength" in node, path
        if node.get("type") == "array":
            assert "maxItems" in node, path
        if "properties" in node and path.count("properties") > 0:
            assert node.get("type") == "object", path


def test_crd_names_columns_and_status_subresource() -> None:
    spec = crd_module.crd()["spec"]
    version = spec["versions"][0]
    assert spec["names"]["shortNames"] == ["sftj"]
    assert version["subresources"] == {"status": {}}
    columns = [column["name"].upper() for column in version["additionalPrinterColumns"] if "priority" not in column]
    assert columns == ["PHASE", "NODES", "GPUS", "STEP", "PROGRESS", "LOSS", "VAL-LOSS", "RESTARTS", "AGE"]
    wide = [column["name"].upper() for column in version["additionalPrinterColumns"] if column.get("priority") == 1]
    assert wide == ["ETA", "CHECKPOINT", "QUEUE", "MODEL", "RUNTIME"]


def test_the_tests_write_the_served_api_version() -> None:
    # tests/builders.py writes the public API version out; it is the one the CRD serves.
    spec = crd_module.crd()["spec"]
    assert f"{spec['group']}/{spec['versions'][0]['name']}" == API_VERSION


def test_printer_columns_point_at_real_fields(job: SFTJob) -> None:
    status_fields = SFTJobStatus.model_json_schema(by_alias=True)
    text = str(status_fields)
    for column in crd_module.PRINTER_COLUMNS:
        leaf = column["jsonPath"].rsplit(".", 1)[-1]
        assert leaf in text or column["jsonPath"].startswith((".spec", ".metadata")), column


def test_immutable_fields_carry_transition_rules() -> None:
    spec = crd_module.spec_schema()
    for name in crd_module.IMMUTABLE_FIELDS:
        rules = [rule["rule"] for rule in spec["properties"][name]["x-kubernetes-validations"]]
        assert "self == oldSelf" in rules
    assert "self == oldSelf" not in str(spec["properties"]["runPolicy"])


def test_trainer_counts_have_no_schema_default() -> None:
    trainer = crd_module.spec_schema()["properties"]["training"]["properties"]["trainer"]["properties"]
    assert "default" not in trainer["num_nodes"] and "default" not in trainer["devices"]
    assert trainer["save_interval"]["default"] == 100
    assert "bf16-mixed" in trainer["precision"]["enum"]


def test_checked_in_crds_are_fresh() -> None:
    stale = crd_module.stale_files()
    assert not stale, f"run `make crds`: stale {stale}"


def test_checked_in_crd_parses_as_yaml() -> None:
    for directory in crd_module.OUTPUTS["sftjob.yaml"]:
        document = yaml.safe_load((directory / "sftjob.yaml").read_text())
        assert document["metadata"]["name"] == "sftjobs.sft.kube-sft.io"


def test_api_reference_doc_is_fresh() -> None:
    from sft_operator.api import reference

    assert reference.OUTPUT.read_text(encoding="utf-8") == reference.reference(), (
        "run `python -m sft_operator.api.reference --write`"
    )
