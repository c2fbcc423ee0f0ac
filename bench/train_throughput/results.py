"""The results JSON: one table row per measured configuration, ratios to the best peer row, issue 10's goals,
and merging the reports of several device calls. Pure apart from reading and writing the files."""

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import train_metrics as tm
from bench.train_throughput.data import REPO
from bench.train_throughput.orchestrate import collect


def table_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per measured configuration."""
    rows = []
    for name, result in results.items():
        for run in result.get("runs", []):
            if "error" in run:
                continue
            knob = f"mbs {run['mbs']}" if "mbs" in run else f"batch {run.get('batch')}"
            row = {"system": result["system"], "config": f"{name} {knob}", "gpus": result["gpus"], **run}
            if run.get("tokens_measured") and run.get("median_step_s"):
                rate = tm.median_rate(run["tokens_measured"], run["steps"], run["median_step_s"], result["gpus"])
                row["tokens_per_s_per_gpu_median"] = round(rate, 1)
                row["mfu_median"] = round(run["mfu"] * rate / run["tokens_per_s_per_gpu"], 4)
            rows.append(row)
    return rows


def write_report(
    names: Sequence[str], card: str, gpus: int, timings: dict[str, Any], output: Path | None
) -> tuple[dict[str, Any], Path]:
    """Collect the workers' results so far and write `train-<card>.json` under `output` ($OUT or bench/results)."""
    report = summarize(collect(names), card, timings)
    report["gpus_on_host"] = gpus
    directory = output or Path(os.environ.get("OUT") or REPO / "bench" / "results")
    directory.mkdir(parents=True, exist_ok=True)
    slug = card.lower().replace("nvidia ", "").replace(" ", "-")
    path = directory / f"train-{slug}.json"
    path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report, path


def merge_reports(paths: Sequence[Path], output: Path) -> None:
    """One report from several device calls' JSONs.

    Results are keyed `<worker>@call<N>`; every goal is judged inside one call (ratios never mix
    cards or calls) and taken from the last call that measured it.
    """
    reports = [json.loads(path.read_text()) for path in paths]
    results: dict[str, Any] = {}
    for index, report in enumerate(reports):
        for name, result in report["results"].items():
            results[f"{name}@call{index + 1}"] = {**result, "call": index + 1, "card": report["card"]}
    cards = " + ".join(sorted({str(r["card"]) for r in reports}))
    merged = summarize(results, cards, {f"call{i + 1}": r["stage_seconds"] for i, r in enumerate(reports)})
    merged["goals"] = merge_goals([evaluate_goals(table_rows(r["results"])) for r in reports])
    merged["calls"] = [
        {"card": r["card"], "gpus_on_host": r.get("gpus_on_host"), "workers": sorted(r["results"])} for r in reports
    ]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(merged, indent=1) + "\n", encoding="utf-8")
    print(tm.format_table(merged["table"]))
    for line in merged["goals"]:
        print(f"goal {'MET ' if line['met'] else 'MISS'} {line['goal']}: {line['measured']} (call {line.get('call')})")


