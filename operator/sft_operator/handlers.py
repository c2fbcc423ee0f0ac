"""kopf glue: watch SFTJobs and their pods, and hand every change to the Controller.

Why event handlers and a resync thread rather than `@kopf.timer`: kopf puts a finalizer on every
object that has a timer or daemon, and a finalizer blocks `kubectl delete` whenever the operator is
down. Here nothing needs a finalizer — children are garbage-collected through owner references —
so deletion never waits for the operator. `@kopf.on.event` handlers run only on the active replica
(kopf peering pauses the standby); the resync loop follows the same peering record.

The handlers are async and only store what the event says and mark the job dirty (a few
microseconds on the event loop): the Controller's worker threads do the reconciling, so kopf never
queues bodies behind a slow handler. The pod watch is filtered by the server (only pods with the
job label), not only by kopf.
"""

import logging
import threading
import time
from typing import Any

import kopf
from kubernetes import client, config

from sft_operator.api import GROUP, PLURAL, VERSION
from sft_operator.controller import EVENT_THREADS, Controller, Settings
from sft_operator.kube import Kube
from sft_operator.render import LABEL_JOB

log = logging.getLogger(__name__)
STALE_RESYNC_FACTOR = 12

API_RETRY_BACKOFFS = (1, 1, 2, 3, 5, 8, 13, 21, *([30] * 18))
"""kopf's waits between retries of a failed API request (about 10 minutes in all). kopf's default
(54 s) ends in a fatal error once spent, and its peering keep-alive spent it across API server
restarts in a row: the operator stopped. A 403 is retried too: a kube-apiserver that has just started
serves before its RBAC caches are filled and refuses everyone but system:masters for a moment."""

EXIT_TIMEOUT_SECONDS = 30
"""How long kopf's shutdown may take before kopf kills the process (kopf's default: 10 minutes). A
shutdown can hang (kopf cancelling its own watch streams); the operator must exit for its
Deployment to restart it."""


def kubernetes_client(connections: int) -> client.ApiClient:
    """In-cluster credentials when in a pod, else the kubeconfig ($KUBECONFIG or ~/.kube/config).

    `connections`: kept-alive connections to the API server (one per concurrent call, so that no
    call pays for a new TLS handshake).
    """
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = connections
    return client.ApiClient(configuration)


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf computes a "diff base" (a deep copy of the body, minus system fields) for every event, for
    change-detecting handlers (`on.create/update/field`). Here there are none, only `on.event`: no diff
    base is built, fetched or stored (it was a tenth of the operator's CPU at a 500-job burst)."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Our own annotation prefix, quiet event posting, and the Controller with its resync loop."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    operator_settings: Settings = memo.get("settings") or Settings()
    settings.peering.lifetime = operator_settings.peering_lifetime
    settings.peering.stealth = True
    settings.networking.error_backoffs = API_RETRY_BACKOFFS
    settings.process.ultimate_exiting_timeout = EXIT_TIMEOUT_SECONDS
    settings.posting.level = logging.WARNING
    settings.watching.label_selectors["", "v1", "pods"] = LABEL_JOB  # has the label, whatever its value
    connections = operator_settings.workers + operator_settings.create_parallelism + EVENT_THREADS + 4  # + resync
    controller = Controller(Kube(kubernetes_client(connections), operator_settings.identity), operator_settings)
    controller.relist(startup=True)  # before kopf's watches start: the workers decide from a full store
    controller.start()
    stop = threading.Event()
    thread = threading.Thread(target=controller.resync_forever, args=(stop,), name="resync", daemon=True)
    thread.start()
    memo["controller"], memo["stop"] = controller, stop


@kopf.on.cleanup()
def stop_resync(memo: kopf.Memo, **_: Any) -> None:
    """Stop the resync loop and the workers."""
    stop = memo.get("stop")
    if stop is not None:
        stop.set()
    controller: Controller | None = memo.get("controller")
    if controller is not None:
        controller.stop()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def job_changed(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
    """Any change of an SFTJob (spec, or the trainer's status patch): store it, reconcile it soon."""
    controller: Controller = memo["controller"]
    controller.job_event(event.get("type"), dict(event["object"]))


@kopf.on.event("", "v1", "pods", labels={LABEL_JOB: kopf.PRESENT})
async def pod_changed(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
    """A trainer pod changed (scheduled, started, failed, deleted): store it, reconcile its job soon."""
    controller: Controller = memo["controller"]
    controller.pod_event(event.get("type"), dict(event["object"]))


@kopf.on.probe(id="resync_age_seconds")
def resync_age(memo: kopf.Memo, **_: Any) -> float:
    """Liveness: seconds since the resync loop last ran; fails when the loop is stuck."""
    controller: Controller | None = memo.get("controller")
    if controller is None:
        return 0.0
    age = time.monotonic() - controller.last_resync
    if age > STALE_RESYNC_FACTOR * controller.settings.resync_seconds + 60:
        raise kopf.PermanentError(f"the resync loop has not run for {age:.0f}s")
    return round(age, 1)
