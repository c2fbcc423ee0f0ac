"""A seeded, reproducible randomized fault soak of the operator's gang integrity (issue 22).

Many small jobs in several namespaces run under two operator replicas (kopf peering) while a fault
schedule drawn from `random.Random(seed)` kills and deletes trainer pods in any phase, kills and
restarts operator replicas, stops and restarts the API server and etcd, deletes and re-creates jobs
under the same name, and suspends and resumes jobs. A pod watch (`Ledger`) records every pod the
API server ever shows and checks, continuously and at the end:

- never two attempts' pods alive together for one job longer than OVERLAP_GRACE;
- never a rank re-created alone: at most one pod per (job uid, attempt, rank), ever;
- every attempt that had pods had a whole gang: pods created = sum over jobs of nodes x attempts;
- no orphans: every pod is owned (controller uid) by a job this soak created, and once the jobs are
  deleted every child is garbage-collected;
- every job that was not deleted reaches a final phase its faults explain (Succeeded: every fault
  here is retryable and the backoff limit is high), none stuck;
- every restart counted once: a job's restarts <= its attempt number <= its restarts + its resumes +
  its restarts the operator does not count against backoffLimit (a disruption or a transient create
  refusal: a Warning Event whose reason is in `policy.NOT_COUNTED`), see
  `restart_accounting_violation`; and every attempt a fault hit was followed by a new attempt.

Trainer pods are script stand-ins (rank 0 reports progress through the real status reporter, so jobs
reach Running; the other ranks sleep): the soak tests the operator, and needs hundreds of pods in
minutes on two cores. With `real_trainer` (the long soak), one job per run is the real trainer
(tiny model, real GSM8K rows, checkpoints on a host directory) whose rank 1 is killed after its
first checkpoint while the schedule's other faults go on around it: its new gang must resume from
the last checkpoint, losing at most `save_interval` steps.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import signal
import textwrap
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client import ApiException

from devcluster.controlplane import ControlPlane
from devcluster.node_agent import NodeAgent
from devcluster.procs import ManagedProcess, wait_until
from sft_operator.api import GROUP, PLURAL, VERSION
from sft_operator.policy import NOT_COUNTED
from sft_operator.render import LABEL_ATTEMPT, LABEL_JOB, LABEL_RANK
from tests.e2e.harness import gsm8k_data, gsm8k_dir, tiny_training
from tests.integration.operator.conftest import Operator

STARTUP_SECONDS = 30.0  # a replica that exits sooner after its start has not started yet (see notice_exits)

FAULTS = (
    "kill_pod",  # SIGKILL of a trainer container (the pod fails, exit 137)
    "delete_pod",  # API delete of a trainer pod, in whatever phase it is (Pending too)
    "kill_operator",  # SIGKILL of the active replica; it comes back 2-8 s later
    "restart_apiserver",  # kube-apiserver stopped, down 2-6 s, started again
    "restart_etcd",  # etcd stopped, down 2-6 s, started again
    "recreate_job",  # delete a job and create it again under the same name after 0-2 s
    "suspend_resume",  # suspend a job; resumed once the operator shows it Suspended
)
OVERLAP_GRACE = 5.0  # terminationGracePeriodSeconds (1 s) + the watch's delivery slack
FINAL_TIMEOUT = 300.0
REAL_SAVE_INTERVAL = 50
REAL_STEPS = 600
TRAINING: dict[str, Any] = {
    "model": {"source": "hf", "path": "/models/tiny"},
    "data": {"train_file": "/data/train.jsonl"},
    "trainer": {"max_steps": 20, "val_check_interval": 5, "save_interval": 10, "global_batch_size": 12},
}  # 12: divisible by every gang size the soak draws (1-3 nodes)
STAND_IN = textwrap.dedent(
    """
    import os, sys, time
    rank, steps = int(os.environ["NODE_RANK"]), int(os.environ["SOAK_STEPS"])
    if rank != 0:
        time.sleep(steps + 2); sys.exit(0)
    from sft_trainer.report.events import StepReport, RunSummary
    from sft_trainer.report.kubernetes import create_reporter
    reporter = create_reporter(None)
    for step in range(1, steps + 1):
        reporter.step(StepReport(step=step, total_steps=steps, epoch=0, consumed_samples=8 * step, loss=3.0 / step,
                                 lr=1e-4, grad_norm=1.0, tokens=100, tokens_per_s=100.0, elapsed_s=step,
                                 eta_s=steps - step, data_wait_s=0.0))
        time.sleep(1)
    reporter.finish(RunSummary(outcome="succeeded", step=steps, total_steps=steps, exit_code=0, message="ok"))
    """
)


@dataclass(frozen=True)
class JobEvent:
    """One core/v1 Event on a job, as the accounting reads it."""

    type: str
    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.type} {self.reason}: {self.message}"


def restart_accounting_violation(attempt: int, restarts: int, resumes: int, events: list[JobEvent]) -> str | None:
    """Why a finished job's attempt number is not explained by its restarts, or None when it is.

    Each attempt after the first follows a counted restart (`status.restarts`), a resume after a
    suspension (`resumes`, counted by the soak) or a restart the operator does not count against
    backoffLimit: a disruption or a transient create refusal, announced by a Warning Event whose
    reason is in `policy.NOT_COUNTED`. An attempt beyond all of these is a restart counted twice (or
    not at all); fewer attempts than counted restarts is a restart counted without one.
    """
    uncounted = sum(1 for event in events if event.type == "Warning" and event.reason in NOT_COUNTED)
    if restarts <= attempt <= restarts + resumes + uncounted:
        return None
    listing = "; ".join(str(event) for event in events) or "none"
    return (
        f"attempt {attempt} vs restarts {restarts} + resumes {resumes} + uncounted restarts {uncounted}; "
        f"events: {listing}"
    )


def soak_job(name: str, nodes: int, steps: int) -> dict[str, Any]:
    """A small SFTJob whose pods run the stand-in for `steps` seconds."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SFTJob",
        "metadata": {"name": name},
        "spec": {
            "resources": {"numNodes": nodes, "gpusPerNode": 0},
            "pod": {
                "command": ["python", "-c", STAND_IN],
                "terminationGracePeriodSeconds": 1,
                "env": [{"name": "SOAK_STEPS", "value": str(steps)}, {"name": "SFT_STATUS_INTERVAL_SECONDS", "value": "0.5"}],
            },
            "runPolicy": {
                "backoffLimit": 100,
                "backoffSeconds": 1,
                "maxBackoffSeconds": 4,
                "gangStartTimeoutSeconds": 90,
                "pendingTimeoutSeconds": 60,
                "stallTimeoutSeconds": 60,
            },
            "training": TRAINING,
        },
    }  # fmt: skip


