"""One run: one operator under the whole load (a burst, then a steady wave with failures injected), in its
own namespace; measured, checked for correctness and garbage collection, then cleaned up."""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import kubernetes
from kubernetes.client.exceptions import ApiException

from bench.operator_scale.cluster import OPERATOR_ACCOUNTS, AuditedControlPlane, service_account_user, start_operator
from bench.operator_scale.flavours import FAIL_ANNOTATION, SFT, Flavour, Object
from bench.operator_scale.observe import LoadSampler, ProcessMeter, Watch, start_profiler
from bench.operator_scale.readings import (
    audit_counts,
    counter_diff,
    misdirected_writes,
    pod_writes,
    request_counts,
)
from bench.operator_scale.stats import injection_times, load_summary, ratio, steady_times, summarize
from bench.operator_scale.tracker import Tracker, correctness, latencies, latencies_by_wave
from devcluster.procs import wait_until


@dataclass(frozen=True)
class Scale:
    """The load shape."""

    nodes: int = 200
    gpus_per_node: int = 8
    nodes_per_job: int = 2
    jobs: int = 500
    steady_per_minute: float = 100
    steady_minutes: float = 5
    failures: int = 50
    run_seconds: float = 30
    settle_timeout: float = 900
    gc_timeout: float = 900  # deleting 1000 jobs leaves ~7,000 children for the controller-manager (~12/s here)
    submit_threads: int = 4


QUICK = Scale(nodes=50, jobs=50, steady_per_minute=50, steady_minutes=1, failures=5, run_seconds=15, settle_timeout=300)


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"[bench-operator {datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


