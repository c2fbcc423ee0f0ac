"""Issue 8's goals, judged from the runs' results (kube-sft, the peer, the floor). Pure."""

from __future__ import annotations

from typing import Any

from bench.operator_scale.flavours import Object
from bench.operator_scale.stats import ratio


def evaluate_goals(ours: Object | None, peer: Object | None, floor: Object | None = None) -> dict[str, Object]:
    """Issue 8's goals from the run results (any may be None when that run did not happen); the floor's
    burst p99 is shown beside ours: what any operator could reach on this control plane."""

    def get(run: Object | None, *path: str) -> Any:
        value: Any = run
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    p99 = get(ours, "latency", "apply_to_pods_created", "p99")
    burst_p99 = get(ours, "latency_by_wave", "burst", "apply_to_pods_created", "p99")
    steady_p99 = get(ours, "latency_by_wave", "steady", "apply_to_pods_created", "p99")
    peer_p99 = get(peer, "latency", "apply_to_pods_created", "p99")
    rss = get(ours, "process", "peak_rss_mb")
    per_job = get(ours, "api_requests", "operator_per_job")
    peer_per_job = get(peer, "api_requests", "operator_per_job")
    goals: dict[str, Object] = {
        "p99_apply_to_pods_created_under_2s": {"value": p99, "target": 2.0, "met": p99 is not None and p99 < 2.0},
        "p99_apply_to_pods_created_under_peer": {
            "value": p99,
            "peer": peer_p99,
            "met": None if p99 is None or peer_p99 is None else p99 < peer_p99,
        },
        "p99_apply_to_pods_created_burst_under_2s": {
            "value": burst_p99,
            "floor": get(floor, "latency_by_wave", "burst", "apply_to_pods_created", "p99"),
            "peer": get(peer, "latency_by_wave", "burst", "apply_to_pods_created", "p99"),
            "target": 2.0,
            "met": None if burst_p99 is None else burst_p99 < 2.0,
        },
        "p99_apply_to_pods_created_steady_wave_under_2s": {
            "value": steady_p99,
            "peer": get(peer, "latency_by_wave", "steady", "apply_to_pods_created", "p99"),
            "target": 2.0,
            "met": None if steady_p99 is None else steady_p99 < 2.0,
        },
        "peak_rss_under_300mb": {"value": rss, "target": 300, "met": rss is not None and rss < 300},
        "api_requests_per_job_within_1_5x_peer": {
            "value": per_job,
            "peer": peer_per_job,
            "ratio": ratio(per_job, peer_per_job),
            "met": None if per_job is None or not peer_per_job else per_job <= 1.5 * peer_per_job,
        },
    }
    for name, run in (("nothing_lost", ours), ("nothing_lost_peer", peer)):
        check = get(run, "correctness")
        goals[name] = {
            "met": None if check is None else bool(check.get("ok")),
            "detail": None if check is None else {k: v for k, v in check.items() if k != "ok"},
        }
    return goals
