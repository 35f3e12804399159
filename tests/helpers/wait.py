"""Waiting on conditions, never on fixed sleeps: the one set of polling helpers the tests share.

Tests poll only state that lives in another process or task with no event to await; each wait is
bounded, generous for a loaded 2-core machine, and ends as soon as the condition holds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


async def until(predicate: Callable[[], Any], seconds: float = 15.0, every: float = 0.05) -> bool:
    """Whether `predicate()` (a value, or a coroutine to await) became true within `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        value = predicate()
        if await value if asyncio.iscoroutine(value) else value:
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(every)


async def wait_until(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    """Return once `predicate()` is true; `TimeoutError` after `timeout`."""
    if not await until(predicate, timeout, every=0.01):
        raise TimeoutError(f"condition not met within {timeout} s")


def until_sync(predicate: Callable[[], Any], seconds: float, every: float = 0.1) -> bool:
    """`until` for synchronous tests: whether `predicate()` became true within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return bool(predicate())