class Run:
    """One operator under the whole load, in its own namespace."""

    def __init__(self, flavour: Flavour, cluster: AuditedControlPlane, client: kubernetes.client.ApiClient) -> None:
        self.flavour = flavour
        self.cluster = cluster
        self.client = client
        self.namespace = f"bench-{flavour.short}"
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.core = kubernetes.client.CoreV1Api(client)

    def create_job(self, tracker: Tracker, name: str, nodes: int, wave: str) -> None:
        """Record the apply time, then create the job."""
        body = self.flavour.manifest(name, self.namespace, nodes)
        tracker.applied(name, time.monotonic(), wave)
        f = self.flavour
        self.custom.create_namespaced_custom_object(f.group, f.version, self.namespace, f.plural, body)

    def inject(self, tracker: Tracker, scale: Scale, rng: random.Random) -> bool:
        """Annotate one young victim pod to fail; False when no job is in the right state."""
        picked = tracker.injection_candidate(time.monotonic(), scale.run_seconds / 3, rng)
        if picked is None:
            return False
        job, pod = picked
        tracker.mark_injected(job, time.monotonic())
        try:
            self.core.patch_namespaced_pod(
                pod, self.namespace, {"metadata": {"annotations": {FAIL_ANNOTATION: "true"}}}
            )
        except ApiException as error:
            log(f"injecting into {pod} failed: {error.status}")
        return True

    def execute(
        self, scale: Scale, kubeconfig: Path, profile: Path | None = None, seed: int = 8, cleanup: bool = True
    ) -> Object:
        """Start the operator, run the load, check the outcome, clean up (unless `cleanup` is False:
        no garbage-collection check, the namespace stays); returns the run's result."""
        f, rng = self.flavour, random.Random(seed)
        self.core.create_namespace({"metadata": {"name": self.namespace}})
        wait_until(lambda: self.core.read_namespaced_service_account("default", self.namespace), 60, "namespace SA")
        tracker = Tracker(f, scale.nodes_per_job)
        operator = start_operator(f, self.cluster, kubeconfig, self.namespace)
        meter = ProcessMeter(operator.proc.pid)
        profiler = start_profiler(operator.proc.pid, profile) if profile and self.flavour is SFT else None
        pod_watch = Watch("pods", lambda **kw: self.core.list_namespaced_pod(self.namespace, **kw), tracker.on_pod)
        job_watch = Watch(
            "jobs",
            lambda **kw: self.custom.list_namespaced_custom_object(f.group, f.version, self.namespace, f.plural, **kw),
            tracker.on_job,
        )
        for watch in (pod_watch, job_watch):
            watch.start()
            watch.synced.wait(30)
        load = LoadSampler()
        load.start()
        since = datetime.now(UTC)
        before = request_counts(self.cluster.metrics_text())
        cpu_before = meter.cpu()
        t_start = time.monotonic()
        names = iter(f"{f.prefix}-{index:05d}" for index in range(1_000_000))

        # 1. the burst
        log(f"{f.name}: submitting {scale.jobs} jobs at once")
        with ThreadPoolExecutor(scale.submit_threads) as pool:
            burst = [next(names) for _ in range(scale.jobs)]
            list(pool.map(lambda n: self.create_job(tracker, n, scale.nodes_per_job, "burst"), burst))
        burst_seconds = time.monotonic() - t_start

        # 2. the steady load, with failures spread over it
        steady_start = time.monotonic()
        steady_seconds = scale.steady_minutes * 60
        submits = steady_times(steady_start, scale.steady_per_minute, scale.steady_minutes)
        failures = injection_times(steady_start, steady_seconds, scale.failures)
        log(f"{f.name}: steady {scale.steady_per_minute}/min for {scale.steady_minutes} min, {scale.failures} failures")
        late_submits = 0
        with ThreadPoolExecutor(scale.submit_threads) as pool:
            while submits or failures:
                now = time.monotonic()
                while submits and submits[0] <= now:
                    if now - submits.pop(0) > 1.0:
                        late_submits += 1
                    pool.submit(self.create_job, tracker, next(names), scale.nodes_per_job, "steady")
                if failures and failures[0] <= now and self.inject(tracker, scale, rng):
                    failures.pop(0)
                if failures and now > steady_start + steady_seconds + 2 * scale.run_seconds:
                    log(f"{f.name}: {len(failures)} failures could not be injected (no young running job)")
                    failures.clear()
                time.sleep(0.05)
        submitted = time.monotonic()

        # 3. wait for every job to finish (the floor's jobs never do: for every job's pods)
        def settled() -> bool:
            return not (tracker.without_pods() if f.floor else tracker.unfinished())

        try:
            wait_until(settled, scale.settle_timeout, "every job to finish", interval=1.0)
        except TimeoutError:
            log(f"{f.name}: {len(tracker.unfinished())} jobs unfinished after {scale.settle_timeout}s")
        t_end = time.monotonic()
        cpu = meter.cpu() - cpu_before
        peak = meter.peak_rss()
        after = request_counts(self.cluster.metrics_text())
        until = datetime.now(UTC)
        load.stop_event.set()

        # 4. orphans while the jobs exist, then garbage collection once they are deleted
        job_uids = {job.uid for job in tracker.jobs.values() if job.uid}
        pods = json.loads(self.core.list_namespaced_pod(self.namespace, _preload_content=False).data)["items"]
        orphans = [
            pod["metadata"]["name"]
            for pod in pods
            if not any(ref.get("uid") in job_uids for ref in pod["metadata"].get("ownerReferences") or [])
        ]
        time.sleep(2)  # let the batch audit backend flush
        audit_lines = self.cluster.audit_log.read_text().splitlines()
        audit = audit_counts(audit_lines, service_account_user(OPERATOR_ACCOUNTS[f.name]), since, until)
        traced = self.node_agent_trace(audit_lines) if self.cluster.trace_pods else {}
        gc = self.collect_garbage(scale.gc_timeout) if cleanup and not f.floor else None
        if profiler is not None:
            profiler.send_signal(2)  # SIGINT: py-spy writes its output and exits
            profiler.wait(60)
        operator.stop()
        for watch in (pod_watch, job_watch):
            watch.stop()
        if cleanup:
            self.drop_namespace()

        jobs = [job for job in tracker.jobs.values() if job.applied is not None]
        lat = latencies(jobs)
        burst_done = [job.pods_created for job in jobs if job.wave == "burst" and job.pods_created is not None]
        cluster_requests = counter_diff(after, before)
        total_jobs = len(jobs)
        return {
            "operator": f.name,
            "kind": f.kind,
            "namespace": self.namespace,
            "jobs": total_jobs,
            "timing": {
                "burst_submit_seconds": round(burst_seconds, 2),
                "burst_all_pods_created_after_seconds": round(max(burst_done) - t_start, 1) if burst_done else None,
                "steady_late_submits": late_submits,
                "submitted_after_seconds": round(submitted - t_start, 1),
                "all_finished_after_seconds": round(t_end - t_start, 1),
            },
            "latency": {key: summarize(values) for key, values in lat.items()},
            "latency_by_wave": {
                wave: {key: summarize(values) for key, values in wave_lat.items()}
                for wave, wave_lat in latencies_by_wave(jobs).items()
            },
            "process": {
                "pid": operator.proc.pid,
                "cpu_seconds": round(cpu, 2),
                "cpu_seconds_per_job": ratio(cpu, total_jobs),
                "peak_rss_mb": round(peak / 2**20, 1),
            },
            "api_requests": {
                "operator_total": sum(audit.values()),
                "operator_per_job": ratio(sum(audit.values()), total_jobs),
                "operator_by_verb_resource": dict(audit.most_common()),
                "cluster_total": sum(cluster_requests.values()),
                "cluster_per_job": ratio(sum(cluster_requests.values()), total_jobs),
                "cluster_by_verb_resource": dict(cluster_requests.most_common(25)),
            },
            "correctness": correctness(jobs, f.replaced_after_failure(scale.nodes_per_job), len(orphans), 0)
            | {"orphan_names": orphans[:20]}
            | traced,
            "garbage_collection": gc,
            "watch_errors": pod_watch.errors + job_watch.errors,
            "load_average_1m": load_summary(load.samples),
        }

    def node_agent_trace(self, audit_lines: Iterable[str]) -> Object:
        """`--trace-pods`: KWOK's writes in this run's namespace that hit a pod they were not meant for."""
        writes = [write for write in pod_writes(audit_lines) if write["namespace"] == self.namespace]
        wrong = misdirected_writes(writes)
        keys = ("time", "verb", "subresource", "name", "uid", "why")
        return {
            "node_agent_misdirected_writes": len(wrong),
            "node_agent_misdirected_examples": [{key: write[key] for key in keys} for write in wrong[:20]],
            "node_agent_writes_to_missing_pods": sum(1 for w in writes if w["agent"] == "kwok" and w["code"] == 404),
        }

    def collect_garbage(self, timeout: float = 300) -> Object:
        """Delete every job (background propagation) and wait for their children to go; what is left."""
        f = self.flavour
        t0 = time.monotonic()
        self.custom.delete_collection_namespaced_custom_object(
            f.group, f.version, self.namespace, f.plural, propagation_policy="Background"
        )

        def leftovers() -> dict[str, int]:
            found = {}
            for kind, call in (
                ("pods", self.core.list_namespaced_pod),
                ("services", self.core.list_namespaced_service),
                ("configmaps", self.core.list_namespaced_config_map),
                ("serviceaccounts", self.core.list_namespaced_service_account),
            ):
                items = json.loads(call(self.namespace, _preload_content=False).data)["items"]
                skip = {"kube-root-ca.crt", "default"}
                found[kind] = sum(1 for item in items if item["metadata"]["name"] not in skip)
            return found

        left = leftovers()
        while sum(left.values()) and time.monotonic() - t0 < timeout:
            time.sleep(2)
            left = leftovers()
        return {"seconds": round(time.monotonic() - t0, 1), "left_after": left, "timeout": timeout}

    def drop_namespace(self, timeout: float = 600) -> None:
        """Delete the run's namespace and wait until it is gone, so that no garbage collection of this run
        overlaps the next operator's run."""
        self.core.delete_namespace(self.namespace)

        def gone() -> bool:
            try:
                self.core.read_namespace(self.namespace)
            except ApiException as error:
                return error.status == 404
            return False

        try:
            wait_until(gone, timeout, f"namespace {self.namespace} deleted", interval=2.0)
        except TimeoutError:
            log(f"namespace {self.namespace} still terminating after {timeout}s")
