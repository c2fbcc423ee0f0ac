"""`sft eval`'s pure parts: answer extraction and scores on real GSM8K answers, held-out requests in every
format, and the evaluation's way into the SFTJob status."""

import json
from itertools import islice
from pathlib import Path

import pytest

from sft_operator.api.models import SFTJobStatus
from sft_trainer.config import DataConfig, EvaluationConfig
from sft_trainer.data.chat_context import ChatTurn
from sft_trainer.data.errors import DataError
from sft_trainer.evaluate import extract_answer, request_for, score, status_metrics
from sft_trainer.report import RunSummary
from sft_trainer.report.kubernetes import StatusPatches

GSM8K = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "instruct" / "gsm8k_train.jsonl"
FINAL = r"####\s*(.+)"


def gsm8k_rows(count: int) -> list[dict[str, str]]:
    if not GSM8K.is_file():
        pytest.fail(f"required shared data file is missing: {GSM8K}")
    with GSM8K.open() as handle:
        return [json.loads(line) for line in islice(handle, count)]


def test_exact_match_on_gsm8k_answers_compares_the_final_numbers() -> None:
    rows = gsm8k_rows(20)
    references = [row["answer"] for row in rows]
    finals = [extract_answer(reference, FINAL) for reference in references]
    assert finals[:2] == ["72", "10"]
    right = [f"Some other working.\n#### {final}" for final in finals]
    wrong = [f"#### {int(str(final).replace(',', '')) + 1}" for final in finals]
    assert score(right, references, FINAL, None) == {"exact_match": 1.0, "contains": 1.0}
    assert score(wrong, references, FINAL, None)["exact_match"] == 0.0
    half = right[:10] + ["no answer at all"] * 10
    assert score(half, references, FINAL, r"####")["exact_match"] == 0.5
    assert score(half, references, FINAL, r"####")["regex_match"] == 0.5
    # without extraction the whole reference must be reproduced
    assert score(references, references, None, None)["exact_match"] == 1.0
    assert score(right, references, None, None)["exact_match"] == 0.0


def test_requests_take_the_last_answer_of_every_format() -> None:
    gsm = DataConfig(train_file="x", prompt_template="Q: {question}\nA: {answer}", label_key="answer")
    row = gsm8k_rows(1)[0]
    request = request_for(row, gsm, "f", 1)
    assert (request.user_text, request.reference) == (row["question"], row["answer"])
    nemo = DataConfig(train_file="x", format="nemo_chat")
    conversation = {
        "system": "S",
        "mask": "User",
        "type": "VALUE_TO_TEXT",
        "conversations": [
            {"from": "User", "value": "a", "label": None},
            {"from": "Assistant", "value": "b", "label": "q:1"},
            {"from": "User", "value": "c", "label": None},
            {"from": "Assistant", "value": "d", "label": "q:2"},
        ],
    }
    request = request_for(conversation, nemo, "f", 1)
    assert (request.user_text, request.reference, request.system, request.label) == ("c", "d", "S", "q:2")
    assert request.history == (ChatTurn("user", "a"), ChatTurn("assistant", "b", "q:1"))
    hf = DataConfig(train_file="x", format="hf_chat")
    messages = {
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "v"},
        ]
    }
    request = request_for(messages, hf, "f", 2)
    assert (request.user_text, request.reference, request.system, request.history) == ("u", "v", "S", ())
    with pytest.raises(DataError, match="f:3"):
        request_for({"messages": [{"role": "user", "content": "u"}]}, hf, "f", 3)


def test_evaluation_results_reach_the_status_metrics() -> None:
    result = {"val_loss": 1.25, "perplexity": 3.49, "generation": {"exact_match": 0.5, "contains": 0.75}}
    metrics = status_metrics(result)
    assert metrics == {"eval_loss": 1.25, "eval_perplexity": 3.49, "eval_exact_match": 0.5, "eval_contains": 0.75}
    summary = RunSummary("succeeded", 10, 10, 0, "training complete", last_loss=1.0, eval_metrics=metrics)
    patch = StatusPatches().finish(summary)
    assert patch["metrics"]["evalLoss"] == 1.25 and patch["metrics"]["evalExactMatch"] == 0.5
    status = SFTJobStatus.model_validate(patch)  # the CRD's status schema keeps them
    assert status.metrics is not None and status.metrics.eval_exact_match == 0.5


def test_the_evaluation_block_validates_its_regexes() -> None:
    assert EvaluationConfig(answer_regex=FINAL).answer_regex == FINAL
    with pytest.raises(ValueError):
        EvaluationConfig(match_regex="(")
