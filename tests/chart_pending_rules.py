"""Rules the operator's code needs that the chart's ClusterRole is still to gain (issue 16 work).

The operator keeps its lifecycle record in an annotation of the SFTJob (`patch` on sftjobs) and reads
back a child that a create found existing, to check its owner (`get` on Services, ConfigMaps,
ServiceAccounts, Roles, RoleBindings). Until the chart grants them, the tests bind them to the
operator's ServiceAccount beside the chart. Delete this module (and its two callers) once
tests/unit/operator/test_operator_rbac.py passes.
"""

import kubernetes
from kubernetes.client import ApiException

from tests.cluster.controlplane import ControlPlane

PENDING_CHART_RULES = [
    {"apiGroups": ["sft.kube-sft.io"], "resources": ["sftjobs"], "verbs": ["patch"]},
    {"apiGroups": [""], "resources": ["services", "configmaps", "serviceaccounts"], "verbs": ["get"]},
    {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": ["get"]},
]
"""The rules, as a ClusterRole's `rules`."""


def grant_pending_chart_rules(cluster: ControlPlane, namespace: str, service_account: str) -> None:
    """Bind PENDING_CHART_RULES to the operator's ServiceAccount (a no-op when the chart has them)."""
    rbac = kubernetes.client.RbacAuthorizationV1Api(cluster.client)
    name = f"{namespace}-{service_account}-pending-rules"
    binding = {
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}],
    }
    for create, body in (
        (rbac.create_cluster_role, {"metadata": {"name": name}, "rules": PENDING_CHART_RULES}),
        (rbac.create_cluster_role_binding, binding),
    ):
        try:
            create(body)
        except ApiException as error:
            if error.status != 409:  # granted already (a second install in one session)
                raise
