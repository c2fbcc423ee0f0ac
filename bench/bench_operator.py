"""The operator at scale (issue 8): kube-sft's operator and Kubeflow's training-operator on one KWOK cluster.

    python -m bench.bench_operator                 # the issue's load: 200 nodes, 500 + 100/min x 5, 50 failures
    python -m bench.bench_operator --quick         # development: 50 nodes, 50 + 50/min x 1, 5 failures
    python -m bench.bench_operator --jobs 200 --steady-minutes 2 --only sft

One real control plane (devcluster: etcd, kube-apiserver, controller-manager, scheduler) plus
KWOK (hack/kwok) simulating fake nodes with 8 `nvidia.com/gpu` each and pod lifecycles (hack/kwok/
stages.yaml: Running at once, Succeeded after --run-seconds, Failed with exit code 137 when the bench
annotates a pod). For each operator in turn (kube-sft's SFTJob, then the peer's PyTorchJob, each in
its own namespace, the other one stopped) the same load runs: --jobs jobs of --nodes-per-job nodes
submitted at once, then --steady-per-minute jobs a minute for --steady-minutes minutes, with
--failures pod failures injected into running jobs spread over that time.

Measured from the bench's own watches (local receive times, so watch latency counts against the
operator): apply -> all pods created, apply -> the job says its pods run, pod failure seen -> the
replacement pods created; each job's final phase and pod count (duplicates); pods whose owner is gone
(orphans) and garbage collection after the jobs are deleted; the operator process's CPU seconds and
peak RSS (/proc: utime+stime, VmHWM); API requests, both cluster-wide (apiserver_request_total
diffed over the run) and the operator's own (the API server's audit log, one user per operator).

This file is the command line; the parts live in bench/operator_scale/: flavours.py (the operators under
test and their jobs), cluster.py (audited control plane, KWOK, accounts, CRDs, starting operators),
floor.py (the floor client), observe.py (watches, /proc meter, load sampler, py-spy), tracker.py (watch
events -> per-job timings, correctness), run.py (one operator under the load), readings.py, stats.py
and goals.py (pure parsing, statistics and issue 8's goals; unit-tested in tests/unit/bench/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

from bench.operator_scale.cluster import (
    KWOK_DIR,
    PEER_DIR,
    REPO,
    AuditedControlPlane,
    TracedControlPlane,
    admin_client,
    create_nodes,
    install_crds,
    kwok_binary,
    peer_directory,
    peer_webhook_objects,
    setup_accounts,
    start_kwok,
)
from bench.operator_scale.flavours import FLOOR, PEER, SFT, Object
from bench.operator_scale.floor import serve_floor
from bench.operator_scale.goals import evaluate_goals
from bench.operator_scale.run import QUICK, Run, Scale, log
from devcluster.binaries import read_env_file

RESULTS_FILE = REPO / "bench" / "results" / "operator.json"


def machine() -> Object:
    """Where the numbers come from."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def versions() -> Object:
    """Pinned versions of everything under test."""
    return {
        **read_env_file(REPO / "hack" / "controlplane" / "versions.env"),
        **read_env_file(KWOK_DIR / "versions.env"),
        **read_env_file(PEER_DIR / "versions.env"),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags; defaults are issue 8's load."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_operator", description=__doc__.splitlines()[0])
    default = Scale()
    parser.add_argument("--quick", action="store_true", help="development load: 50 nodes, 50 + 50/min x 1 min")
    parser.add_argument("--nodes", type=int, help=f"fake GPU nodes (default {default.nodes})")
    parser.add_argument("--jobs", type=int, help=f"jobs submitted at once (default {default.jobs})")
    parser.add_argument("--steady-per-minute", type=float, help=f"default {default.steady_per_minute}")
    parser.add_argument("--steady-minutes", type=float, help=f"default {default.steady_minutes}")
    parser.add_argument("--failures", type=int, help=f"injected pod failures (default {default.failures})")
    parser.add_argument("--nodes-per-job", type=int, help=f"default {default.nodes_per_job}")
    parser.add_argument("--run-seconds", type=float, help=f"pod Running -> Succeeded (default {default.run_seconds})")
    parser.add_argument("--settle-timeout", type=float, help=f"default {default.settle_timeout}")
    parser.add_argument(
        "--gc-timeout",
        type=float,
        help=f"wait for garbage collection after deleting the jobs (default {default.gc_timeout})",
    )
    parser.add_argument(
        "--only", type=lambda text: text.split(","), help="comma-separated runs out of sft,floor,peer (default: all)"
    )
    parser.add_argument("--serve-floor", metavar="NAMESPACE", help=argparse.SUPPRESS)  # the floor client's process
    parser.add_argument("--output", type=Path, default=RESULTS_FILE)
    parser.add_argument("--profile", type=Path, help="py-spy record kube-sft's operator into this file (raw stacks)")
    parser.add_argument("--keep", action="store_true", help="keep the cluster's work dir (logs, audit log)")
    parser.add_argument(
        "--no-cleanup",
        action="store_true",
        help="development: no garbage-collection check, namespaces kept (runs after the first then overlap its leftovers)",
    )
    parser.add_argument(
        "--trace-pods",
        action="store_true",
        help="audit-log every pod write with its bodies (with --keep: who wrote what)",
    )
    return parser.parse_args(argv)


def floor_scale(scale: Scale) -> Scale:
    """The floor's load: the burst only (its jobs never finish, so a steady wave would only queue)."""
    return replace(scale, steady_minutes=0, failures=0)


def scale_from(args: argparse.Namespace) -> Scale:
    """The preset (--quick or the issue's) with any explicit flag applied."""
    scale = QUICK if args.quick else Scale()
    overrides = {
        key: getattr(args, key)
        for key in (
            "nodes",
            "jobs",
            "steady_per_minute",
            "steady_minutes",
            "failures",
            "nodes_per_job",
            "run_seconds",
            "settle_timeout",
            "gc_timeout",
        )
        if getattr(args, key) is not None
    }
    return replace(scale, **overrides)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the results JSON."""
    args = parse_args(argv)
    if args.serve_floor:
        serve_floor(args.serve_floor)
        return 0
    scale = scale_from(args)
    flavours = [flavour for flavour in (SFT, FLOOR, PEER) if flavour.short in (args.only or [flavour.short])]
    kwok_binary()
    if PEER in flavours:
        peer_directory()
    result: Object = {
        "benchmark": "operator-scale (issue 8)",
        "command": "python -m bench.bench_operator " + " ".join(sys.argv[1:] if argv is None else argv),
        "mode": "quick" if args.quick else "custom" if scale != Scale() else "full",
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "scale": asdict(scale),
        "runs": {},
    }
    if args.keep:
        os.environ["KUBE_SFT_KEEP_CLUSTER_DIR"] = "1"
    workdir = Path(tempfile.mkdtemp(prefix="kube-sft-bench-operator-"))
    log(f"starting the control plane in {workdir}")
    plane = TracedControlPlane if args.trace_pods else AuditedControlPlane
    cluster = plane.start(workdir=workdir)
    assert isinstance(cluster, AuditedControlPlane)  # start() is a classmethod typed as ControlPlane
    try:
        client = admin_client(cluster)
        install_crds(cluster, PEER in flavours)
        kubeconfigs = setup_accounts(cluster, client)
        if PEER in flavours:
            peer_webhook_objects(client)
        start_kwok(cluster, scale.run_seconds)
        seconds = create_nodes(client, scale.nodes)
        log(f"{scale.nodes} KWOK nodes Ready in {seconds:.1f}s")
        result["setup"] = {
            "control_plane_seconds": round(cluster.started_in, 1),
            "nodes_ready_seconds": round(seconds, 1),
        }
        for flavour in flavours:
            run = Run(flavour, cluster, client)
            load = floor_scale(scale) if flavour.floor else scale
            result["runs"][flavour.name] = run.execute(
                load, kubeconfigs[flavour.name], args.profile, cleanup=not args.no_cleanup
            )
            summary = result["runs"][flavour.name]
            log(f"{flavour.name}: {json.dumps(summary['latency'])} {json.dumps(summary['process'])}")
    finally:
        cluster.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    result["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    runs = result["runs"]
    result["goals"] = evaluate_goals(runs.get(SFT.name), runs.get(PEER.name), runs.get(FLOOR.name))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    log(f"results -> {args.output}")
    print(json.dumps(result["goals"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
