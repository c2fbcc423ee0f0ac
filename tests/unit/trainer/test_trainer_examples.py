"""The demo config and its SFTJob manifest stay the same run."""

from pathlib import Path

from sft_trainer.config import load_config

ROOT = Path(__file__).resolve().parents[3]


def test_sftjob_demo_trains_exactly_the_local_demo() -> None:
    local = load_config(ROOT / "examples/local/demo.yaml")
    job = load_config(ROOT / "examples/sftjob-demo.yaml")
    assert job.output_dir == "/output/demo"
    assert job.model_copy(update={"output_dir": local.output_dir}) == local
    assert local.data.synthetic is not None and local.model.source == "random"
