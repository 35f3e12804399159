"""A server's health history as SVG geometry (no chart library: the machines have no internet)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from monitoring.models import HealthCheck

WIDTH, HEIGHT, PAD = 600, 120, 4


@dataclass(slots=True)
class Mark:
    x: float
    y: float
    ok: bool
    title: str


@dataclass(slots=True)
class HealthChart:
    """Latency of each check as a line, each check as a dot (red when it failed), oldest left."""

    width: int = WIDTH
    height: int = HEIGHT
    line: str = ""  # SVG polyline points
    marks: list[Mark] = field(default_factory=list)
    max_ms: float = 0.0


def health_chart(checks: Sequence[HealthCheck]) -> HealthChart:
    """`checks` newest first (as the model orders them)."""
    chart = HealthChart()
    ordered = list(reversed(checks))
    if not ordered:
        return chart
    chart.max_ms = max((c.latency_ms or 0.0) for c in ordered) or 1.0
    step = (WIDTH - 2 * PAD) / max(len(ordered) - 1, 1)
    points = []
    for i, check in enumerate(ordered):
        x = PAD + i * step
        latency = check.latency_ms or 0.0
        # Failed checks sit on the floor line: their "latency" is a timeout, not a measurement.
        y = (
            HEIGHT - PAD - (latency / chart.max_ms) * (HEIGHT - 2 * PAD)
            if check.ok
            else HEIGHT - PAD
        )
        points.append(f"{x:.1f},{y:.1f}")
        verdict = f"{latency:.1f} ms" if check.ok else f"failed: {check.error[:120]}"
        chart.marks.append(
            Mark(round(x, 1), round(y, 1), check.ok, f"{check.at:%H:%M:%S} {verdict}")
        )
    chart.line = " ".join(points)
    return chart
