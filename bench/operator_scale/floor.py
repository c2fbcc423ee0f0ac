"""The floor: the least any operator must do per job (create its pods), as fast as the API server takes it.
`python -m bench.bench_operator --serve-floor NAMESPACE` runs `serve_floor` as the floor's process."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import kubernetes
from kubernetes.client.exceptions import ApiException

from bench.operator_scale.flavours import BENCH_IMAGE, FLOOR, GPU, POD_COMMAND, SFT, Object
from bench.operator_scale.observe import Watch

FLOOR_PARALLELISM = 16  # concurrent creates (kube-sft's --create-parallelism was 16 when the floor was built; now 32)
FLOOR_READY = "floor: watching"


def floor_pod(job: Object, rank: int) -> Object:
    """The one object per node a gang cannot do without: a pod with the job's labels and owner, the
    node's GPUs, the bench's command; no Service, ConfigMap, RBAC, status or Events."""
    meta = job["metadata"]
    spec = job["spec"]
    name = meta["name"]
    container = {
        "name": "trainer",
        "image": BENCH_IMAGE,
        "command": POD_COMMAND,
        "resources": {"limits": {GPU: str(spec["resources"]["gpusPerNode"])}},
    }
    owner = {"apiVersion": job["apiVersion"], "kind": job["kind"], "name": name, "uid": meta["uid"], "controller": True}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{name}-node-{rank}",
            "labels": {SFT.job_label: name, SFT.slot_labels[0]: str(rank)},
            "ownerReferences": [owner],
        },
        "spec": {"containers": [container], "restartPolicy": "Never", "automountServiceAccountToken": False},
    }


def serve_floor(namespace: str) -> None:
    """The floor client (`--serve-floor NAMESPACE`, KUBECONFIG from the environment): watch the SFTJobs
    of `namespace` and create every new job's pods, FLOOR_PARALLELISM at a time; nothing else, ever."""
    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(client_configuration=config)
    config.connection_pool_maxsize = FLOOR_PARALLELISM + 2
    client = kubernetes.client.ApiClient(config)
    core, custom = kubernetes.client.CoreV1Api(client), kubernetes.client.CustomObjectsApi(client)
    pool = ThreadPoolExecutor(FLOOR_PARALLELISM)

    def create(pod: Object, tries: int = 5) -> None:
        for _ in range(tries):
            try:
                response = core.create_namespaced_pod(namespace, pod, _preload_content=False)
                response.drain_conn()  # read to the end: the connection goes back to the pool reusable
                response.release_conn()
                return
            except ApiException as error:
                if error.status == 409:
                    return  # a retry of a create that had worked
                print(f"floor: creating {pod['metadata']['name']}: {error.status} {error.reason}", flush=True)
            except Exception as error:  # a dropped connection: try again, as an operator would
                print(f"floor: creating {pod['metadata']['name']}: {error!r}", flush=True)

    def on_job(event: str, job: Object, when: float) -> None:
        if event == "ADDED":
            for rank in range(job["spec"]["resources"]["numNodes"]):
                pool.submit(create, floor_pod(job, rank))

    f = FLOOR
    watch = Watch(
        "floor",
        lambda **kw: custom.list_namespaced_custom_object(f.group, f.version, namespace, f.plural, **kw),
        on_job,
    )
    watch.start()
    watch.synced.wait()
    print(FLOOR_READY, flush=True)
    watch.join()
