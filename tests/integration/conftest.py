"""Integration tests run against the real control plane (tests/cluster)."""

from tests.cluster.fixtures import kube_cluster, namespace, node_agent, project_images, prometheus

__all__ = ["kube_cluster", "namespace", "node_agent", "project_images", "prometheus"]
