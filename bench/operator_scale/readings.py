"""What the operator benchmark reads, parsed: the API server's Prometheus text
(apiserver_request_total), its audit log (requests per user, pod writes with bodies), /proc stat/status. Pure."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from datetime import datetime

from bench.operator_scale.flavours import FAIL_ANNOTATION, Object

POD_WRITES = ["create", "delete", "patch", "update"]  # audited with bodies under --trace-pods


def parse_labels(text: str) -> dict[str, str]:
    """`a="x",b="y"` -> {"a": "x", "b": "y"} (Prometheus text format, escaped quotes handled)."""
    labels: dict[str, str] = {}
    i = 0
    while i < len(text):
        eq = text.index("=", i)
        key = text[i:eq].strip().lstrip(",").strip()
        j = eq + 2  # skip ="
        value = []
        while text[j] != '"':
            if text[j] == "\\":
                j += 1
            value.append(text[j])
            j += 1
        labels[key] = "".join(value)
        i = j + 1
        while i < len(text) and text[i] in ", ":
            i += 1
    return labels


def counter_samples(metrics_text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of metric `name` in a Prometheus text exposition: (labels, value)."""
    samples = []
    for line in metrics_text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        rest = line[len(name) :]
        if rest.startswith("{"):
            close = rest.rindex("}")
            labels, value = parse_labels(rest[1:close]), rest[close + 1 :].split()[0]
        elif rest.startswith(" "):
            labels, value = {}, rest.split()[0]
        else:
            continue  # a longer metric name sharing the prefix
        samples.append((labels, float(value)))
    return samples


def request_counts(metrics_text: str) -> Counter[str]:
    """apiserver_request_total summed per `VERB resource[/subresource]`."""
    counts: Counter[str] = Counter()
    for labels, value in counter_samples(metrics_text, "apiserver_request_total"):
        resource = labels.get("resource", "")
        if labels.get("subresource"):
            resource += "/" + labels["subresource"]
        counts[f"{labels.get('verb', '?')} {resource}"] += int(value)
    return counts


def counter_diff(after: Counter[str], before: Counter[str]) -> Counter[str]:
    """after - before, keeping only positive differences."""
    return Counter({key: after[key] - before.get(key, 0) for key in after if after[key] - before.get(key, 0) > 0})


def audit_counts(lines: Iterable[str], user: str, since: datetime, until: datetime) -> Counter[str]:
    """The audit log's requests by `user` completed in [since, until], per `verb resource[/sub]`."""
    counts: Counter[str] = Counter()
    for line in lines:
        if user not in line:
            continue
        event = json.loads(line)
        if event.get("user", {}).get("username") != user:
            continue
        stamp = datetime.fromisoformat(event["stageTimestamp"].replace("Z", "+00:00"))
        if not since <= stamp <= until:
            continue
        ref = event.get("objectRef") or {}
        resource = ref.get("resource", event.get("requestURI", "?").split("?")[0])
        if ref.get("subresource"):
            resource += "/" + ref["subresource"]
        counts[f"{event.get('verb', '?')} {resource}"] += 1
    return counts


def pod_writes(lines: Iterable[str]) -> list[Object]:
    """The audit log's pod writes that carry bodies (`--trace-pods`), in the order the API server
    received them (a delete that arrived first may complete last), each as
    {time, agent, verb, subresource, namespace, name, uid, code, phase, annotations, labels}: the pod the write
    landed on (its response body) and the phase the write set (status patches)."""
    writes = []
    for line in lines:
        event = json.loads(line)
        ref = event.get("objectRef") or {}
        if ref.get("resource") != "pods" or event.get("verb") not in POD_WRITES:
            continue
        landed = event.get("responseObject") or {}
        if landed.get("kind") != "Pod":
            landed = {}  # a failed write answers a Status
        meta = landed.get("metadata") or {}
        writes.append(
            {
                "time": event.get("requestReceivedTimestamp") or event["stageTimestamp"],
                "agent": str(event.get("userAgent", "")).split("/")[0],
                "verb": event["verb"],
                "subresource": ref.get("subresource", ""),
                "namespace": ref.get("namespace", ""),
                "name": ref.get("name", meta.get("name", "")),
                "uid": meta.get("uid"),
                "code": (event.get("responseStatus") or {}).get("code"),
                "phase": ((event.get("requestObject") or {}).get("status") or {}).get("phase"),
                "annotations": meta.get("annotations") or {},
                "labels": meta.get("labels") or {},
            }
        )
    return sorted(writes, key=lambda write: write["time"])


def misdirected_writes(writes: Iterable[Object], agent: str = "kwok") -> list[Object]:
    """Writes by the node agent (KWOK) that landed on a pod they were not meant for, judged by what
    its Stages do: it deletes only pods someone else deleted first (pod-delete) and fails only pods
    the bench annotated (pod-fail). A write by name that hit a newer pod of the same name shows up here.
    """
    deleted_by_others: set[str] = set()
    wrong = []
    for write in writes:
        uid, ok = write["uid"], write["code"] == 200
        if write["agent"] != agent:
            if write["verb"] == "delete" and uid:
                deleted_by_others.add(uid)
            continue
        if ok and write["verb"] == "delete" and uid not in deleted_by_others:
            wrong.append(write | {"why": "deleted a pod nobody had deleted"})
        elif ok and write["phase"] == "Failed" and write["annotations"].get(FAIL_ANNOTATION) != "true":
            wrong.append(write | {"why": "failed a pod the bench never annotated"})
    return wrong


def cpu_seconds(stat_text: str, ticks_per_second: int) -> float:
    """utime + stime of a /proc/<pid>/stat line, in seconds (fields after the `(comm)`)."""
    fields = stat_text[stat_text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / ticks_per_second  # fields 14 and 15 of stat(5)


def peak_rss_bytes(status_text: str) -> int:
    """VmHWM (peak resident set size) of a /proc/<pid>/status text, in bytes."""
    for line in status_text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise ValueError("no VmHWM line")
