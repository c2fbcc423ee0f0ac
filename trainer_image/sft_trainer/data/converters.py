"""Converters from public datasets to the two training formats (the seed's preprocessing scripts).

- Dolly (`instruction`, `context`, `response`, `category`) -> prompt-response `input`/`output`.
- OpenAssistant -> NeMo chat conversations, from the tree export (one tree a line, `prompt` with
  nested `replies`), the nested-message file (one root message a line) or the flat message table
  (`message_id`/`parent_id`, the Hugging Face `oasst1` layout), plain or gzipped.
"""

import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sft_trainer.data.errors import BadRows, DataError
from sft_trainer.data.jsonl import Row, read_jsonl, require_str

# The seed's label keys, in its order, and its 0-4 scale.
LABEL_KEYS = (
    "quality",
    "toxicity",
    "humor",
    "creativity",
    "violence",
    "helpfulness",
    "not_appropriate",
    "hate_speech",
    "sexual_content",
    "fails_task",
    "political_content",
    "moral_judgement",
)
LIKERT_MAX = 4
SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.\n\n"
)
ROLE_NAMES = {"prompter": "User", "assistant": "Assistant"}


def convert_dolly_row(row: Row, rng: random.Random, file: str = "<row>", line: int = 0) -> Row:
    """One Dolly row -> `{"input", "output", "category"}`; context and instruction in seeded random order."""
    instruction = require_str(row, "instruction", file, line)
    context = row.get("context") or ""
    if not isinstance(context, str):
        raise DataError(f"expected a string, got {type(context).__name__}", file=file, line=line, field="context")
    response = require_str(row, "response", file, line)
    if context.strip():
        parts = [instruction, context]
        rng.shuffle(parts)
        text = "\n\n".join(parts)
    else:
        text = instruction
    out: Row = {"input": text, "output": response}
    if "category" in row:
        out["category"] = row["category"]
    return out


def convert_dolly(path: str, seed: int = 0, bad_rows: BadRows | None = None) -> Iterator[Row]:
    """Convert every row of a Dolly JSONL file."""
    rng = random.Random(seed)
    for line, row in read_jsonl(path, bad_rows):
        try:
            yield convert_dolly_row(row, rng, path, line)
        except DataError as error:
            if bad_rows is None:
                raise
            bad_rows.add(error)


@dataclass
class OasstCounts:
    """What the OASST converter did, printed as its summary."""

    trees: int = 0
    messages: int = 0
    orphans: int = 0  # messages whose parent is not in the file (with their replies)
    deleted: int = 0  # deleted messages dropped with --drop-deleted (with their replies)
    threads: int = 0  # conversations written (root-to-leaf paths with at least two turns)
    short_threads: int = 0  # root-to-leaf paths with a single turn, skipped
    by_split: dict[str, int] = field(default_factory=dict)


def encode_labels(labels: Any) -> str | None:
    """OASST labels (tree `{"name": {"value": v}}` or flat `{"name": [...], "value": [...]}`) -> `quality:4,...`."""
    if not labels:
        return None
    if isinstance(labels, dict) and isinstance(labels.get("name"), list):
        values = dict(zip(labels["name"], labels.get("value", []), strict=False))
    elif isinstance(labels, dict):
        values = {k: v["value"] for k, v in labels.items() if isinstance(v, dict) and "value" in v}
    else:
        return None
    items = [f"{key}:{round(float(values[key]) * LIKERT_MAX)}" for key in LABEL_KEYS if key in values]
    return ",".join(items) or None


def _turn(message: Row) -> Row:
    role = ROLE_NAMES.get(message.get("role", ""))
    if role is None:
        raise DataError(f"unknown role {message.get('role')!r}", field="role")
    label = encode_labels(message.get("labels")) if role == "Assistant" else None
    return {"from": role, "value": message.get("text", ""), "label": label}


