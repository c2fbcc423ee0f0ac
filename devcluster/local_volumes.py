"""A volume provisioner for the test nodes (node agent and real node): PVCs become local directories.

It makes a default StorageClass `kube-sft-local` and provisions each Pending claim of it as a hostPath
PersistentVolume, the directory `<root>/<namespace>/<claim>` (the PV controller binds them); it is
shared by every pod that mounts the claim, like ReadWriteMany. The directory is world-writable: the
project's images run as uid 1000, and hostPath volumes ignore fsGroup.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client import ApiException

log = logging.getLogger("kube_sft.local_volumes")
STORAGE_CLASS = "kube-sft-local"
PROVISIONER = "kube-sft.test/node-agent"


class LocalVolumeProvisioner:
    """Provisions claims of STORAGE_CLASS under `root` every half second. start() / stop()."""

    def __init__(self, api_client: kubernetes.client.ApiClient, root: Path) -> None:
        self.api = api_client
        self.v1 = kubernetes.client.CoreV1Api(api_client)
        self.root = root
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> LocalVolumeProvisioner:
        """Create the default StorageClass and start provisioning in a daemon thread."""
        self._ensure_storage_class()
        self._thread = threading.Thread(target=self._loop, name="local-volumes", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop provisioning (volumes and their directories stay)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _ensure_storage_class(self) -> None:
        body = {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": STORAGE_CLASS, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": PROVISIONER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
        }
        with contextlib.suppress(ApiException):
            kubernetes.client.StorageV1Api(self.api).create_storage_class(body)

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            try:
                for claim in self.v1.list_persistent_volume_claim_for_all_namespaces().items:
                    if claim.status.phase == "Pending" and claim.spec.storage_class_name == STORAGE_CLASS:
                        self.provision(claim)
            except Exception as exc:
                log.warning("volume provisioning failed: %s", exc)

    def provision(self, claim: Any) -> None:
        """Create a hostPath PV (a directory under root) pre-bound to claim."""
        meta = claim.metadata
        path = self.root / meta.namespace / meta.name
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)
        size = (claim.spec.resources.requests or {}).get("storage", "1Gi") if claim.spec.resources else "1Gi"
        body = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"pvc-{meta.uid}", "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": claim.spec.access_modes or ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": STORAGE_CLASS,
                "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
                "claimRef": {"namespace": meta.namespace, "name": meta.name, "uid": meta.uid},
            },
        }
        try:
            self.v1.create_persistent_volume(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
