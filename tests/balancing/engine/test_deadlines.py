"""`deadline()` keeps `asyncio.timeout()`'s promises with one timer per loop."""

from __future__ import annotations

import asyncio

import pytest

from balancing.engine.deadlines import deadline


async def test_a_block_past_its_deadline_raises_timeout_error() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError), deadline(0.05):
        await asyncio.sleep(30)
    assert loop.time() - started < 30  # cut short, not slept out


async def test_a_block_that_finishes_in_time_is_left_alone() -> None:
    with deadline(30):
        await asyncio.sleep(0)
    await asyncio.sleep(0)  # no cancel left pending on the task
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_each_of_many_deadlines_fires_and_only_its_own() -> None:
    """Later deadlines set while an earlier one stands, and an earlier one set after them."""
    finished: list[str] = []

    async def wait(name: str, seconds: float, sleep: float) -> None:
        try:
            with deadline(seconds):
                await asyncio.sleep(sleep)
            finished.append(f"{name} done")
        except TimeoutError:
            finished.append(f"{name} timed out")

    await asyncio.gather(
        wait("long", 30, 0.3),  # its deadline never comes: the block ends first
        wait("late", 0.2, 30),
        wait("early", 0.05, 30),
    )
    assert sorted(finished) == ["early timed out", "late timed out", "long done"]


async def test_a_cancel_from_elsewhere_stays_a_cancel() -> None:
    entered = asyncio.Event()

    async def guarded() -> None:
        with deadline(30):
            entered.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(guarded())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
