"""Deadlines for the hot path that almost never fire: one timer for them all (no Django).

`asyncio.timeout()` arms a timer and cancels it again on every use: several µs per call on the
hot path, where a forwarded call costs a few hundred. Most deadlines there never fire (a call's
timeout, a request body's). `deadline(seconds)` behaves like `asyncio.timeout(seconds)` — the
block is cancelled when the time passes and `TimeoutError` raised in its place, a cancel from
elsewhere stays a cancel — but a watched task costs a dict entry: one timer per event loop stands
at the earliest deadline and sweeps every task whose deadline has passed.

    with deadline(seconds):
        await ...
"""

from __future__ import annotations

import asyncio
import weakref


class _Sweeper:
    """The watched tasks of one event loop and their deadlines (the loop's clock)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.deadlines: dict[asyncio.Task[object], float] = {}
        self.expired: set[asyncio.Task[object]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, task: asyncio.Task[object], seconds: float) -> None:
        when = self._loop.time() + seconds
        self.deadlines[task] = when
        timer = self._timer
        if timer is None or when < timer.when():
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(when, self._sweep)

    def _sweep(self) -> None:
        now = self._loop.time()
        earliest = None
        for task, when in list(self.deadlines.items()):
            if when <= now:
                del self.deadlines[task]
                self.expired.add(task)
                task.cancel()
            elif earliest is None or when < earliest:
                earliest = when
        self._timer = None if earliest is None else self._loop.call_at(earliest, self._sweep)


_sweepers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Sweeper] = (
    weakref.WeakKeyDictionary()
)
_last: tuple[asyncio.AbstractEventLoop | None, _Sweeper | None] = (None, None)


def _sweeper(loop: asyncio.AbstractEventLoop) -> _Sweeper:
    global _last  # a one-entry cache in front of the weak map: a server runs one loop
    last_loop, sweeper = _last
    if loop is last_loop and sweeper is not None:
        return sweeper
    sweeper = _sweepers.get(loop)
    if sweeper is None:
        sweeper = _sweepers[loop] = _Sweeper(loop)
    _last = (loop, sweeper)
    return sweeper


class deadline:
    """Cancel the block when `seconds` pass, raising `TimeoutError` in its place. A class with
    slots, not a generator, and a plain `with` (nothing in it awaits): it runs twice per call.

        with deadline(seconds):
            await ...
    """

    __slots__ = ("_cancelling", "_seconds", "_sweeper", "_task")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds

    def __enter__(self) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("deadline() is used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._sweeper = sweeper = _sweeper(loop)
        sweeper.watch(task, self._seconds)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: object
    ) -> None:
        sweeper, task = self._sweeper, self._task
        sweeper.deadlines.pop(task, None)
        expired = sweeper.expired
        if not expired or task not in expired:
            return
        expired.discard(task)
        if task.uncancel() <= self._cancelling and kind is asyncio.CancelledError:
            raise TimeoutError from error