def merge_goals(goals_by_call: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per goal (by position), the last call's line that has a measurement (else the last line), with its call;
    for a ceiling (`lower_is_better`), the worst call's line."""
    merged: list[dict[str, Any]] = []
    for position in range(max((len(g) for g in goals_by_call), default=0)):
        lines = [(call + 1, goals[position]) for call, goals in enumerate(goals_by_call) if position < len(goals)]
        measured = [(call, line) for call, line in lines if line.get("measured") is not None]
        if measured and measured[-1][1].get("lower_is_better"):  # a ceiling: the worst call decides
            measured.sort(key=lambda item: float(item[1]["measured"]))
        call, line = (measured or lines)[-1]
        merged.append({**line, "call": call})
    return merged


def summarize(results: dict[str, Any], card: str, timings: dict[str, Any]) -> dict[str, Any]:
    """The results JSON: card, per-config table, goals."""
    rows = with_peer_ratio(table_rows(results))
    return {
        "card": card,
        "data": "T0 55,185 prompt/completion pairs, GPT-2 BPE, answer-only loss, max_seq_length 4096",
        "peak_tflops": tm.PEAK_TFLOPS,
        "stage_seconds": timings,
        "table": rows,
        "goals": evaluate_goals(rows),
        "results": results,
    }


def _best_of(rows: Sequence[dict[str, Any]], predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    chosen = tm.best(r for r in rows if predicate(r))
    return dict(chosen) if chosen else None


PEER_CORRECT = ("trl-best", "trl-bfd", "trl-padded")  # TRL configurations that keep examples apart


def best_peer_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The fastest llama-1b TRL row whose examples never attend to each other (wrapped rows excluded)."""
    return _best_of(rows, lambda r: str(r["config"]).startswith(PEER_CORRECT))


def with_peer_ratio(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with `ratio_vs_best_peer` (tokens/s over the best peer row's) on every llama-1b row of ours."""
    peer = best_peer_row(rows)
    out = []
    for row in rows:
        row = dict(row)
        if peer is not None and str(row["config"]).startswith(("ours-1b-1gpu", "torch-1b")):
            row["ratio_vs_best_peer"] = round(
                float(row["tokens_per_s_per_gpu"]) / float(peer["tokens_per_s_per_gpu"]), 3
            )
            row["best_peer"] = peer["config"]
        out.append(row)
    return out


def evaluate_goals(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 10's goals from the table rows (a goal whose run is missing reads `measured: null`)."""

    def named(prefix: str) -> Callable[[dict[str, Any]], bool]:
        return lambda r: str(r["config"]).startswith(prefix)

    ours_1 = _best_of(rows, lambda r: named("ours-1b-1gpu")(r) and "fp8" not in str(r["config"]))
    ours_fp8 = _best_of(rows, named("ours-1b-1gpu-fp8"))
    torch_1 = _best_of(rows, lambda r: named("torch-1b-1gpu")(r) and "fp16" not in str(r["config"]))
    plain_1 = _best_of(rows, named("ours-1b-1gpu mbs"))  # no tuning variant: the same code as the DP runs
    ours_2 = _best_of(rows, named("ours-1b-dp2"))
    ours_4 = _best_of(rows, named("ours-1b-dp4"))
    best_peer = best_peer_row(rows)
    trl_wrapped = _best_of(rows, named("trl-wrapped"))
    # llama-8b: the best layout of each precision (TP=2 + SP, or TP=1 x DP on cards that hold it)
    bf16_8b = _best_of(rows, lambda r: named("ours-8b-")(r) and "-bf16" in str(r["config"]))
    fp8_8b = _best_of(rows, lambda r: named("ours-8b-")(r) and "-fp8" in str(r["config"]))

    def tps(row: dict[str, Any] | None) -> float | None:
        return None if row is None else float(row["tokens_per_s_per_gpu"])

    def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
        return None if a is None or b is None else tps(a) / tps(b)  # type: ignore[operator]

    per_gpu = {w: tps(r) for w, r in ((1, plain_1), (2, ours_2), (4, ours_4)) if r is not None}
    steps = tm.step_efficiency({w: v for w, v in per_gpu.items() if v is not None})
    waits = [float(r["data_wait_pct"]) for r in rows if str(r["system"]).startswith("ours")]
    return [
        tm.goal("llama-1b 1 GPU bf16 MFU", None if ours_1 is None else ours_1["mfu"], 0.60),
        tm.goal("llama-1b bf16 / best peer (TRL, examples kept apart)", ratio(ours_1, best_peer), 1.35, "x"),
        tm.goal("llama-1b FP8 / best peer (bf16)", ratio(ours_fp8, best_peer), 1.75, "x"),
        tm.goal("torch backend bf16 / best peer", ratio(torch_1, best_peer), 1.0, "x"),
        tm.goal("llama-1b vs TRL wrapped (crosses examples: reference)", ratio(ours_1, trl_wrapped), 1.3, "x"),
        tm.goal(
            f"llama-8b bf16 MFU ({'not run' if bf16_8b is None else bf16_8b['gpus']} GPUs; goal: 4)",
            None if bf16_8b is None else bf16_8b["mfu"],
            0.50,
        ),
        tm.goal("llama-8b FP8 / bf16 tokens/s", ratio(fp8_8b, bf16_8b), 1.3, "x"),
        tm.goal("llama-8b bf16 MFU at the median step", None if bf16_8b is None else bf16_8b.get("mfu_median"), 0.50),
        tm.goal(
            "llama-8b FP8 / bf16 at the median step",
            None
            if bf16_8b is None or fp8_8b is None
            else fp8_8b["tokens_per_s_per_gpu_median"] / bf16_8b["tokens_per_s_per_gpu_median"],
            1.3,
            "x",
        ),
        tm.goal("scaling 1->2 per-GPU efficiency", steps.get("1->2"), 0.90),
        tm.goal("scaling 2->4 per-GPU efficiency", steps.get("2->4"), 0.90),
        tm.goal("data wait % of step (worst of ours)", max(waits) if waits else None, 2.0, "%", lower_is_better=True),
    ]
