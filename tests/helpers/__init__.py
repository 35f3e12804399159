"""Helpers shared by tests of several apps (fixtures stay in the `conftest.py` files)."""

from __future__ import annotations

import time
from collections.abc import Awaitable


async def timed(measurement: Awaitable[float]) -> tuple[float, float]:
    """A measured duration (a ping's round trip) and the time the test saw it take."""
    started = time.monotonic()
    measured = await measurement
    return measured, time.monotonic() - started


def assert_measures_a_round_trip(result: tuple[float, float]) -> None:
    """A measured round trip took some time, and no more than the test saw pass around it."""
    measured, seen = result
    assert 0 < measured <= seen
