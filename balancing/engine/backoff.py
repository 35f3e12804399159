"""Reconnect backoff, as gRPC's connection backoff: 1 s × 1.6 per attempt, ±20 %, up to 120 s."""

from __future__ import annotations

import random


class Backoff:
    """Delays between reconnect attempts to one server; `reset()` after a connection works."""

    __slots__ = ("_current", "_rng", "attempts", "initial", "jitter", "maximum", "multiplier")

    def __init__(
        self,
        initial: float = 1.0,
        multiplier: float = 1.6,
        jitter: float = 0.2,
        maximum: float = 120.0,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.initial = initial
        self.multiplier = multiplier
        self.jitter = jitter
        self.maximum = maximum
        self._rng = rng if rng is not None else random.Random()
        self._current = min(initial, maximum)
        self.attempts = 0

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt; never above `maximum × (1 + jitter)`."""
        # Jitter spreads reconnects of many processes that lost the same server at once.
        delay = self._current * (1.0 + self._rng.uniform(-self.jitter, self.jitter))
        self._current = min(self._current * self.multiplier, self.maximum)
        self.attempts += 1
        return delay

    def reset(self) -> None:
        self._current = min(self.initial, self.maximum)
        self.attempts = 0
