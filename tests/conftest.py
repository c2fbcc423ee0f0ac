"""Session-wide ordering of the test suite."""

import pytest

RUN_LAST = ("tests/integration/operator/test_gang_integrity.py",)
"""Fault tests that stop and restart the session's shared kube-apiserver and etcd (the soak): the
control plane's controllers can lag for minutes afterwards, so no other cluster test runs after them."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move the RUN_LAST modules to the end of the session (a stable sort keeps every other order)."""
    items.sort(key=lambda item: item.nodeid.startswith(RUN_LAST))
