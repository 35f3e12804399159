"""Per-server live numbers the balancer reads on every pick: in-flight calls, latency, errors.

Latency is a peak-EWMA (Finagle `p2cPeakEwma`): the estimate jumps up to any sample above it,
then follows lower samples with a time constant of `decay` seconds. The error rate is a plain
time-weighted EWMA of the 0/1 failure signal with the same constant.

One deviation from Finagle: a sample always weighs at least `MIN_SAMPLE_WEIGHT`. With a purely
time-based weight, a server taking 200 calls/s jumps to the worst of its last ~2000 samples while
one taking 5 calls/s only sees its last ~50, so the busy server looks several times slower than it
is and a 10× slower replica only ~5× slower; P2C then keeps feeding the slow replica ~1 % of calls,
which lands right in p99. With the floor a busy server forgets a lone slow call within tens of calls
(see `bench/simulate_balancing.py`: with 3 replicas, p99 went from 1.5–2.2× to 1.1–1.3× the
all-healthy p99). Sparse samples still follow the time constant.
"""

from __future__ import annotations

import math

# Used only while nothing has been measured yet; the balancer substitutes a neutral estimate taken
# from the other servers, so this value matters only when no server has any sample.
DEFAULT_LATENCY = 0.05
MIN_SAMPLE_WEIGHT = 0.05


class ServerStats:
    """Mutable counters for one server; the runtime calls `begin()` / `end()` around each call."""

    __slots__ = (
        "_errors",
        "_latency",
        "_sampled_at",
        "calls",
        "decay",
        "failures",
        "in_flight",
        "picks",
        "sampled",
    )

    def __init__(self, decay: float = 10.0, *, now: float = 0.0) -> None:
        self.decay = decay
        self.in_flight = 0
        self.picks = 0
        self.calls = 0
        self.failures = 0
        self.sampled = False  # False until the first call ends: the balancer treats it as neutral
        self._latency = DEFAULT_LATENCY
        self._errors = 0.0
        self._sampled_at = now

    def begin(self) -> None:
        """A call was sent to this server."""
        self.in_flight += 1

    def end(self, now: float, latency_s: float, failed: bool = False) -> None:
        """A call ended after `latency_s` seconds; `failed` = the server failed (not the tool)."""
        if self.in_flight > 0:
            self.in_flight -= 1
        self.calls += 1
        # Weight of the old estimate: samples far apart in time count more each (time-based EWMA,
        # so a busy and a quiet server forget at the same pace in seconds, not in calls).
        keep = math.exp(-max(now - self._sampled_at, 0.0) / self.decay) if self.decay > 0 else 0.0
        keep = min(keep, 1.0 - MIN_SAMPLE_WEIGHT)
        if failed:
            self.failures += 1
            self._errors = self._errors * keep + (1.0 - keep)
            # A failure is often fast (connection refused); it must never make a server look
            # faster, or a broken server would attract traffic.
            if self.sampled:
                latency_s = max(latency_s, self._latency)
        else:
            self._errors *= keep
        if not self.sampled or latency_s >= self._latency:
            self._latency = latency_s  # the "peak" part: slowness shows at once
        else:
            self._latency = self._latency * keep + latency_s * (1.0 - keep)
        self.sampled = True
        self._sampled_at = now

    def latency(self, now: float) -> float:
        """Peak-EWMA latency estimate in seconds."""
        return self._latency * self._idle_factor(now)

    def measured(self, now: float) -> bool:
        """Whether `latency(now)` is a measurement: a call has ended, and the estimate has not
        started to decay for idleness. Pages show "—" otherwise, not a made-up "0.0 ms"."""
        return self.sampled and self._idle_factor(now) == 1.0

    def error_rate(self, now: float) -> float:
        """Recent share of calls the server failed, 0..1."""
        return self._errors * self._idle_factor(now)

    def _idle_factor(self, now: float) -> float:
        # A server that no call reaches (because its estimate is bad) would otherwise keep that
        # estimate forever and never be tried again after it recovers. Finagle decays on every read;
        # we start only once a whole decay period has passed with nothing in flight and no sample,
        # so busy servers are compared on their true estimates whatever their call rates.
        if self.in_flight or self.decay <= 0:
            return 1.0
        idle = now - self._sampled_at - self.decay
        return 1.0 if idle <= 0 else math.exp(-idle / self.decay)
