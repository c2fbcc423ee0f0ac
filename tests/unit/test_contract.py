"""The pod contract (`sft_trainer.contract`): what the operator writes is what the trainer reads."""

from pathlib import Path

import pytest
import yaml

from sft_operator import render
from sft_operator.api import SFTJob
from sft_trainer import contract
from sft_trainer.contract import ExitCode, describe_exit_code, exit_code_meaning
from tests.builders import MANIFEST

ROOT = Path(__file__).resolve().parents[2]


def test_the_coordinates_are_those_of_the_installed_crd() -> None:
    crd = yaml.safe_load((ROOT / "crds" / "sftjob.yaml").read_text())
    spec = crd["spec"]
    assert (spec["group"], spec["names"]["kind"], spec["names"]["plural"]) == (
        contract.GROUP,
        contract.KIND,
        contract.PLURAL,
    )
    assert [version["name"] for version in spec["versions"]] == [contract.VERSION]
    assert f"{spec['group']}/{spec['versions'][0]['name']}" == contract.API_VERSION


def test_a_rendered_pod_carries_every_name_the_trainer_reads() -> None:
    job = SFTJob.model_validate(MANIFEST)  # team-a/demo, 2 nodes
    pod = render.pods(job)[1]
    container = pod["spec"]["containers"][0]
    env = {item["name"]: item for item in container["env"]}
    assert env[contract.ENV_JOB_NAME]["value"] == "demo"
    assert env[contract.ENV_JOB_NAMESPACE]["value"] == "team-a"
    assert env[contract.ENV_JOB_ATTEMPT]["value"] == "0"
    assert env[contract.ENV_TERMINATION_MESSAGE_PATH]["value"] == contract.TERMINATION_MESSAGE_PATH
    assert env[contract.ENV_POD_IP]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env[contract.ENV_POD_NAME]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert container["name"] == contract.TRAINER_CONTAINER
    assert container["terminationMessagePath"] == contract.TERMINATION_MESSAGE_PATH
    labels = pod["metadata"]["labels"]
    assert (labels[contract.LABEL_JOB], labels[contract.LABEL_RANK], labels[contract.LABEL_ATTEMPT]) == (
        "demo",
        "1",
        "0",
    )


@pytest.mark.parametrize(
    ("code", "described"),
    [(70, "70 (DISTRIBUTED_TIMEOUT)"), (137, "137 (signal 9)"), (42, "42"), (None, "none"), (0, "0 (OK)")],
)
def test_an_exit_code_is_described_by_its_name(code: int | None, described: str) -> None:
    assert describe_exit_code(code) == described


def test_every_permanent_code_is_below_the_transient_range_and_says_so() -> None:
    for code in contract.PERMANENT_EXIT_CODES:
        assert code < contract.TRANSIENT_MIN
        assert exit_code_meaning(code).endswith("(permanent)")
    assert exit_code_meaning(ExitCode.DISTRIBUTED_TIMEOUT).endswith("(retried)")
    assert exit_code_meaning(None) == ""