def real_trainer_job(name: str, host: Path) -> dict[str, Any]:
    """A 2-node job of the real trainer: GSM8K rows at /data, checkpoints and metrics.jsonl under /output."""
    training = tiny_training(
        output_dir=f"/output/{name}", data=gsm8k_data(), max_steps=REAL_STEPS,
        val_check_interval=REAL_SAVE_INTERVAL, save_interval=REAL_SAVE_INTERVAL,
    )  # fmt: skip
    training["logging"].pop("metrics_port", None)
    env = [{"name": "SFT_STATUS_INTERVAL_SECONDS", "value": "0.5"}, {"name": "OMP_NUM_THREADS", "value": "1"}]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SFTJob",
        "metadata": {"name": name},
        "spec": {
            "resources": {"numNodes": 2, "gpusPerNode": 0},
            "storage": {
                "data": {"mountPath": "/data", "hostPath": {"path": str(host / "data")}, "readOnly": True},
                "output": {"mountPath": "/output", "hostPath": {"path": str(host / "output")}},
            },
            "pod": {"terminationGracePeriodSeconds": 5, "env": env},
            "runPolicy": {
                "backoffLimit": 100,
                "backoffSeconds": 1,
                "maxBackoffSeconds": 4,
                "gangStartTimeoutSeconds": 300,
                "stallTimeoutSeconds": 120,
            },
            "training": training,
        },
    }


def metric_steps(metrics_file: Path) -> list[int]:
    """The training steps recorded in a metrics.jsonl, in file order."""
    if not metrics_file.exists():
        return []
    steps = []
    for line in metrics_file.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "loss" in row and isinstance(row.get("step"), int):
            steps.append(row["step"])
    return steps


# --- the ledger: every pod the API server shows, and the invariants over them ------------------------------


@dataclass
class PodSeen:
    """One trainer pod as the watch last showed it."""

    uid: str
    job_uid: str
    job: str
    namespace: str
    name: str
    attempt: int
    rank: int
    phase: str = "Pending"
    deleted: bool = False

    @property
    def alive(self) -> bool:
        """Its process may run: not gone and not finished."""
        return not self.deleted and self.phase not in ("Succeeded", "Failed")


@dataclass
class JobSeen:
    """One SFTJob (by uid) this soak created."""

    uid: str
    namespace: str
    name: str
    nodes: int
    deleted: bool = False
    resumes: int = 0
    hit_attempts: set[int] = field(default_factory=set)  # attempts a pod fault hit
    final: dict[str, Any] | None = None


