"""Errors that point at the bad input: file, line and field."""

from dataclasses import dataclass, field


class DataError(ValueError):
    """Input data that cannot be used, located as precisely as we know: `file:line: field: message`."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None, field: str | None = None):
        self.file = file
        self.line = line
        self.field = field
        self.message = message
        super().__init__(format_location(file, line, field) + message)


def format_location(file: str | None, line: int | None, field: str | None) -> str:
    """`file:line: field: ` with whatever parts are known."""
    where = ""
    if file is not None:
        where = f"{file}:{line}: " if line is not None else f"{file}: "
    elif line is not None:
        where = f"line {line}: "
    if field is not None:
        where += f"field {field!r}: "
    return where


@dataclass
class BadRows:
    """Counts rows skipped with `skip_bad_rows`, and keeps the first few reasons for the summary."""

    count: int = 0
    examples: list[str] = field(default_factory=list)
    keep: int = 5

    def add(self, error: DataError) -> None:
        """Record one skipped row."""
        self.count += 1
        if len(self.examples) < self.keep:
            self.examples.append(str(error))
