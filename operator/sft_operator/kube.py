"""Every Kubernetes API call the operator makes, in one place.

Kept small and explicit on purpose: the chart's ClusterRole is checked against the calls made here
(tests/unit/operator/test_operator_rbac.py derives verb + resource from the method names).

Every call sends and receives plain JSON (`_preload_content=False`): turning responses into the
client's model objects (`V1Pod`, ...) and back was the operator's largest CPU cost at scale.
"""

import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from sft_operator.api import API_VERSION, GROUP, KIND, PLURAL, VERSION
from sft_operator.api.runtime import RUNTIME_PLURAL
from sft_operator.cache import version
from sft_operator.render import LABEL_JOB
from sft_operator.status import Event

log = logging.getLogger(__name__)
Object = dict[str, Any]
Page = tuple[list[Object], int | None]  # a list's items and its resourceVersion
RAW = {"_preload_content": False}
LIST_PAGE = 100
PEERING_GROUP, PEERING_VERSION = "kopf.dev", "v1"
REPORTING_COMPONENT = "kube-sft-operator"


class Kube:
    """Thin, typed wrapper over the kubernetes client for the objects the operator touches."""

    def __init__(self, api: client.ApiClient, instance: str = "kube-sft-operator") -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.rbac = client.RbacAuthorizationV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.authorization = client.AuthorizationV1Api(api)
        self.instance = instance

    # --- SFTJobs ------------------------------------------------------------------------------

    def list_jobs(self, namespaces: list[str]) -> Iterator[Page]:
        """SFTJobs in the watched namespaces (all when the list is empty), page by page."""
        if not namespaces:
            yield from _pages(lambda **kw: self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, **kw))
        for namespace in namespaces:
            yield from _pages(
                lambda ns=namespace, **kw: self.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, **kw)
            )

    def patch_job_status(self, namespace: str, name: str, status: Object) -> Object | None:
        """Merge-patch the status subresource (only the keys given); the job as written, None when gone."""
        return _unless_gone(
            lambda: self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, {"status": status}, **RAW
            )
        )

    def patch_job_metadata(self, namespace: str, name: str, metadata: Object) -> Object | None:
        """Merge-patch the job's metadata (the operator's lifecycle annotation); None when the job is gone."""
        return _unless_gone(
            lambda: self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, {"metadata": metadata}, **RAW
            )
        )

    def delete_job(self, namespace: str, name: str, uid: str) -> None:
        """Delete the SFTJob (children follow by garbage collection); gone already is fine."""
        options = {"preconditions": {"uid": uid}, "propagationPolicy": "Background"}
        try:
            _json(
                self.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, name, body=options, **RAW
                )
            )
        except ApiException as error:
            if error.status not in (404, 409):
                raise

    # --- platform defaults ----------------------------------------------------------------------

    def get_runtime(self, name: str) -> Object | None:
        """The ClusterSFTRuntime of that name as stored now, or None when there is none."""
        return _unless_gone(lambda: self.custom.get_cluster_custom_object(GROUP, VERSION, RUNTIME_PLURAL, name, **RAW))

    # --- children -----------------------------------------------------------------------------

    def list_pods(self, namespaces: list[str]) -> Iterator[Page]:
        """Every trainer pod (label LABEL_JOB) in the watched namespaces, page by page."""
        if not namespaces:
            yield from _pages(lambda **kw: self.core.list_pod_for_all_namespaces(label_selector=LABEL_JOB, **kw))
        for namespace in namespaces:
            yield from _pages(
                lambda ns=namespace, **kw: self.core.list_namespaced_pod(ns, label_selector=LABEL_JOB, **kw)
            )

    def find_pod(self, namespace: str, name: str) -> Object | None:
        """The pod of that name as stored now, or None (a list by name: the operator may list pods, not get them)."""
        body = _json(self.core.list_namespaced_pod(namespace, field_selector=f"metadata.name={name}", **RAW))
        items: list[Object] = body.get("items") or []
        return items[0] if items else None

    def create(self, obj: Object, dry_run: bool = False) -> Object | None:
        """Create a child; the object as created. When one of that name exists already (409): that
        object as read back, for the caller to check whose it is (None for a Pod, or when it went
        meanwhile). `dry_run`: admission only, nothing is stored. Other refusals raise ApiException."""
        namespace = obj["metadata"]["namespace"]
        creators = {
            "Pod": self.core.create_namespaced_pod,
            "Service": self.core.create_namespaced_service,
            "ConfigMap": self.core.create_namespaced_config_map,
            "ServiceAccount": self.core.create_namespaced_service_account,
            "Role": self.rbac.create_namespaced_role,
            "RoleBinding": self.rbac.create_namespaced_role_binding,
        }
        options: dict[str, Any] = {"dry_run": "All"} if dry_run else {}
        try:
            response = creators[obj["kind"]](namespace, obj, **options, **RAW)
        except ApiException as error:
            if error.status == 409 and not dry_run:
                return self._existing(obj)
            raise
        return _json(response)

    def _existing(self, obj: Object) -> Object | None:
        """The stored object of `obj`'s kind and name (not for pods: the operator's store has them), or None."""
        kind, namespace, name = obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]
        readers = {
            "Service": self.core.read_namespaced_service,
            "ConfigMap": self.core.read_namespaced_config_map,
            "ServiceAccount": self.core.read_namespaced_service_account,
            "Role": self.rbac.read_namespaced_role,
            "RoleBinding": self.rbac.read_namespaced_role_binding,
        }
        if kind not in readers:
            return None
        try:
            return _json(readers[kind](name, namespace, **RAW))
        except ApiException as error:
            if error.status == 404:
                return None
            if error.status == 403:  # a chart older than this operator: no `get`, the owner cannot be checked
                log.warning("no right to read %s %s/%s: taking it as the job's own, unchecked", kind, namespace, name)
                return obj
            raise

    def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        """Delete exactly this pod (the uid guards a same-named successor); gone already is fine."""
        options = {"preconditions": {"uid": uid}}
        try:
            _json(self.core.delete_namespaced_pod(name, namespace, body=options, **RAW))
        except ApiException as error:
            if error.status not in (404, 409):
                raise

    # --- events and peering -----------------------------------------------------------------------

    def record_event(self, job: Object, event: Event) -> None:
        """A core/v1 Event on the SFTJob, for `kubectl describe`."""
        meta = job["metadata"]
        now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        body = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": event.reason,
            "message": event.message[:1024],
            "type": event.type,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "source": {"component": REPORTING_COMPONENT},
            "reportingComponent": REPORTING_COMPONENT,
            "reportingInstance": self.instance,
        }
        try:
            _json(self.core.create_namespaced_event(meta["namespace"], body, **RAW))
        except ApiException as error:
            log.warning("cannot record event %s on %s: %s", event.reason, meta["name"], error.reason)

    def peering_status(self, name: str, namespace: str | None) -> Object | None:
        """kopf's peering record (which operator replicas are alive, with their priorities)."""
        peering = _unless_gone(
            lambda: (
                self.custom.get_cluster_custom_object(
                    PEERING_GROUP, PEERING_VERSION, "clusterkopfpeerings", name, **RAW
                )
                if namespace is None
                else self.custom.get_namespaced_custom_object(
                    PEERING_GROUP, PEERING_VERSION, namespace, "kopfpeerings", name, **RAW
                )
            )
        )
        if peering is None:
            return None
        status: Object = peering.get("status") or {}
        return status


def _json(response: Any) -> Object:
    """The JSON body of a raw (`_preload_content=False`) response; its connection goes back to the pool.

    urllib3 keeps the connection of an unread, unreleased response out of the pool: without the
    release every call would open (and TLS-handshake) a new connection.
    """
    try:
        data = response.data
    finally:
        response.release_conn()
    body: Object = json.loads(data) if data else {}
    return body


def _unless_gone(call: Callable[[], Any]) -> Object | None:
    """The JSON body of `call()`'s response, or None when the API answers 404 (the object is gone)."""
    try:
        return _json(call())
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def _pages(call: Callable[..., Any]) -> Iterator[Page]:
    """A paginated list, LIST_PAGE items at a time, each page with the list's resourceVersion.

    One page in memory at a time: a whole list of 2000 pods (managedFields and all) parsed at once
    was a 90 MB spike, the operator's peak RSS at 1000 jobs.
    """
    token: str | None = None
    while True:
        body = _json(call(limit=LIST_PAGE, _continue=token, **RAW))
        yield list(body.get("items") or []), version(body)
        token = (body.get("metadata") or {}).get("continue")
        if not token:
            return