@dataclass
class Ledger:
    """Thread-safe record of pods and jobs with the continuously checked invariants."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    pods: dict[str, PodSeen] = field(default_factory=dict)
    jobs: dict[str, JobSeen] = field(default_factory=dict)
    slots: dict[tuple[str, int, int], set[str]] = field(default_factory=lambda: defaultdict(set))
    overlap_since: dict[str, float] = field(default_factory=dict)
    partial_since: dict[str, float] = field(default_factory=dict)
    max_overlap: float = 0.0
    max_partial: float = 0.0
    max_partial_job: str = ""
    violations: list[str] = field(default_factory=list)
    before: set[str] = field(default_factory=set)  # pods that existed when the run began (an earlier run's)

    def job(self, job: JobSeen) -> None:
        """A job this soak created (before its pods can exist)."""
        with self.lock:
            self.jobs[job.uid] = job

    def pod(self, raw: Any, deleted: bool, now: float) -> None:
        """A watch or list observation of a pod."""
        meta = raw.metadata
        labels = meta.labels or {}
        owner = next((ref.uid for ref in meta.owner_references or [] if ref.controller), "")
        with self.lock:
            if meta.uid in self.before:
                return
            seen = self.pods.get(meta.uid)
            if seen is None:
                seen = PodSeen(
                    meta.uid, owner, labels.get(LABEL_JOB, ""), meta.namespace, meta.name,
                    int(labels.get(LABEL_ATTEMPT, -1)), int(labels.get(LABEL_RANK, -1)),
                )  # fmt: skip
                self.pods[meta.uid] = seen
                self.slots[(owner, seen.attempt, seen.rank)].add(meta.uid)
                if owner not in self.jobs:
                    self.violations.append(f"orphan pod {meta.namespace}/{meta.name}: owner {owner or 'none'}")
                elif len(self.slots[(owner, seen.attempt, seen.rank)]) > 1:
                    self.violations.append(
                        f"rank {seen.rank} of attempt {seen.attempt} of {seen.job} created twice ({meta.name})"
                    )
            seen.phase = (raw.status.phase if raw.status else None) or seen.phase
            seen.deleted = seen.deleted or deleted
            self._check(owner, now)

    def gone_except(self, uids: set[str], now: float) -> None:
        """A full list: pods not in it were deleted while the watch was away."""
        with self.lock:
            for seen in self.pods.values():
                if not seen.deleted and seen.uid not in uids:
                    seen.deleted = True
                    self._check(seen.job_uid, now)

    def _check(self, job_uid: str, now: float) -> None:
        job = self.jobs.get(job_uid)
        if job is None:
            return
        alive = [pod for pod in self.pods.values() if pod.job_uid == job_uid and pod.alive]
        attempts = {pod.attempt for pod in alive}
        self._interval(self.overlap_since, job_uid, len(attempts) > 1, now, "overlap")
        newest = max(attempts, default=-1)
        members = [pod for pod in alive if pod.attempt == newest]
        finishing = any(  # a rank that exited 0: the gang is ending, not missing a member
            pod.job_uid == job_uid and pod.attempt == newest and pod.phase == "Succeeded" for pod in self.pods.values()
        )
        self._interval(self.partial_since, job_uid, 0 < len(members) < job.nodes and not finishing, now, "partial")

    def _interval(self, opened: dict[str, float], key: str, now_true: bool, now: float, kind: str) -> None:
        if now_true:
            opened.setdefault(key, now)
            return
        since = opened.pop(key, None)
        if since is None:
            return
        length = now - since
        if kind == "overlap":
            self.max_overlap = max(self.max_overlap, length)
            if length > OVERLAP_GRACE:
                job = self.jobs[key]
                self.violations.append(f"two attempts of {job.namespace}/{job.name} alive together for {length:.1f}s")
        elif length > self.max_partial:
            self.max_partial = length
            self.max_partial_job = f"{self.jobs[key].namespace}/{self.jobs[key].name}"

    def close(self, now: float) -> None:
        """Close the open intervals (at the end of the run)."""
        with self.lock:
            for opened, kind in ((self.overlap_since, "overlap"), (self.partial_since, "partial")):
                for key in list(opened):
                    self._interval(opened, key, False, now, kind)


class PodWatcher(threading.Thread):
    """List, then watch, every trainer pod in the soak's namespaces (again after any error)."""

    def __init__(self, cluster: ControlPlane, ledger: Ledger) -> None:
        super().__init__(name="soak-pod-watch", daemon=True)
        self.core = kubernetes.client.CoreV1Api(cluster.api_client())
        self.ledger = ledger
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                listed = self.core.list_pod_for_all_namespaces(label_selector=LABEL_JOB, _request_timeout=10)
                now = time.monotonic()
                for pod in listed.items:
                    self.ledger.pod(pod, pod.metadata.deletion_timestamp is not None, now)
                self.ledger.gone_except({pod.metadata.uid for pod in listed.items}, now)
                stream = kubernetes.watch.Watch().stream(
                    self.core.list_pod_for_all_namespaces,
                    label_selector=LABEL_JOB,
                    resource_version=listed.metadata.resource_version,
                    timeout_seconds=20,
                    _request_timeout=30,
                )
                for event in stream:
                    self.ledger.pod(event["object"], event["type"] == "DELETED", time.monotonic())
                    if self.stopping.is_set():
                        return
            except Exception:  # the API server is down, or the watch expired: list again
                self.stopping.wait(0.5)


# --- faults on the control plane ------------------------------------------------------------------------


# Components restarted with the API server and etcd, as a real control plane's would be once they lose
# their lease. Both stall after a few outages a minute: the controller manager's garbage collector (defect 15)
# and the scheduler, which stopped looking at new pods (no PodScheduled condition on a Ready, untainted node:
# defect 22).
RESTARTED_WITH_THE_API = ("kube-controller-manager", "kube-scheduler")


