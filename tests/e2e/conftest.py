"""End-to-end tests run against the real control plane (tests/cluster)."""

from tests.cluster.fixtures import kube_cluster, namespace, node_agent, prometheus

__all__ = ["kube_cluster", "namespace", "node_agent", "prometheus"]
