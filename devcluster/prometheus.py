"""A real Prometheus (Debian's package) scraping static targets, with a query helper.

Usage: `prom = PrometheusServer(workdir).start()`, then `prom.set_targets("trainer", ["127.0.0.3:9400"])`
(rewrites the config and reloads) and `prom.wait_for("up{job='trainer'} == 1")`.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import urllib3
import yaml

from devcluster.binaries import find_tool
from devcluster.procs import ManagedProcess, free_port, wait_until


def query_range(url: str, expr: str, start: float, end: float, step: float = 1.0) -> list[dict[str, Any]]:
    """Prometheus /api/v1/query_range at `url`: the result matrix; raises ValueError on a PromQL error."""
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query_range?{params}", timeout=30) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise ValueError(f"{expr}: {error.read().decode(errors='replace')}") from None
    if body.get("status") != "success":
        raise ValueError(f"{expr}: {body}")
    return list(body["data"]["result"])


class PrometheusServer:
    """One Prometheus process on 127.0.0.1:<free port>, scraping every `scrape_interval`."""

    def __init__(self, workdir: Path, scrape_interval: str = "1s") -> None:
        self.workdir = workdir
        self.scrape_interval = scrape_interval
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "prometheus.yml"
        self.rule_files: list[Path] = []
        self.jobs: dict[str, dict[str, Any]] = {}
        self.process: ManagedProcess | None = None
        self._http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=10.0))

    # ----- lifecycle ------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> PrometheusServer:
        """Write the config, start prometheus and wait until it is ready."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        argv = [
            str(find_tool("prometheus")),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
            "--log.level=warn",
        ]
        self.process = ManagedProcess("prometheus", argv, self.workdir)
        process = self.process
        wait_until(lambda: process.check_alive() or self._get("/-/ready").status == 200, timeout, "prometheus /-/ready")
        return self

    def stop(self) -> None:
        """Stop the prometheus process."""
        if self.process is not None:
            self.process.stop()
            self.process = None

    # ----- configuration --------------------------------------------------------------------

    def set_targets(self, job: str, targets: list[str], metrics_path: str = "/metrics", **extra: Any) -> None:
        """Scrape `targets` (host:port) as `job` (replacing that job's targets) and reload."""
        self.jobs[job] = {
            "job_name": job,
            "metrics_path": metrics_path,
            "static_configs": [{"targets": targets}],
            **extra,
        }
        self.reload()

    def set_rule_files(self, paths: list[Path]) -> None:
        """Load alerting/recording rule files (checked first with promtool) and reload."""
        for path in paths:
            self.check_rules(path)
        self.rule_files = list(paths)
        self.reload()

    def reload(self) -> None:
        """Rewrite the config and ask the running prometheus to reload it."""
        self._write_config()
        if self.process is not None:
            response = self._http.request("POST", f"{self.url}/-/reload")
            if response.status != 200:
                raise RuntimeError(f"prometheus reload failed: {response.status} {response.data[:500]!r}")

    def _write_config(self) -> None:
        config = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [
                {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{self.port}"]}]},
                *self.jobs.values(),
            ],
        }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    # ----- queries --------------------------------------------------------------------------

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Run an instant query; return its result vector (raise on a PromQL error)."""
        response = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        body = json.loads(response.data)
        if body.get("status") != "success":
            raise ValueError(f"query {promql!r} failed: {body.get('errorType')}: {body.get('error')}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for(self, promql: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Poll until the query returns a non-empty result."""
        return wait_until(lambda: self.query(promql), timeout, f"PromQL {promql!r} to return data", interval=0.5)

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets with their health."""
        body = json.loads(self._get("/api/v1/targets").data)
        active: list[dict[str, Any]] = body["data"]["activeTargets"]
        return active

    @staticmethod
    def check_rules(path: Path) -> str:
        """`promtool check rules path`; raise with its output when it fails."""
        result = subprocess.run(
            [str(find_tool("promtool")), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
        )
        if result.returncode != 0:
            raise ValueError(f"promtool check rules {path} failed:\n{result.stdout}{result.stderr}")
        return result.stdout

    def _get(self, path: str) -> Any:
        return self._http.request("GET", f"{self.url}{path}")