def threads(root: Row, drop_deleted: bool, counts: OasstCounts) -> list[list[Row]]:
    """Every root-to-leaf path of a nested message tree, as lists of turns."""
    counts.messages += 1
    if drop_deleted and root.get("deleted"):
        counts.deleted += 1 + _descendants(root)
        return []
    turn = _turn(root)
    below: list[list[Row]] = []
    for reply in root.get("replies") or []:
        below.extend(threads(reply, drop_deleted, counts))
    if not below:
        return [[turn]]
    return [[turn, *rest] for rest in below]


def _descendants(message: Row) -> int:
    return sum(1 + _descendants(reply) for reply in message.get("replies") or [])


def nest_flat_messages(rows: list[tuple[int, Row]], counts: OasstCounts) -> list[Row]:
    """Flat message table -> nested roots (`replies`); messages whose parent is missing are counted and skipped."""
    by_id: dict[str, Row] = {}
    for _, row in rows:
        by_id[row["message_id"]] = {**row, "replies": []}
    children: dict[str, list[Row]] = defaultdict(list)
    roots = []
    for message in by_id.values():
        parent = message.get("parent_id")
        if parent is None:
            roots.append(message)
        else:
            children[parent].append(message)
    for parent, replies in children.items():
        if parent in by_id:
            by_id[parent]["replies"] = sorted(replies, key=lambda m: (m.get("rank") is None, m.get("rank") or 0))
    reachable = 0
    stack = list(roots)
    while stack:
        node = stack.pop()
        reachable += 1
        stack.extend(node["replies"])
    counts.orphans += len(by_id) - reachable
    return roots


def read_oasst_trees(path: str, counts: OasstCounts, bad_rows: BadRows | None = None) -> list[tuple[str, Row]]:
    """`(tree_id, root_message)` of any of the three OASST layouts (detected from the rows)."""
    rows = list(read_jsonl(path, bad_rows))
    flat = all("parent_id" in row and "replies" not in row and "prompt" not in row for _, row in rows)
    if flat:
        for line, row in rows:
            for key in ("message_id", "role"):
                require_str(row, key, path, line)
        roots = nest_flat_messages(rows, counts)
        return [(str(root.get("message_tree_id", root["message_id"])), root) for root in roots]
    trees = []
    for line, row in rows:
        root = row.get("prompt", row)
        if not isinstance(root, dict) or "role" not in root or "text" not in root:
            error = DataError("expected an OASST tree (`prompt`) or message (`role`, `text`)", file=path, line=line)
            if bad_rows is None:
                raise error
            bad_rows.add(error)
            continue
        trees.append((str(row.get("message_tree_id", root.get("message_id", line))), root))
    return trees


def convert_oasst(
    path: str,
    *,
    drop_deleted: bool = False,
    split: float | None = None,
    seed: int = 10,
    mask_role: str = "User",
    conversation_type: str = "VALUE_TO_TEXT",
    bad_rows: BadRows | None = None,
) -> tuple[dict[str, list[Row]], OasstCounts]:
    """Convert an OASST file to NeMo chat conversations, split by tree like the seed (`split` = train share).

    Returns `({"train": [...], "validation": [...]}, counts)`, or `{"all": [...]}` without a split.
    """
    counts = OasstCounts()
    trees = read_oasst_trees(path, counts, bad_rows)
    counts.trees = len(trees)
    groups: dict[str, list[tuple[str, Row]]] = {"all": trees}
    if split is not None:
        if not 0.0 < split <= 1.0:
            raise DataError(f"--split must be in (0, 1], got {split}")
        shuffled = list(trees)
        random.Random(seed).shuffle(shuffled)
        cut = int(len(shuffled) * split)
        groups = {"train": shuffled[:cut], "validation": shuffled[cut:]}
    out: dict[str, list[Row]] = {}
    for name, group in groups.items():
        records = []
        for tree_id, root in group:
            for turns in threads(root, drop_deleted, counts):
                if len(turns) < 2:
                    counts.short_threads += 1
                    continue
                records.append(
                    {
                        "system": SYSTEM_PROMPT,
                        "mask": mask_role,
                        "type": conversation_type,
                        "tree_id": tree_id,
                        "conversations": turns,
                    }
                )
        out[name] = records
        counts.by_split[name] = len(records)
        counts.threads += len(records)
    return out, counts
