"""Every metric the chart's dashboard and alerts query is exported by the operator or the trainer."""

import json
import re
from pathlib import Path

import yaml

from sft_operator import metrics
from sft_trainer.report.prometheus import TrainerMetrics

FILES = Path(__file__).resolve().parents[3] / "charts" / "kube-sft" / "files"
PROMQL_WORDS = {
    "sum", "by", "rate", "increase", "histogram_quantile", "max", "min", "avg", "time", "and", "or", "unless",
    "le", "label_values", "without", "on", "ignoring", "absent", "count",
}  # fmt: skip


def dashboard_queries() -> list[str]:
    dashboard = json.loads((FILES / "dashboard.json").read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    queries += [var["query"] for var in dashboard["templating"]["list"] if var["type"] == "query"]
    return queries


def alert_queries() -> list[str]:
    groups = yaml.safe_load((FILES / "alerts.yaml").read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def metric_names(promql: str) -> set[str]:
    """Series names in a PromQL expression (identifiers that are neither functions, keywords nor labels)."""
    promql = re.sub(r"label_values\((.*),\s*\w+\)", r"\1", promql)  # Grafana: label_values(series, label)
    without_strings = re.sub(r'"[^"]*"', '""', promql)
    without_labels = re.sub(r"\{[^}]*\}", "", without_strings)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_labels)
    without_groupings = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", without_ranges)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_groupings))
    return {name for name in names if name not in PROMQL_WORDS}


def exported() -> set[str]:
    return metrics.exported_names(metrics.REGISTRY) | metrics.exported_names(TrainerMetrics().registry)


def test_every_queried_metric_is_exported() -> None:
    queries = dashboard_queries() + alert_queries()
    assert len(queries) > 15
    used = set().union(*(metric_names(query) for query in queries))
    assert used, "no metric names parsed"
    assert used <= exported(), f"not exported: {sorted(used - exported())}"


def test_the_issue_names_are_exported() -> None:
    names = exported()
    assert {"kube_sft_jobs", "kube_sft_jobs_created_total", "kube_sft_jobs_succeeded_total"} <= names
    assert {"kube_sft_jobs_failed_total", "kube_sft_job_restarts_total", "kube_sft_reconcile_errors_total"} <= names
    assert "kube_sft_reconcile_duration_seconds_bucket" in names
    trainer = {"step", "loss", "val_loss", "tokens_per_second", "mfu", "data_wait_seconds_bucket"}
    assert {f"kube_sft_trainer_{name}" for name in trainer} <= names
    assert "kube_sft_trainer_checkpoint_duration_seconds_count" in names


def test_parser_finds_names() -> None:
    query = 'histogram_quantile(0.99, sum by (le) (rate(kube_sft_reconcile_duration_seconds_bucket{a="b"}[5m])))'
    assert metric_names(query) == {"kube_sft_reconcile_duration_seconds_bucket"}


def test_phase_tracker_counts_jobs_not_events() -> None:
    tracker = metrics.PhaseTracker()
    tracker.set("ns", "a", "Running")
    tracker.set("ns", "a", "Running")
    tracker.set("ns", "b", "Pending")
    assert metrics.REGISTRY.get_sample_value("kube_sft_jobs", {"phase": "Running"}) == 1
    tracker.set("ns", "a", None)
    assert metrics.REGISTRY.get_sample_value("kube_sft_jobs", {"phase": "Running"}) == 0


def test_operator_exports_process_queue_and_time_to_running() -> None:
    names = metrics.exported_names(metrics.REGISTRY)
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total", "process_start_time_seconds"} <= names
    assert {"kube_sft_workqueue_depth", "kube_sft_job_time_to_running_seconds_bucket"} <= names


def test_time_to_running_is_observed_on_the_first_running_only() -> None:
    from datetime import UTC, datetime, timedelta

    created = datetime(2026, 1, 1, tzinfo=UTC)
    count = lambda: metrics.REGISTRY.get_sample_value("kube_sft_job_time_to_running_seconds_count") or 0.0  # noqa: E731
    total = lambda: metrics.REGISTRY.get_sample_value("kube_sft_job_time_to_running_seconds_sum") or 0.0  # noqa: E731
    before, before_sum = count(), total()
    metrics.record_transition("Initializing", "Running", 0, 0, "", created, created + timedelta(seconds=90))
    assert (count() - before, total() - before_sum) == (1.0, 90.0)
    metrics.record_transition("Running", "Running", 0, 0, "", created, created + timedelta(seconds=99))
    metrics.record_transition("Restarting", "Running", 1, 1, "", created, created + timedelta(seconds=300))
    assert count() - before == 1.0


def test_dashboard_keeps_same_named_jobs_of_namespaces_apart() -> None:
    """A job is (namespace, name): no aggregation or legend may merge two namespaces' jobs of one name."""
    dashboard = json.loads((FILES / "dashboard.json").read_text())
    targets = [target for panel in dashboard["panels"] for target in panel["targets"]]
    for target in targets:
        for grouping in re.findall(r"\bby\s*\(([^)]*)\)", target["expr"]):
            labels = {label.strip() for label in grouping.split(",")}
            assert "sftjob" not in labels or "sftjob_namespace" in labels, target["expr"]
        if "{{sftjob}}" in target.get("legendFormat", ""):
            assert "{{sftjob_namespace}}" in target["legendFormat"], target
