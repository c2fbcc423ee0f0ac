"""Integration tests run against the real control plane (devcluster)."""

from tests.cluster_fixtures import kube_cluster, namespace, node_agent, project_images, prometheus, sftjob_crd

__all__ = ["kube_cluster", "namespace", "node_agent", "project_images", "prometheus", "sftjob_crd"]
