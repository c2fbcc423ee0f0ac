"""Every Kubernetes API call the operator makes, in one place.

Kept small and explicit on purpose: the chart's ClusterRole is checked against the calls made here
(tests/unit/operator/test_operator_rbac.py derives verb + resource from the method names).
"""

import logging
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from sft_operator.api import API_VERSION, GROUP, KIND, PLURAL, VERSION
from sft_operator.render import LABEL_JOB
from sft_operator.status import Event

log = logging.getLogger(__name__)
Object = dict[str, Any]
PEERING_GROUP, PEERING_VERSION = "kopf.dev", "v1"
REPORTING_COMPONENT = "kube-sft-operator"


class Kube:
    """Thin, typed wrapper over the kubernetes client for the objects the operator touches."""

    def __init__(self, api: client.ApiClient, instance: str = "kube-sft-operator") -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.rbac = client.RbacAuthorizationV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.instance = instance

    # --- SFTJobs ------------------------------------------------------------------------------

    def get_job(self, namespace: str, name: str) -> Object | None:
        """The SFTJob, or None when it is gone."""
        try:
            job: Object = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return job

    def list_jobs(self, namespaces: list[str]) -> list[Object]:
        """SFTJobs in the watched namespaces (all namespaces when the list is empty)."""
        if not namespaces:
            return list(self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"])
        items: list[Object] = []
        for namespace in namespaces:
            items += self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
        return items

    def patch_job_status(self, namespace: str, name: str, status: Object) -> None:
        """Merge-patch the status subresource (only the keys given)."""
        self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, {"status": status})

    def delete_job(self, namespace: str, name: str, uid: str) -> None:
        """Delete the SFTJob (children follow by garbage collection); gone already is fine."""
        options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid), propagation_policy="Background")
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, body=options)
        except ApiException as error:
            if error.status not in (404, 409):
                raise

    # --- children -----------------------------------------------------------------------------

    def list_pods(self, namespace: str, job_name: str) -> list[Object]:
        """The job's pods as camelCase JSON."""
        pods = self.core.list_namespaced_pod(namespace, label_selector=f"{LABEL_JOB}={job_name}")
        return [self.api.sanitize_for_serialization(pod) for pod in pods.items]

    def create(self, obj: Object) -> bool:
        """Create a child; False when it exists already (409 is success: names are deterministic)."""
        namespace = obj["metadata"]["namespace"]
        creators = {
            "Pod": self.core.create_namespaced_pod,
            "Service": self.core.create_namespaced_service,
            "ConfigMap": self.core.create_namespaced_config_map,
            "ServiceAccount": self.core.create_namespaced_service_account,
            "Role": self.rbac.create_namespaced_role,
            "RoleBinding": self.rbac.create_namespaced_role_binding,
        }
        try:
            creators[obj["kind"]](namespace, obj)
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        return True

    def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        """Delete exactly this pod (the uid guards a same-named successor); gone already is fine."""
        options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid))
        try:
            self.core.delete_namespaced_pod(name, namespace, body=options)
        except ApiException as error:
            if error.status not in (404, 409):
                raise

    # --- events and peering -----------------------------------------------------------------------

    def record_event(self, job: Object, event: Event) -> None:
        """A core/v1 Event on the SFTJob, for `kubectl describe`."""
        meta = job["metadata"]
        now = datetime.now(UTC)
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=meta["namespace"]),
            involved_object=client.V1ObjectReference(
                api_version=API_VERSION,
                kind=KIND,
                name=meta["name"],
                namespace=meta["namespace"],
                uid=meta.get("uid"),
                resource_version=meta.get("resourceVersion"),
            ),
            reason=event.reason,
            message=event.message[:1024],
            type=event.type,
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=client.V1EventSource(component=REPORTING_COMPONENT),
            reporting_component=REPORTING_COMPONENT,
            reporting_instance=self.instance,
        )
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except ApiException as error:
            log.warning("cannot record event %s on %s: %s", event.reason, meta["name"], error.reason)

    def peering_status(self, name: str, namespace: str | None) -> Object | None:
        """kopf's peering record (which operator replicas are alive, with their priorities)."""
        try:
            if namespace is None:
                body = self.custom.get_cluster_custom_object(
                    PEERING_GROUP, PEERING_VERSION, "clusterkopfpeerings", name
                )
            else:
                body = self.custom.get_namespaced_custom_object(
                    PEERING_GROUP, PEERING_VERSION, namespace, "kopfpeerings", name
                )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        status: Object = body.get("status") or {}
        return status
