"""End-to-end tests run against the real control plane and a real node (tests/cluster).

The real node lives for this package only: the integration tests that run after it in the same
session use the node agent, and pods of one must never be scheduled onto the other.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.controlplane import ControlPlane
from tests.cluster.fixtures import kube_cluster, namespace, project_images, prometheus, running_real_node
from tests.cluster.real_node import RealNode

__all__ = ["kube_cluster", "namespace", "project_images", "prometheus", "real_node"]


@pytest.fixture(scope="package")
def real_node(
    request: pytest.FixtureRequest, kube_cluster: ControlPlane, project_images: dict[str, Path]
) -> Iterator[RealNode]:
    """The e2e scenarios' real node (kubelet + containerd) with the operator and CPU trainer images."""
    with running_real_node(request.config, kube_cluster, project_images) as node:
        yield node
