"""Small statistics for benchmark reports: nearest-rank percentiles, medians, ratios.

Kept apart from the load generator so the report code and the tests share one definition.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (`p` in 0–100) of `values`, sorted or not; NaN when empty.

    Nearest rank, not interpolation: a p99 is always a latency some call really had.
    """
    if not values:
        return math.nan
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} is outside 0–100")
    ordered = values if _is_sorted(values) else sorted(values)
    rank = max(math.ceil(p / 100 * len(ordered)), 1)
    return ordered[rank - 1]


def median(values: Iterable[float]) -> float:
    """The median of the finite values (NaN when there are none): the number a report shows for
    repeated rounds of one measurement."""
    finite = sorted(v for v in values if not math.isnan(v))
    if not finite:
        return math.nan
    middle = len(finite) // 2
    if len(finite) % 2:
        return finite[middle]
    return (finite[middle - 1] + finite[middle]) / 2


def ratio(numerator: float, denominator: float) -> float:
    """`numerator / denominator`, NaN when either is missing or the denominator is zero."""
    if math.isnan(numerator) or math.isnan(denominator) or denominator == 0:
        return math.nan
    return numerator / denominator


@dataclass(frozen=True, slots=True)
class Latency:
    """p50 / p99 / max of one run, in milliseconds."""

    p50_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency:
        ordered = sorted(seconds)
        if not ordered:
            return cls(math.nan, math.nan, math.nan)
        return cls(
            percentile(ordered, 50) * 1000,
            percentile(ordered, 99) * 1000,
            ordered[-1] * 1000,
        )


def fmt(value: float, digits: int = 2) -> str:
    """A number for a Markdown table; a dash for a missing one."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _is_sorted(values: Sequence[float]) -> bool:
    return all(values[i] <= values[i + 1] for i in range(len(values) - 1))
