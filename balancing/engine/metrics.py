"""The runtime's own counters: plain ints and bucket arrays, so the hot path never takes a lock.

`monitoring` reads these when Prometheus scrapes (a custom collector), which keeps the Prometheus
client's locks off the call path and keeps `balancing` free of any `monitoring` import.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict

# Seconds; suited to 1 ms … 60 s (tool calls range from cache hits to long jobs).
BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


class Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(BUCKETS, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[int]:
        out, running = [], 0
        for c in self.counts:
            running += c
            out.append(running)
        return out

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding the q-quantile (0 when empty): for dashboards."""
        total = self.count
        if not total:
            return 0.0
        rank, running = q * total, 0
        for i, c in enumerate(self.counts):
            running += c
            if running >= rank:
                return BUCKETS[i] if i < len(BUCKETS) else BUCKETS[-1]
        return BUCKETS[-1]


class RuntimeMetrics:
    """Everything the runtime counts; keys are bounded label tuples (pool, server, outcome)."""

    def __init__(self) -> None:
        self.calls: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self.durations: defaultdict[tuple[str, str], Histogram] = defaultdict(Histogram)
        self.acquire_wait: defaultdict[str, Histogram] = defaultdict(Histogram)
        self.retries: defaultdict[str, int] = defaultdict(int)
        self.retries_refused: defaultdict[str, int] = defaultdict(int)
        self.ejections: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.recoveries: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.panics: defaultdict[str, int] = defaultdict(int)
        self.rate_limited: defaultdict[str, int] = defaultdict(int)
        self.reinitialized: defaultdict[tuple[str, str], int] = defaultdict(int)