def restart_component(cluster: ControlPlane, name: str, down_seconds: float) -> None:
    """Stop a control-plane process (SIGTERM), wait, and start it again with the same arguments.

    `RESTARTED_WITH_THE_API` follow the API server and etcd. The controller manager's garbage collector retries
    a failed delete with a per-object exponential back-off that only a success resets: after a few
    outages in minutes (this soak makes one every ~40 s) the children of deleted jobs wait up to
    16 minutes, and a re-created job of the same name waits for them (`WaitingForOldChildren`). On a
    real control plane a controller manager that cannot renew its lease exits and is restarted; the
    operator does not do the collector's work itself, which would need `delete` on Roles and
    RoleBindings in every watched namespace (docs/notes/gang-integrity.md, defect 14)."""
    _restart_process(cluster, name, down_seconds)
    if name in ("kube-apiserver", "etcd"):
        for dependent in RESTARTED_WITH_THE_API:
            _restart_process(cluster, dependent, 0)


def _restart_process(cluster: ControlPlane, name: str, down_seconds: float) -> None:
    index = next(i for i, proc in enumerate(cluster.processes) if proc.name == name)
    old = cluster.processes[index]
    old.stop()
    time.sleep(down_seconds)
    cluster.processes[index] = ManagedProcess(name, old.argv, old.log_path.parent)

    def ready() -> bool:
        try:
            kubernetes.client.CoreV1Api(cluster.client).list_namespace(limit=1, _request_timeout=3)
        except Exception:
            return False
        return True

    wait_until(ready, 180, f"{name} back", interval=0.5)


# --- the soak -----------------------------------------------------------------------------------------------


@dataclass
class Summary:
    """What one soak run did and found."""

    seed: int
    seconds: float
    jobs: int
    succeeded: int
    deleted: int
    faults: Counter[str]
    restarts: int
    resumes: int
    pods: int
    expected_pods: int
    max_overlap: float
    max_partial: float
    max_partial_job: str
    stuck: list[str]
    violations: list[str]
    short_attempts: list[str] = field(default_factory=list)  # attempts with fewer pods than nodes
    waiting: str = ""  # with stuck jobs: every job pod's phase, node and scheduling reason, and the nodes

    def row(self) -> str:
        """One line of the summary table."""
        faults = ", ".join(f"{kind} {self.faults[kind]}" for kind in FAULTS if self.faults[kind])
        return (
            f"| {self.seed} | {self.seconds / 60:.1f} | {self.jobs} ({self.succeeded} Succeeded, {self.deleted} deleted) "
            f"| {faults} | {self.restarts} | {self.resumes} | {self.pods} / {self.expected_pods} "
            f"| {self.max_overlap:.1f} | {self.max_partial:.1f} ({self.max_partial_job}) | {len(self.stuck)} "
            f"| {len(self.violations)} |"
        )


TABLE_HEADER = (
    "| seed | minutes | jobs | faults by kind | restarts | resumes | pods created / nodes x attempts "
    "| max overlap s | max partial-gang s | stuck | violations |\n|---|---|---|---|---|---|---|---|---|---|---|"
)


