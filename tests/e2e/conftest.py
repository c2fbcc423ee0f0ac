"""End-to-end tests run against the real control plane and a real node (devcluster).

The real node lives for this package only: the integration tests that run after it in the same
session use the node agent, and pods of one must never be scheduled onto the other.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest

from devcluster.controlplane import ControlPlane
from devcluster.real_node import RealNode
from tests.cluster_fixtures import kube_cluster, namespace, project_images, prometheus, running_real_node, sftjob_crd

__all__ = ["kube_cluster", "namespace", "project_images", "prometheus", "real_node", "sftjob_crd"]


@pytest.fixture(scope="package")
def real_node(
    request: pytest.FixtureRequest, kube_cluster: ControlPlane, project_images: dict[str, Path]
) -> Iterator[RealNode]:
    """The e2e scenarios' real node (kubelet + containerd) with the operator and CPU trainer images."""
    with running_real_node(request.config, kube_cluster, project_images) as node:
        yield node
