"""Render the chart's Grafana dashboard to docs/img/dashboard.png from a real training run.

    .venv/bin/python hack/render_dashboard.py [--out docs/img] [--max-steps 600]

What happens, all real (no Grafana needed, no fake series):
1. a real control plane (devcluster: etcd, kube-apiserver, controller-manager, scheduler), the
   test node agent, the SFTJob CRD and the operator (`python -m sft_operator`) as a local process;
2. the project's demo run (examples/local/demo.yaml: a small Llama learns two-digit addition on
   the CPU) submitted as an SFTJob; the node agent runs its trainer pod, which serves /metrics;
3. a real Prometheus (Debian package) scrapes the operator and the trainer pod every second;
4. every panel's PromQL from charts/kube-sft/files/dashboard.json is evaluated with
   /api/v1/query_range over the run, and matplotlib draws the panels at their gridPos;
5. `sft report` renders the same run's metrics.jsonl to docs/img/report.png (the user guide's
   picture), so the two pictures show the same curves from the two sources.

Needs `make cluster-bins`. Takes a few minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DASHBOARD = ROOT / "charts" / "kube-sft" / "files" / "dashboard.json"
DEMO = ROOT / "examples" / "local" / "demo.yaml"
GRID_COLUMNS = 24
JOB_NAME = "demo"
METRICS_PORT = 9400

# --- pure parts ----------------------------------------------------------------------------------


def substitute_variables(expr: str, values: dict[str, str]) -> str:
    """Replace Grafana template variables (`$name`, `${name}`) in a PromQL expression."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return values.get(name, match.group(0))

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", replace, expr)


def legend(template: str, labels: dict[str, str]) -> str:
    """Grafana's legendFormat: `{{label}}` placeholders filled from the series' labels."""
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template).strip() or "value"


@dataclass(frozen=True)
class Box:
    """A panel's place in figure coordinates (0..1, origin bottom-left)."""

    left: float
    bottom: float
    width: float
    height: float


def panel_box(grid: dict[str, int], total_rows: int, pad: float = 0.012) -> Box:
    """Figure coordinates of a Grafana gridPos (24 columns; rows counted from the top)."""
    left = grid["x"] / GRID_COLUMNS
    width = grid["w"] / GRID_COLUMNS
    top = grid["y"] / total_rows
    height = grid["h"] / total_rows
    return Box(left + pad * 3, 1 - top - height + pad * 2.5, width - pad * 4, height - pad * 6)


def dashboard_rows(panels: list[dict[str, Any]]) -> int:
    """Grid rows the dashboard spans."""
    return max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)


def panel_queries(dashboard: dict[str, Any], values: dict[str, str]) -> list[tuple[str, list[tuple[str, str]]]]:
    """(title, [(PromQL with variables substituted, legendFormat)]) of every panel with targets."""
    found = []
    for panel in dashboard["panels"]:
        targets = [
            (substitute_variables(t["expr"], values), t.get("legendFormat", ""))
            for t in panel.get("targets", [])
            if t.get("expr")
        ]
        if targets:
            found.append((panel.get("title", ""), targets))
    return found


# --- drawing -------------------------------------------------------------------------------------


Series = dict[str, list[tuple[str, list[float], list[float]]]]
"""Panel title -> [(legend, unix times, values)]."""

UNIT_LABELS = {"s": "seconds", "percent": "%", "percentunit": "fraction"}


