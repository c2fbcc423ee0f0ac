"""Bad input: every problem names file:line (and the field); --skip-bad-rows counts; outputs are atomic."""

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from sft_trainer.data.errors import BadRows, DataError
from sft_trainer.data.jsonl import read_jsonl, write_jsonl


def write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


GOOD = b'{"input": "a", "output": "b"}'


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"input": "a", "output": ', "malformed JSON"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'{"input": "caf\xe9"}', "not valid UTF-8"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path: Path, line: bytes, message: str) -> None:
    path = write(tmp_path / "rows.jsonl", [GOOD, b"", line, GOOD])
    with pytest.raises(DataError, match=message) as caught:
        list(read_jsonl(path))
    assert (caught.value.file, caught.value.line) == (str(path), 3)
    assert str(caught.value).startswith(f"{path}:3: ")


def test_skip_bad_rows_counts_them(tmp_path: Path) -> None:
    path = write(tmp_path / "rows.jsonl", [GOOD, b"{oops", b'"str"', b"\xff\xfe", GOOD])
    bad = BadRows()
    rows = list(read_jsonl(path, bad))
    assert [line for line, _ in rows] == [1, 5]
    assert bad.count == 3 and bad.examples[0].startswith(f"{path}:2: malformed JSON")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"\n  \n")
    with pytest.raises(DataError, match="no rows") as caught:
        list(read_jsonl(path))
    assert caught.value.file == str(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        list(read_jsonl(tmp_path / "nope.jsonl"))


def test_truncated_gzip_is_an_error_even_when_skipping(tmp_path: Path) -> None:
    whole = gzip.compress(b"\n".join([GOOD] * 2000) + b"\n")
    path = tmp_path / "rows.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2])
    for bad in (None, BadRows()):
        with pytest.raises(DataError, match="truncated gzip") as caught:
            list(read_jsonl(path, bad))
        assert caught.value.file == str(path)


def test_gzip_rows_are_read(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl.gz"
    path.write_bytes(gzip.compress(GOOD + b"\n" + GOOD + b"\n"))
    assert len(list(read_jsonl(path))) == 2


def test_write_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    write_jsonl(target, [{"a": 1}])

    def rows() -> Any:
        yield {"a": 2}
        raise RuntimeError("converter died")

    with pytest.raises(RuntimeError):
        write_jsonl(target, rows())
    assert [json.loads(x) for x in target.read_text().splitlines()] == [{"a": 1}]  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]  # no temporary left behind
