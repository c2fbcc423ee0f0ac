"""How the operator benchmark watches: list+watch threads (raw JSON), the operator process's CPU and
peak RSS (/proc), the machine's load average, and py-spy on kube-sft's operator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.operator_scale.flavours import Object
from bench.operator_scale.readings import cpu_seconds, peak_rss_bytes


def start_profiler(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """py-spy (dev extra) sampling `pid` at 50 Hz into collapsed stacks (`--format raw`), GIL-holding and idle
    threads both, so waiting on the API server shows up too."""
    py_spy = Path(sys.executable).with_name("py-spy")
    argv = [str(py_spy), "record", "--pid", str(pid), "--rate", "50", "--format", "raw", "--idle", "--nonblocking"]
    argv += ["-o", str(output)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class ProcessMeter:
    """CPU seconds and peak RSS of one process, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.cpu_start = self.cpu()

    def cpu(self) -> float:
        """utime + stime so far."""
        return cpu_seconds(Path(f"/proc/{self.pid}/stat").read_text(), self.ticks)

    def peak_rss(self) -> int:
        """VmHWM in bytes."""
        return peak_rss_bytes(Path(f"/proc/{self.pid}/status").read_text())


class Watch(threading.Thread):
    """List then watch one collection, handing (type, object, receive time) to `handler`; raw JSON, no models."""

    def __init__(self, name: str, list_call: Callable[..., Any], handler: Callable[[str, Object, float], None]) -> None:
        super().__init__(name=name, daemon=True)
        self.list_call = list_call
        self.handler = handler
        self.stop_event = threading.Event()
        self.synced = threading.Event()
        self.errors = 0

    def run(self) -> None:
        resource_version = ""
        while not self.stop_event.is_set():
            try:
                if not resource_version:
                    listing = json.loads(self.list_call(_preload_content=False).data)
                    now = time.monotonic()
                    for item in listing["items"]:
                        self.handler("ADDED", item, now)
                    resource_version = listing["metadata"]["resourceVersion"]
                    self.synced.set()
                response = self.list_call(
                    watch=True,
                    resource_version=resource_version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=60,
                    _preload_content=False,
                )
                for line in response:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event["type"] == "ERROR":
                        resource_version = ""  # 410 Gone: list again
                        break
                    obj = event["object"]
                    resource_version = obj["metadata"].get("resourceVersion", resource_version)
                    if event["type"] != "BOOKMARK":
                        self.handler(event["type"], obj, time.monotonic())
                    if self.stop_event.is_set():
                        break
                response.release_conn()
            except Exception:
                self.errors += 1
                time.sleep(0.5)

    def stop(self) -> None:
        """Ask the thread to end (at the next event or watch timeout)."""
        self.stop_event.set()


class LoadSampler(threading.Thread):
    """Samples the 1-minute load average every few seconds."""

    def __init__(self, interval: float = 5.0) -> None:
        super().__init__(name="load", daemon=True)
        self.interval = interval
        self.samples: list[float] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.samples.append(os.getloadavg()[0])