def draw(dashboard: dict[str, Any], series: Series, out: Path, t0: float, t1: float) -> None:
    """Draw every panel at its gridPos: one line per series, minutes since the run started on x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in dashboard["panels"] if p.get("targets")]
    rows = dashboard_rows(panels)
    fig = plt.figure(figsize=(18, rows * 0.42 + 0.6), facecolor="#111217")
    fig.suptitle(
        f"Grafana dashboard “{dashboard.get('title', '')}” (charts/kube-sft), rendered from Prometheus",
        color="#d8d9da",
        fontsize=12,
        y=0.995,
    )
    for panel in panels:
        box = panel_box(panel["gridPos"], rows)
        ax = fig.add_axes((box.left, box.bottom, box.width, box.height), facecolor="#181b1f")
        ax.set_title(panel.get("title", ""), color="#d8d9da", fontsize=10, loc="left")
        ax.tick_params(colors="#8e8e8e", labelsize=7)
        for spine in ax.spines.values():
            spine.set_color("#2c3235")
        ax.grid(color="#2c3235", linewidth=0.5)
        lines = series.get(panel.get("title", ""), [])
        for name, times, values in lines:
            ax.plot([(t - t0) / 60 for t in times], values, linewidth=1.3, label=name)
        if lines:
            ax.legend(fontsize=7, loc="best", facecolor="#181b1f", edgecolor="#2c3235", labelcolor="#d8d9da")
        else:
            ax.text(0.5, 0.5, "no data", color="#8e8e8e", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlim(0, (t1 - t0) / 60)
        ax.set_xlabel("minutes since the SFTJob was created", color="#8e8e8e", fontsize=7)
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        if unit in UNIT_LABELS:
            ax.set_ylabel(UNIT_LABELS[unit], color="#8e8e8e", fontsize=7)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, facecolor=fig.get_facecolor())
    plt.close(fig)


# --- the real run --------------------------------------------------------------------------------


def demo_sftjob(output_dir: Path, max_steps: int) -> dict[str, Any]:
    """The demo config as an SFTJob on the CPU, writing to a hostPath volume, serving /metrics."""
    training = yaml.safe_load(DEMO.read_text())
    training["output_dir"] = "/output/demo"
    validate_every = max(1, max_steps // 8)
    training["trainer"].update(
        max_steps=max_steps,
        log_every_n_steps=5,
        val_check_interval=validate_every,
        save_interval=validate_every * 4,
    )
    training["optim"]["sched"]["warmup_steps"] = max(1, max_steps // 20)
    training["logging"] = {"progress": "lines", "metrics_port": METRICS_PORT}
    return {
        "apiVersion": "sft.kube-sft.io/v1alpha1",
        "kind": "SFTJob",
        "metadata": {"name": JOB_NAME},
        "spec": {
            "resources": {"numNodes": 1, "gpusPerNode": 0},
            "storage": {"output": {"mountPath": "/output", "hostPath": {"path": str(output_dir)}}},
            "training": training,
        },
    }


@contextmanager
def operator_process(kubeconfig: Path, namespace: str, metrics_port: int, log_path: Path) -> Iterator[None]:
    """`python -m sft_operator` watching one namespace, stopped on exit."""
    from devcluster.procs import free_port

    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "POD_NAME": "render-dashboard"}
    argv = [sys.executable, "-m", "sft_operator", "--namespace", namespace, "--standalone"]
    argv += ["--metrics-port", str(metrics_port), "--liveness-port", str(free_port()), "--resync-seconds", "1"]
    with log_path.open("ab") as log:
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        yield
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()


def wait_phase(custom: Any, namespace: str, phases: set[str], timeout: float) -> dict[str, Any]:
    """Poll the SFTJob until its phase is one of `phases`; returns its status."""
    from devcluster.procs import wait_until
    from sft_operator.api import GROUP, PLURAL, VERSION

    def check() -> dict[str, Any] | None:
        job = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, JOB_NAME)
        status: dict[str, Any] = job.get("status") or {}
        return status if status.get("phase") in phases else None

    result: dict[str, Any] = wait_until(check, timeout, f"SFTJob phase in {sorted(phases)}", interval=1.0)
    return result


def collect(dashboard: dict[str, Any], url: str, start: float, end: float, step: float) -> Series:
    """Every panel's series over [start, end], by panel title; prints what each query returned."""
    from devcluster.prometheus import query_range

    values = {"sftjob": ".*", "namespace": ".*", "datasource": "prometheus"}
    series: Series = {}
    for title, targets in panel_queries(dashboard, values):
        for expr, legend_format in targets:
            result = query_range(url, expr, start, end, step)
            print(f"  {title!r}: {len(result)} series  <- {expr}")
            for item in result:
                times = [float(t) for t, _ in item["values"]]
                points = [float(v) for _, v in item["values"]]
                series.setdefault(title, []).append((legend(legend_format, item["metric"]), times, points))
    return series


