"""Read and write JSONL (optionally gzipped) with errors that name the file and line.

Writers are atomic: they write a temporary file beside the target and rename it into place, so a
reader never sees half a file.
"""

import gzip
import json
import os
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from sft_trainer.data.errors import BadRows, DataError

Row = dict[str, Any]


def _open_binary(path: Path) -> IO[bytes] | gzip.GzipFile:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return path.open("rb")


def read_jsonl(path: str | Path, bad_rows: BadRows | None = None) -> Iterator[tuple[int, Row]]:
    """Yield `(line_number, row)` for each non-blank line of a JSONL file (`.gz` is decompressed).

    A line that is not UTF-8, not JSON or not a JSON object raises DataError naming file:line, or,
    when `bad_rows` is given, is counted there and skipped. A file without any row, a missing file
    and a truncated or corrupt gzip stream always raise: no row-level skipping can repair them.
    """
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise DataError("no such file", file=name)
    line_number = 0
    rows = 0
    try:
        with _open_binary(path) as handle:
            for line_number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    row = parse_line(raw, name, line_number)
                except DataError as error:
                    if bad_rows is None:
                        raise
                    bad_rows.add(error)
                    continue
                rows += 1
                yield line_number, row
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise DataError(f"corrupt or truncated gzip stream after line {line_number} ({error})", file=name) from None
    if rows == 0 and (bad_rows is None or bad_rows.count == 0):
        raise DataError("the file has no rows (empty)", file=name)


def parse_line(raw: bytes, file: str, line: int) -> Row:
    """Decode one JSONL line into a JSON object, or raise DataError naming file:line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"not valid UTF-8 (byte {error.start}: {raw[error.start : error.start + 1]!r})", file=file, line=line
        ) from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"malformed JSON: {error.msg} at column {error.colno}", file=file, line=line) from None
    if not isinstance(value, dict):
        raise DataError(f"expected a JSON object, got {type(value).__name__}", file=file, line=line)
    return value


def require_str(row: Row, key: str, file: str, line: int, *, allow_empty: bool = True) -> str:
    """`row[key]` as a string, or DataError naming file:line:field when missing or not a string."""
    if key not in row:
        raise DataError("missing field", file=file, line=line, field=key)
    value = row[key]
    if not isinstance(value, str):
        raise DataError(f"expected a string, got {type(value).__name__}", file=file, line=line, field=key)
    if not allow_empty and not value:
        raise DataError("empty string", file=file, line=line, field=key)
    return value


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, on error removed.

    The file gets the permissions a plain `open()` would give (0666 less the umask), not mkstemp's
    0600: data converted by one user is read by trainer pods running as another (uid 1000).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    try:
        yield Path(temporary)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | Path, rows: Iterable[Row]) -> int:
    """Write rows as JSONL (gzipped when the name ends in .gz), atomically; returns the row count."""
    count = 0
    with atomic_path(path) as temporary:
        opener = gzip.open if Path(path).suffix == ".gz" else open
        with opener(temporary, "wt", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
    return count
