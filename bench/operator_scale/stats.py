"""Statistics of the operator benchmark: percentiles, latency and load summaries, ratios, and the times at
which the load submits jobs and injects failures. Pure."""

from __future__ import annotations

from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between ranks (numpy's default); None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """Count, p50, p99, max and mean of a latency sample (seconds, rounded to ms)."""

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    return {
        "n": len(values),
        "p50": rounded(percentile(values, 50)),
        "p99": rounded(percentile(values, 99)),
        "max": rounded(max(values) if values else None),
        "mean": rounded(sum(values) / len(values) if values else None),
    }


def injection_times(start: float, duration: float, count: int) -> list[float]:
    """`count` failure times spread evenly over [start, start + duration) (mid-points of equal slices)."""
    if count <= 0:
        return []
    step = duration / count
    return [start + (index + 0.5) * step for index in range(count)]


def steady_times(start: float, per_minute: float, minutes: float) -> list[float]:
    """Submission times of a steady load: per_minute jobs a minute for `minutes` minutes."""
    count = round(per_minute * minutes)
    interval = 60.0 / per_minute if per_minute else 0.0
    return [start + index * interval for index in range(count)]


def load_summary(samples: Sequence[float]) -> dict[str, float | int | None]:
    """Min/mean/max of 1-minute load-average samples."""
    if not samples:
        return {"samples": 0, "min": None, "mean": None, "max": None}
    return {
        "samples": len(samples),
        "min": round(min(samples), 2),
        "mean": round(sum(samples) / len(samples), 2),
        "max": round(max(samples), 2),
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator rounded, or None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)