def render(out: Path, max_steps: int, keep: bool) -> None:
    """The whole run: cluster, operator, SFTJob, Prometheus, queries, pictures."""
    import kubernetes

    from devcluster.binaries import find_binaries
    from devcluster.controlplane import ControlPlane
    from devcluster.node_agent import NodeAgent
    from devcluster.procs import free_port, wait_until
    from devcluster.prometheus import PrometheusServer
    from sft_operator.api import GROUP, PLURAL, VERSION

    dashboard = json.loads(DASHBOARD.read_text())
    work = Path(tempfile.mkdtemp(prefix="render-dashboard-"))
    output_dir = work / "output"
    output_dir.mkdir()
    namespace = "sft-demo"
    cluster = ControlPlane.start(binaries=find_binaries())
    agent: NodeAgent | None = None
    prometheus: PrometheusServer | None = None
    try:
        agent = NodeAgent(cluster.api_client(), cluster.server, cluster.pki.ca.cert, work / "node").start()
        v1 = kubernetes.client.CoreV1Api(cluster.client)
        custom = kubernetes.client.CustomObjectsApi(cluster.client)
        v1.create_namespace({"metadata": {"name": namespace}})
        wait_until(lambda: v1.read_namespaced_service_account("default", namespace), 30, "default ServiceAccount")
        cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        wait_until(lambda: cluster.kubectl("get", "sftjobs", "-A", check=False).returncode == 0, 60, "CRD served")
        prometheus = PrometheusServer(work / "prometheus").start()
        operator_port = free_port()
        prometheus.set_targets("kube-sft-operator", [f"127.0.0.1:{operator_port}"])
        with operator_process(cluster.kubeconfig, namespace, operator_port, work / "operator.log"):
            start = time.time()
            custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, demo_sftjob(output_dir, max_steps)
            )
            print(f"SFTJob {namespace}/{JOB_NAME} created; waiting for its trainer pod")

            def pod_ip() -> str | None:
                pod = v1.read_namespaced_pod(f"{JOB_NAME}-node-0", namespace)
                return str(pod.status.pod_ip) if pod.status and pod.status.pod_ip else None

            ip = wait_until(pod_ip, 180, "the trainer pod's IP", interval=0.5)
            prometheus.set_targets("kube-sft-trainer", [f"{ip}:{METRICS_PORT}"])
            status = wait_phase(custom, namespace, {"Succeeded", "Failed"}, 1800)
            time.sleep(5)  # one more operator scrape after the final transition
            end = time.time()
        print(
            f"SFTJob finished: {status.get('phase')} ({status.get('reason')}); final model {status.get('finalModel')}"
        )
        if status.get("phase") != "Succeeded":
            log = agent.logs(namespace, f"{JOB_NAME}-node-0")
            raise SystemExit(f"the run failed:\n{log[-3000:]}")
        series = collect(dashboard, prometheus.url, start, end, max(1.0, (end - start) / 300))
        (work / "series.json").write_text(json.dumps({"start": start, "end": end, "series": series}))
        draw(dashboard, series, out / "dashboard.png", start, end)
        print(f"wrote {out / 'dashboard.png'}")
        run_dir = output_dir / "demo"
        report = subprocess.run(
            [str(Path(sys.executable).parent / "sft"), "report", str(run_dir), "--output", str(out / "report.png")],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        print(report.stdout)
    finally:
        if prometheus is not None:
            prometheus.stop()
        if agent is not None:
            agent.stop()
        cluster.stop()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


def main() -> None:
    """Run, scrape, evaluate and draw."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--max-steps", type=int, default=160)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--redraw", type=Path, help="only draw again from a kept work directory's series.json")
    args = parser.parse_args()
    if args.redraw:
        saved = json.loads(args.redraw.read_text())
        draw(
            json.loads(DASHBOARD.read_text()), saved["series"], args.out / "dashboard.png", saved["start"], saved["end"]
        )
        return
    render(args.out, args.max_steps, args.keep)


if __name__ == "__main__":
    main()
