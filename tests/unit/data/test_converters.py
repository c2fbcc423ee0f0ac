"""Dolly and OpenAssistant converters (Dolly rows written here; OASST from ../shared/data)."""

import gzip
import json
import random
from pathlib import Path
from typing import Any

import pytest

from sft_trainer.data.converters import SYSTEM_PROMPT, convert_dolly, convert_dolly_row, convert_oasst, encode_labels
from sft_trainer.data.errors import BadRows, DataError
from tests.shared_data import shared

DOLLY = [
    {
        "instruction": "When did Virgin Australia start?",
        "context": "Virgin Australia commenced services on 31 August 2000.",
        "response": "31 August 2000",
        "category": "closed_qa",
    },
    {"instruction": "Name a primary colour.", "context": "", "response": "Red.", "category": "open_qa"},
    {"instruction": "Translate «thé» 🫖", "context": "Ünïcödé " * 2000, "response": "tea", "category": "brainstorming"},
]


def test_dolly_joins_instruction_and_context_in_seeded_order() -> None:
    orders = set()
    for seed in range(20):
        out = convert_dolly_row(DOLLY[0], random.Random(seed))
        assert out["output"] == "31 August 2000" and out["category"] == "closed_qa"
        parts = out["input"].split("\n\n")
        assert sorted(parts) == sorted([DOLLY[0]["instruction"], DOLLY[0]["context"]])
        orders.add(parts[0] == DOLLY[0]["instruction"])
    assert orders == {True, False}
    assert convert_dolly_row(DOLLY[1], random.Random(0))["input"] == "Name a primary colour."


def test_dolly_file_unicode_long_context_and_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "dolly.jsonl"
    rows = [*DOLLY, {"instruction": "x", "context": ""}]  # the last has no response
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        list(convert_dolly(str(path)))
    assert (caught.value.line, caught.value.field) == (4, "response")
    bad = BadRows()
    out = list(convert_dolly(str(path), seed=1, bad_rows=bad))
    assert len(out) == 3 and bad.count == 1
    assert "🫖" in out[2]["input"] and len(out[2]["input"]) > 16000
    assert list(convert_dolly(str(path), seed=1, bad_rows=BadRows())) == out  # seeded


@pytest.mark.parametrize("name", ["oasst_en_100_trees.jsonl", "oasst_en_100_messages.jsonl"])
def test_oasst_tree_and_nested_layouts(name: str) -> None:
    groups, counts = convert_oasst(str(shared(f"chat/{name}")))
    records = groups["all"]
    assert counts.trees == 100 and counts.threads == len(records) == 626
    for record in records:
        assert record["system"] == SYSTEM_PROMPT and record["mask"] == "User" and record["type"] == "VALUE_TO_TEXT"
        turns = record["conversations"]
        assert len(turns) >= 2 and turns[0]["from"] == "User"
        assert all(t["label"] is None for t in turns if t["from"] == "User")


def test_oasst_split_by_tree_is_seeded_and_disjoint() -> None:
    path = str(shared("chat/oasst_en_100_trees.jsonl"))
    groups, counts = convert_oasst(path, split=0.95, seed=10)
    train = {r["tree_id"] for r in groups["train"]}
    validation = {r["tree_id"] for r in groups["validation"]}
    assert len(train) == 95 and len(validation) == 5 and not train & validation
    again, _ = convert_oasst(path, split=0.95, seed=10)
    assert again == groups
    assert counts.by_split == {"train": len(groups["train"]), "validation": len(groups["validation"])}


def _flat_rows() -> list[dict[str, Any]]:
    labels = {"name": ["quality", "toxicity", "spam"], "value": [0.75, 0.0, 0.1], "count": [3, 3, 3]}
    return [
        {
            "message_id": "r",
            "parent_id": None,
            "message_tree_id": "t",
            "role": "prompter",
            "text": "Hi",
            "deleted": False,
        },
        {
            "message_id": "a1",
            "parent_id": "r",
            "message_tree_id": "t",
            "role": "assistant",
            "text": "Hello",
            "labels": labels,
            "rank": 1,
            "deleted": False,
        },
        {
            "message_id": "a2",
            "parent_id": "r",
            "message_tree_id": "t",
            "role": "assistant",
            "text": "Hey",
            "labels": None,
            "rank": 0,
            "deleted": True,
        },
        {
            "message_id": "u2",
            "parent_id": "a1",
            "message_tree_id": "t",
            "role": "prompter",
            "text": "Thanks",
            "deleted": False,
        },
        {
            "message_id": "x",
            "parent_id": "missing",
            "message_tree_id": "t2",
            "role": "assistant",
            "text": "Orphan",
            "deleted": False,
        },
        {
            "message_id": "y",
            "parent_id": "x",
            "message_tree_id": "t2",
            "role": "prompter",
            "text": "Orphan child",
            "deleted": False,
        },
        {
            "message_id": "solo",
            "parent_id": None,
            "message_tree_id": "t3",
            "role": "prompter",
            "text": "Alone",
            "deleted": False,
        },
    ]


def test_oasst_flat_table_gzipped_with_orphans_and_deleted(tmp_path: Path) -> None:
    path = tmp_path / "oasst_flat.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in _flat_rows()).encode()))
    groups, counts = convert_oasst(str(path))
    assert counts.orphans == 2 and counts.short_threads == 1 and counts.deleted == 0
    threads = [[t["value"] for t in r["conversations"]] for r in groups["all"]]
    assert threads == [["Hi", "Hey"], ["Hi", "Hello", "Thanks"]]  # replies in rank order
    assert groups["all"][1]["conversations"][1]["label"] == "quality:3,toxicity:0"
    groups, counts = convert_oasst(str(path), drop_deleted=True)
    assert counts.deleted == 1
    assert [[t["value"] for t in r["conversations"]] for r in groups["all"]] == [["Hi", "Hello", "Thanks"]]


def test_label_encoding_on_the_seed_scale() -> None:
    assert (
        encode_labels({"quality": {"value": 1.0}, "humor": {"value": 0.33}, "spam": {"value": 1}})
        == "quality:4,humor:1"
    )
    assert encode_labels(None) is None and encode_labels({}) is None