class Soak:
    """One seeded run: jobs and faults for `seconds`, then every job to a final phase, then the checks."""

    def __init__(
        self,
        cluster: ControlPlane,
        agent: NodeAgent,
        operators: list[Operator],
        namespaces: list[str],
        seed: int,
        seconds: float,
        max_live: int = 6,
        faults: tuple[str, ...] = FAULTS,
        log: Callable[[str], None] = print,
    ) -> None:
        self.cluster, self.agent, self.operators, self.namespaces = cluster, agent, operators, namespaces
        self.seed, self.seconds, self.max_live, self.fault_kinds = seed, seconds, max_live, faults
        self.rng = random.Random(seed)
        self.custom = kubernetes.client.CustomObjectsApi(cluster.api_client())
        self.core = kubernetes.client.CoreV1Api(cluster.api_client())
        self.ledger = Ledger()
        self.faults: Counter[str] = Counter()
        self.log = log
        self.names = 0
        self.down: list[tuple[float, Operator]] = []  # operators to start again, and when
        self.up_since = {id(operator): time.monotonic() for operator in operators}  # when each replica (re)started
        self.exits: list[str] = []  # replicas that exited by themselves once running (violations)
        self.suspended: dict[str, float] = {}  # job uid -> when it was suspended
        self.real: JobSeen | None = None  # the real-trainer job, if any
        self.real_host: Path | None = None
        self.real_killed_at: int | None = None  # the step its metrics.jsonl had reached when rank 1 was killed
        self.real_killed_attempt = -1
        self.real_kill_waiting: str | None = None  # why rank 1 was not killed yet, as last seen

    # --- jobs -----------------------------------------------------------------------------------------

    def submit(
        self, namespace: str, name: str, nodes: int, node_selector: dict[str, str] | None = None, steps: int = 0
    ) -> JobSeen | None:
        """Create a job of `steps` seconds (0: 3-8, drawn) retrying while the control plane is down;
        None when it could not be created."""
        body = soak_job(name, nodes, steps or self.rng.randint(3, 8))
        if node_selector:
            body["spec"]["pod"]["nodeSelector"] = node_selector
        for _ in range(40):
            try:
                created = self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
            except ApiException as error:
                if error.status == 409:  # its predecessor is still being deleted
                    time.sleep(0.5)
                    continue
                if error.status and error.status < 500:
                    raise
                time.sleep(0.5)
                continue
            except Exception:
                time.sleep(0.5)
                continue
            job = JobSeen(created["metadata"]["uid"], namespace, name, nodes)
            self.ledger.job(job)
            return job
        return None

    def live_jobs(self) -> list[JobSeen]:
        """Jobs neither deleted nor seen finished."""
        with self.ledger.lock:
            return [job for job in self.ledger.jobs.values() if not job.deleted and job.final is None]

    def fault_targets(self) -> list[JobSeen]:
        """Live jobs the random faults may hit (not the real-trainer job: its fault is planned)."""
        return [job for job in self.live_jobs() if job is not self.real]

    def start_real_trainer(self, host: Path) -> None:
        """Submit the real-trainer job (data and output under `host`)."""
        gsm8k_dir(host / "data")
        (host / "output").mkdir(mode=0o777, exist_ok=True)
        (host / "output").chmod(0o777)
        host.chmod(0o755)
        name = f"soak-{self.seed}-real"
        body = real_trainer_job(name, host)
        for _ in range(40):
            try:
                created = self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespaces[0], PLURAL, body)
                break
            except Exception:
                time.sleep(0.5)
        else:
            raise RuntimeError("could not create the real-trainer job")
        self.real = JobSeen(created["metadata"]["uid"], self.namespaces[0], name, 2)
        self.real_host = host
        self.ledger.job(self.real)

    def real_metrics(self) -> Path:
        assert self.real is not None and self.real_host is not None
        return self.real_host / "output" / self.real.name / "metrics.jsonl"

    def real_kill_blocker(self) -> str | None:
        """Why the real trainer's rank 1 cannot be killed after a checkpoint now (None: it can)."""
        assert self.real is not None
        checkpoints = self.real_metrics().parent / "checkpoints"
        saved = [int(path.name.removeprefix("step-")) for path in checkpoints.glob("step-*") if path.is_dir()]
        steps = metric_steps(self.real_metrics())
        if not saved:
            return f"no checkpoint on disk yet (metrics at step {max(steps, default=None)})"
        if not steps or max(steps) <= max(saved):
            return f"training not past the checkpoint at step {max(saved)} yet"
        if max(steps) >= REAL_STEPS:
            return "training has reached its last step"
        phases = sorted(f"{pod.name}={pod.phase}" for pod in self.pods_of(self.real) if pod.rank == 1)
        if not any(phase.endswith("=Running") for phase in phases):
            return f"no rank 1 pod Running ({', '.join(phases) or 'none'})"
        return None

    def kill_real_after_checkpoint(self) -> bool:
        """SIGKILL the real-trainer job's rank 1 if it is past a checkpoint on disk; True once it is killed."""
        assert self.real is not None
        blocker = self.real_kill_blocker()
        if blocker != self.real_kill_waiting:
            self.real_kill_waiting = blocker
            if blocker is not None:
                self.log(f"[soak {self.seed}] real trainer: waiting to kill rank 1: {blocker}")
        if blocker is not None:
            return False
        rank1 = [pod for pod in self.pods_of(self.real) if pod.rank == 1 and pod.phase == "Running"]
        try:
            self.agent.kill(self.real.namespace, rank1[0].name, signal.SIGKILL)
        except (LookupError, IndexError) as error:
            reason = f"the node agent could not kill rank 1: {error}"
            if reason != self.real_kill_waiting:
                self.log(f"[soak {self.seed}] real trainer: waiting to kill rank 1: {reason}")
            self.real_kill_waiting = reason
            return False
        time.sleep(1.0)  # what rank 0 wrote by now is the work at risk
        self.real_killed_at = max(metric_steps(self.real_metrics()), default=0)
        self.real_killed_attempt = rank1[0].attempt
        self.real.hit_attempts.add(rank1[0].attempt)
        self.faults["kill_pod"] += 1
        self.log(f"[soak {self.seed}] killed the real trainer's rank 1 at step {self.real_killed_at}")
        return True

    def kill_real_trainer_loop(self, stopping: threading.Event) -> None:
        """Poll every 0.2 s until the real trainer's rank 1 is killed once (or the job ends, or the run stops).

        A thread of its own: the fault loop can be busy for seconds (an API server or etcd outage) and
        a tiny trainer passes a checkpoint interval in about ten.
        """
        assert self.real is not None
        while not stopping.is_set() and self.real.final is None:
            try:
                if self.kill_real_after_checkpoint():
                    return
            except Exception as error:  # a file mid-write, a ledger change: look again
                self.real_kill_waiting = f"{type(error).__name__}: {error}"
            stopping.wait(0.2)

    def check_real_trainer(self) -> list[str]:
        """The real-trainer job resumed from its last checkpoint: what is wrong (empty: nothing)."""
        if self.real is None:
            return []
        problems: list[str] = []
        final = self.real.final or {}
        if final.get("phase") != "Succeeded":
            return [f"the real-trainer job ended {final.get('phase')}: {final.get('message')}"]
        if self.real_killed_at is None:
            return [
                f"the real-trainer job finished before its rank 1 was killed after a checkpoint: {self.real_kill_waiting}"
            ]
        after = [pod for pod in self.ledger.pods.values()
                 if pod.job_uid == self.real.uid and pod.rank == 0 and pod.attempt > self.real_killed_attempt]  # fmt: skip
        if not after:
            return ["no gang followed the kill of the real trainer's rank 1"]
        newest = min(after, key=lambda pod: pod.attempt)  # the gang that replaced the killed one
        log = self.agent.logs(newest.namespace, newest.name)
        resumed = [int(step) for step in re.findall(r"resumed from \S+ at step (\d+)", log)]
        if not resumed:
            problems.append(f"the last gang ({newest.name}) did not resume from a checkpoint")
        elif not (resumed[0] >= REAL_SAVE_INTERVAL and self.real_killed_at - resumed[0] <= REAL_SAVE_INTERVAL):
            # metrics.jsonl may lag rank 0, and a gang stopped by SIGTERM saves at its current step:
            # the resume may be past the step read at the kill, never more than save_interval before it
            problems.append(f"resumed at step {resumed[0]} after the kill at step {self.real_killed_at}")
        steps = metric_steps(self.real_metrics())
        if not steps or steps[-1] != REAL_STEPS:
            problems.append(f"metrics.jsonl ends at step {steps[-1] if steps else None}, not {REAL_STEPS}")
        return problems

    def read(self, job: JobSeen) -> dict[str, Any] | None:
        """The job as stored (None: gone or unreadable now)."""
        try:
            found: dict[str, Any] = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, job.namespace, PLURAL, job.name, _request_timeout=5
            )
        except Exception:
            return None
        return found if found["metadata"]["uid"] == job.uid else None

    def observe_finished(self) -> None:
        """Record the final status of jobs that finished (a finished job's record never changes)."""
        for job in self.live_jobs():
            found = self.read(job)
            status = (found or {}).get("status") or {}
            if status.get("phase") in ("Succeeded", "Failed"):
                job.final = status

    # --- faults ---------------------------------------------------------------------------------------

    def pods_of(self, job: JobSeen) -> list[PodSeen]:
        with self.ledger.lock:
            return [pod for pod in self.ledger.pods.values() if pod.job_uid == job.uid and not pod.deleted]

    def fault(self, kind: str) -> bool:
        """Inject one fault of `kind`; False when there was nothing to inject it on."""
        live = self.fault_targets()
        if kind in ("kill_pod", "delete_pod"):
            candidates = [pod for job in live for pod in self.pods_of(job)]
            if kind == "kill_pod":
                candidates = [pod for pod in candidates if pod.phase == "Running"]
            if not candidates:
                return False
            pod = self.rng.choice(candidates)
            if kind == "kill_pod":
                try:
                    self.agent.kill(pod.namespace, pod.name, signal.SIGKILL)
                except LookupError:
                    return False
            if kind == "delete_pod":
                try:
                    self.core.delete_namespaced_pod(
                        pod.name, pod.namespace, grace_period_seconds=self.rng.choice([0, 1])
                    )
                except Exception:
                    return False
            self.ledger.jobs[pod.job_uid].hit_attempts.add(pod.attempt)
        elif kind == "kill_operator":
            alive = [operator for operator in self.operators if operator.process and operator.process.poll() is None]
            if len(alive) < 2:
                return False
            victim = self.rng.choice(alive)
            victim.kill()
            self.down.append((time.monotonic() + self.rng.uniform(2, 8), victim))
        elif kind in ("restart_apiserver", "restart_etcd"):
            restart_component(self.cluster, kind.removeprefix("restart_").replace("apiserver", "kube-apiserver"),
                              self.rng.uniform(2, 6))  # fmt: skip
        elif kind == "recreate_job":
            if not live:
                return False
            job = self.rng.choice(live)
            try:
                self.custom.delete_namespaced_custom_object(GROUP, VERSION, job.namespace, PLURAL, job.name)
            except Exception:
                return False
            job.deleted = True
            time.sleep(self.rng.uniform(0, 2))
            self.submit(job.namespace, job.name, job.nodes)
        elif kind == "suspend_resume":
            ready = [job for job in live if job.uid not in self.suspended]
            if not ready:
                return False
            job = self.rng.choice(ready)
            if not self.set_suspend(job, True):
                return False
            self.suspended[job.uid] = time.monotonic()
        self.faults[kind] += 1
        return True

    def set_suspend(self, job: JobSeen, value: bool) -> bool:
        patch = {"spec": {"runPolicy": {"suspend": value}}}
        try:
            self.custom.patch_namespaced_custom_object(GROUP, VERSION, job.namespace, PLURAL, job.name, patch)
        except Exception:
            return False
        return True

    def resume_suspended(self, force: bool = False) -> None:
        """Resume jobs the operator shows Suspended (at least 2 s after they were suspended)."""
        for uid, since in list(self.suspended.items()):
            job = self.ledger.jobs[uid]
            if job.deleted:
                self.suspended.pop(uid)
                continue
            found = self.read(job)
            phase = ((found or {}).get("status") or {}).get("phase")
            if (force or time.monotonic() - since > 2) and phase == "Suspended" and self.set_suspend(job, False):
                job.resumes += 1
                self.suspended.pop(uid)

    def restart_operators(self, force: bool = False) -> None:
        """Start the killed replicas that are due. One that cannot start yet (its startup list fails
        while the API server or etcd is down, and it exits) is tried again 3 s later, as a Deployment's
        pod would be restarted; `force` waits until every one runs."""
        deadline = time.monotonic() + 180
        self.notice_exits()
        while True:
            for due, operator in list(self.down):
                if not force and time.monotonic() < due:
                    continue
                self.down.remove((due, operator))
                try:
                    operator.start()
                    self.up_since[id(operator)] = time.monotonic()
                except (AssertionError, TimeoutError, OSError) as error:
                    operator.kill()
                    self.log(f"[soak {self.seed}] operator restart failed ({type(error).__name__}), again in 3 s")
                    self.down.append((time.monotonic() + 3, operator))
            if not force or not self.down or time.monotonic() > deadline:
                return
            time.sleep(1)

    def notice_exits(self) -> None:
        """Replicas whose process ended without the soak killing it are started again 3 s later, as a
        Deployment's pod would be. One that had run for STARTUP_SECONDS is a violation: an operator must
        outlive API server and etcd outages (only a start during one may fail, and is tried again)."""
        waiting = {id(operator) for _, operator in self.down}
        for operator in self.operators:
            process = operator.process
            if id(operator) in waiting or process is None or process.poll() is None:
                continue
            ran = time.monotonic() - self.up_since.get(id(operator), 0.0)
            if ran > STARTUP_SECONDS:
                tail = " | ".join(operator.log().strip().splitlines()[-5:])
                self.exits.append(
                    f"operator replica exited by itself (rc {process.returncode}) after {ran:.0f} s: {tail}"
                )
            self.log(f"[soak {self.seed}] operator replica exited (rc {process.returncode}) after {ran:.0f} s")
            self.down.append((time.monotonic() + 3, operator))

    # --- the run ----------------------------------------------------------------------------------------

    def watch(self) -> PodWatcher:
        """Start recording pods; those that exist already (an earlier test's) are ignored."""
        leftovers = self.core.list_pod_for_all_namespaces(label_selector=LABEL_JOB).items
        self.ledger.before = {pod.metadata.uid for pod in leftovers}
        watcher = PodWatcher(self.cluster, self.ledger)
        watcher.start()
        return watcher

    def own_pods(self) -> int:
        """Pods seen of this soak's jobs."""
        with self.ledger.lock:
            return sum(1 for pod in self.ledger.pods.values() if pod.job_uid in self.ledger.jobs)

    def run(self) -> Summary:
        watcher = self.watch()
        started = time.monotonic()
        try:
            return self._run(watcher, started)
        except BaseException:
            self.log(f"[soak {self.seed}] harness error:\n{traceback.format_exc()}")
            raise

    def _run(self, watcher: PodWatcher, started: float) -> Summary:
        if self.real is not None:
            threading.Thread(
                target=self.kill_real_trainer_loop, args=(watcher.stopping,), name="soak-real-kill", daemon=True
            ).start()
        try:
            while time.monotonic() - started < self.seconds:
                self.restart_operators()
                self.resume_suspended()
                self.observe_finished()
                if len(self.fault_targets()) < self.max_live:
                    self.names += 1
                    namespace = self.rng.choice(self.namespaces)
                    self.submit(namespace, f"soak-{self.seed}-{self.names}", self.rng.randint(1, 3))
                if self.rng.random() < 0.7:
                    kind = self.rng.choice(self.fault_kinds)
                    if self.fault(kind):
                        self.log(f"[soak {self.seed}] {time.monotonic() - started:6.1f}s {kind}")
                time.sleep(self.rng.uniform(1.0, 3.0))
            self.restart_operators(force=True)
            deadline = time.monotonic() + FINAL_TIMEOUT
            while self.live_jobs() and time.monotonic() < deadline:
                self.resume_suspended(force=True)
                self.observe_finished()
                time.sleep(1)
            stuck = [f"{job.namespace}/{job.name}: {self.read(job)}" for job in self.live_jobs()]
            # where a stuck gang's pods wait: unscheduled (scheduler, node) or not started (node agent)
            waiting = self.where_pods_wait() if stuck else ""
            time.sleep(3)  # the last pods' events
        finally:
            self.restart_operators(force=True)
            watcher.stopping.set()
        self.ledger.close(time.monotonic())
        return dataclasses.replace(self.summarize(time.monotonic() - started, stuck), waiting=waiting)

    def where_pods_wait(self) -> str:
        """One line per live job pod (phase, node, why unscheduled) and per node (Ready, taints), for a
        stuck run's failure message."""
        lines = []
        try:
            for pod in self.core.list_pod_for_all_namespaces(label_selector=LABEL_JOB, _request_timeout=10).items:
                scheduled = next((c for c in pod.status.conditions or [] if c.type == "PodScheduled"), None)
                why = (
                    ""
                    if scheduled is None or scheduled.status == "True"
                    else f" {scheduled.reason}: {scheduled.message}"
                )
                deleting = " deleting" if pod.metadata.deletion_timestamp else ""
                lines.append(
                    f"pod {pod.metadata.namespace}/{pod.metadata.name} {pod.status.phase}{deleting}"
                    f" node={pod.spec.node_name}{why}"
                )
            for node in self.core.list_node(_request_timeout=10).items:
                ready = next((c for c in node.status.conditions or [] if c.type == "Ready"), None)
                taints = [f"{t.key}:{t.effect}" for t in node.spec.taints or []]
                lines.append(
                    f"node {node.metadata.name} Ready={ready.status if ready else None}"
                    f" ({ready.last_heartbeat_time if ready else ''}) taints={taints}"
                )
        except Exception as error:  # diagnostics only: never hide the stuck jobs themselves
            lines.append(f"(could not list pods and nodes: {error})")
        lines.append(f"node agent runs: {len(self.agent.runs)}")
        return "where the pods wait:\n" + "\n".join(lines)

    def summarize(self, seconds: float, stuck: list[str]) -> Summary:
        ledger = self.ledger
        violations = list(ledger.violations) + self.check_real_trainer() + self.exits
        jobs = list(ledger.jobs.values())
        attempts_with_pods: dict[str, set[int]] = defaultdict(set)
        for pod in ledger.pods.values():
            if pod.job_uid in ledger.jobs:  # others are orphans, reported as violations when seen
                attempts_with_pods[pod.job_uid].add(pod.attempt)
        expected = sum(ledger.jobs[uid].nodes * len(attempts) for uid, attempts in attempts_with_pods.items())
        per_attempt = Counter((pod.job_uid, pod.attempt) for pod in ledger.pods.values() if pod.job_uid in ledger.jobs)
        short = [
            f"{ledger.jobs[uid].namespace}/{ledger.jobs[uid].name} attempt {attempt}: {count} of {ledger.jobs[uid].nodes}"
            for (uid, attempt), count in sorted(per_attempt.items()) if count != ledger.jobs[uid].nodes
        ]  # fmt: skip
        for job in jobs:
            if job.final is None:
                continue
            phase, attempt, restarts = job.final.get("phase"), job.final.get("attempt", 0), job.final.get("restarts", 0)
            if phase != "Succeeded":
                violations.append(f"{job.namespace}/{job.name} ended {phase}: {job.final.get('message')}")
            if not restarts <= attempt <= restarts + job.resumes:  # read the Events only when they matter
                events = self.job_events(job)
                violation = restart_accounting_violation(attempt, restarts, job.resumes, events)
                if violation:
                    violations.append(f"{job.namespace}/{job.name}: {violation}")
            unanswered = [hit for hit in job.hit_attempts if hit >= attempt and phase != "Succeeded"]
            if unanswered:
                violations.append(f"{job.namespace}/{job.name}: a fault hit attempt {unanswered} and nothing followed")
        return Summary(
            seed=self.seed,
            seconds=seconds,
            jobs=len(jobs),
            succeeded=sum(1 for job in jobs if job.final and job.final.get("phase") == "Succeeded"),
            deleted=sum(1 for job in jobs if job.deleted),
            faults=self.faults,
            restarts=sum(int((job.final or {}).get("restarts", 0)) for job in jobs),
            resumes=sum(job.resumes for job in jobs),
            pods=self.own_pods(),
            expected_pods=expected,
            max_overlap=ledger.max_overlap,
            max_partial=ledger.max_partial,
            max_partial_job=ledger.max_partial_job,
            stuck=stuck,
            violations=violations,
            short_attempts=short,
        )

    def job_events(self, job: JobSeen) -> list[JobEvent]:
        """The job's Events, oldest first (an unreadable list is reported as one Event, for the message)."""
        try:
            events = self.core.list_namespaced_event(
                job.namespace, field_selector=f"involvedObject.uid={job.uid}", _request_timeout=10
            ).items
        except Exception as error:  # diagnostics: the violation is reported either way
            return [JobEvent("Error", "EventsUnreadable", str(error))]
        events.sort(key=lambda event: event.first_timestamp or event.metadata.creation_timestamp)
        return [JobEvent(event.type or "", event.reason or "", event.message or "") for event in events]

    def clean_up_and_check_orphans(self, timeout: float = 180) -> list[str]:
        """Delete every job; return what is left of their children after `timeout` (none expected)."""
        for namespace in self.namespaces:
            self.custom.delete_collection_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        rbac = kubernetes.client.RbacAuthorizationV1Api(self.cluster.api_client())

        def leftovers() -> list[str]:
            found: list[str] = []
            for namespace in self.namespaces:
                for kind, items in (
                    ("Pod", self.core.list_namespaced_pod(namespace, label_selector=LABEL_JOB).items),
                    ("ConfigMap", self.core.list_namespaced_config_map(namespace, label_selector=LABEL_JOB).items),
                    ("Service", self.core.list_namespaced_service(namespace, label_selector=LABEL_JOB).items),
                    ("ServiceAccount", self.core.list_namespaced_service_account(namespace, label_selector=LABEL_JOB).items),
                    ("Role", rbac.list_namespaced_role(namespace, label_selector=LABEL_JOB).items),
                    ("RoleBinding", rbac.list_namespaced_role_binding(namespace, label_selector=LABEL_JOB).items),
                ):  # fmt: skip
                    found += [f"{kind} {namespace}/{item.metadata.name}" for item in items]
            return found

        deadline = time.monotonic() + timeout
        while (left := leftovers()) and time.monotonic() < deadline:
            time.sleep(2)
        return left


def summary_json(summary: Summary) -> str:
    """The summary as one JSON line (for the long soak's record)."""
    data = {**summary.__dict__, "faults": dict(summary.faults)}
    return json.dumps(data, default=str)
