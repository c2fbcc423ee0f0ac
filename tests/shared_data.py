"""The real files of ../shared/data that tests read in place (never copied into the repository).

A missing file FAILS the test, never skips it: CI must check out ../shared beside the repository.
"""

from pathlib import Path

import pytest

SHARED_DATA = (Path(__file__).resolve().parents[1].parent / "shared" / "data").resolve()


def require(*paths: Path) -> None:
    """Fail (never skip) when a file of ../shared/data a test reads is missing."""
    for path in paths:
        if not path.exists():
            pytest.fail(
                f"required shared data file is missing: {path} (CI must check out ../shared beside the repo)",
                pytrace=False,
            )


def shared(relative: str) -> Path:
    """The file `relative` of ../shared/data (an absolute path: pods mount it as a hostPath); fails when missing."""
    path = SHARED_DATA / relative
    require(path)
    return path
