"""SessionPool: bounded multiplexed sessions, fair waiting, upkeep (fake sessions, no network)."""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import replace
from typing import Any

import pytest

from balancing.engine.config import PoolConfig, ServerConfig, Transport
from balancing.engine.errors import ConnectFailed, SessionGone
from balancing.engine.sessions import AcquireTimeout, PoolClosed, SessionPool
from tests.helpers.fakes import Clock

POOL = PoolConfig(id=1, slug="p", sessions_per_server=2, calls_per_session=4, acquire_timeout=5.0)
SERVER = ServerConfig(id=1, name="a", transport=Transport.STDIO, command="x")


class FakeSession:
    def __init__(self, number: int) -> None:
        self.number = number
        self.alive = True
        self.active = 0
        self.peak = 0
        self.pings = 0
        self.closed = False
        self.ping_fails = False

    async def request(
        self,
        method: str,
        params: Any,
        *,
        timeout: float,
        on_message: Any = None,
        headers: Any = None,
    ) -> Any:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(params.get("sleep", 0) if params else 0)
            return {"session": self.number}
        finally:
            self.active -= 1

    async def ping(self, timeout: float) -> float:
        self.pings += 1
        if self.ping_fails:
            raise SessionGone("gone", server="a")
        return 0.001

    async def close(self) -> None:
        self.closed = True
        self.alive = False


class Opener:
    def __init__(self) -> None:
        self.sessions: list[FakeSession] = []
        self.fail = False

    async def __call__(self) -> FakeSession:
        await asyncio.sleep(0)
        if self.fail:
            raise ConnectFailed("connection refused", server="a")
        session = FakeSession(len(self.sessions))
        self.sessions.append(session)
        return session


def make(pool: PoolConfig = POOL, clock: Any = None) -> tuple[SessionPool, Opener]:
    opener = Opener()
    sp = SessionPool(
        pool, SERVER, opener, clock=clock or asyncio.get_running_loop().time, rng=random.Random(1)
    )
    return sp, opener


async def hold(sp: SessionPool, gate: asyncio.Event) -> None:
    """Keep one call slot until `gate` opens."""
    async with sp.borrow():
        await gate.wait()


async def borrow_once(sp: SessionPool) -> None:
    async with sp.borrow():
        pass


async def started(coro: Any) -> asyncio.Task[Any]:
    """A task that has had a moment to run up to its first wait."""
    task = asyncio.create_task(coro)
    await asyncio.sleep(0.01)
    return task


async def test_borrow_many_concurrent_calls_stay_within_k_sessions_and_m_calls() -> None:
    sp, opener = make()

    async def call(i: int) -> int:
        async with sp.borrow() as session:
            result = await session.request("x", {"sleep": 0.001 * (i % 3)}, timeout=1)
            return int(result["session"])

    results = await asyncio.gather(*(call(i) for i in range(300)))
    assert len(results) == 300
    assert len(opener.sessions) == 2  # K, never more
    assert max(s.peak for s in opener.sessions) <= 4  # M calls per session at most
    assert sp.in_flight == 0
    assert sp.waiting == 0


async def test_borrow_all_slots_busy_times_out_naming_the_pool() -> None:
    sp, _ = make(replace(POOL, sessions_per_server=1, calls_per_session=1))
    async with sp.borrow():
        with pytest.raises(AcquireTimeout) as info:
            async with sp.borrow(timeout=0.05):
                pass
    assert "pool 'p'" in str(info.value)
    assert info.value.delivered is False
    assert sp.in_flight == 0


async def test_borrow_cancelled_while_waiting_leaves_no_waiter_and_no_slot() -> None:
    sp, _ = make(replace(POOL, sessions_per_server=1, calls_per_session=1))
    holder_release = asyncio.Event()
    h = await started(hold(sp, holder_release))
    w = await started(borrow_once(sp))
    assert sp.waiting == 1
    w.cancel()
    with pytest.raises(asyncio.CancelledError):
        await w
    holder_release.set()
    await h
    assert sp.waiting == 0
    assert sp.in_flight == 0
    async with sp.borrow(timeout=0.5):  # the slot is usable again
        assert sp.in_flight == 1


async def test_borrow_cancelled_mid_call_frees_the_slot() -> None:
    sp, _ = make(replace(POOL, sessions_per_server=1, calls_per_session=1))

    async def call() -> None:
        async with sp.borrow() as session:
            await session.request("x", {"sleep": 10}, timeout=20)

    task = asyncio.create_task(call())
    await asyncio.sleep(0.01)
    assert sp.in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sp.in_flight == 0
    async with sp.borrow(timeout=0.5):
        pass


async def test_borrow_waiters_are_served_first_come_first_served() -> None:
    sp, _ = make(replace(POOL, sessions_per_server=1, calls_per_session=1))
    order: list[int] = []
    gate = asyncio.Event()

    async def waiter(i: int) -> None:
        async with sp.borrow():
            order.append(i)
            await asyncio.sleep(0)

    h = await started(hold(sp, gate))
    waiters = []
    for i in range(5):
        waiters.append(asyncio.create_task(waiter(i)))
        await asyncio.sleep(0.001)
    gate.set()
    await asyncio.gather(h, *waiters)
    assert order == [0, 1, 2, 3, 4]


async def test_maintain_dead_session_is_dropped_and_replaced() -> None:
    sp, opener = make()
    await sp.maintain()
    assert len(opener.sessions) == 2  # min idle = K, opened ahead of need
    opener.sessions[0].alive = False  # e.g. the process exited
    await sp.maintain()
    assert len(opener.sessions) == 3
    assert sp.counts()["idle"] == 2


async def test_borrow_session_dies_during_call_is_not_reused() -> None:
    sp, opener = make(replace(POOL, sessions_per_server=1))
    async with sp.borrow() as session:
        session.alive = False  # type: ignore[misc]
    async with sp.borrow() as session:
        assert session is opener.sessions[1]


async def test_maintain_retires_at_max_lifetime_replacement_first_never_while_busy() -> None:
    clock = Clock()
    sp, opener = make(replace(POOL, sessions_per_server=1, max_lifetime=100.0), clock)
    await sp.maintain()
    first = opener.sessions[0]
    gate = asyncio.Event()
    task = await started(hold(sp, gate))
    clock.now += 101
    await sp.maintain()
    assert len(opener.sessions) == 2  # the replacement is open
    assert not first.closed  # but the busy one is not closed under its caller
    async with sp.borrow() as session:
        assert session is opener.sessions[1]  # new borrows go to the replacement
    gate.set()
    await task
    await asyncio.sleep(0)
    assert first.closed


async def test_maintain_lifetime_has_jitter_below_max() -> None:
    clock = Clock()
    sp, _ = make(replace(POOL, sessions_per_server=2, max_lifetime=1000.0), clock)
    await sp.maintain()
    lifetimes = [slot.expires_at - slot.opened_at for slot in sp._slots]
    assert all(975.0 <= t <= 1000.0 for t in lifetimes)
    assert lifetimes[0] != lifetimes[1]


async def test_maintain_pings_idle_sessions_and_replaces_failed_ones() -> None:
    clock = Clock()
    sp, opener = make(replace(POOL, sessions_per_server=1, keepalive_interval=30.0), clock)
    await sp.maintain()
    clock.now += 10
    await sp.maintain()
    assert opener.sessions[0].pings == 0  # not idle long enough
    clock.now += 25
    await sp.maintain()
    assert opener.sessions[0].pings == 1
    opener.sessions[0].ping_fails = True
    clock.now += 31
    await sp.maintain()
    await asyncio.sleep(0)  # closing runs in the background
    assert opener.sessions[0].closed
    assert len(opener.sessions) == 2


async def test_borrow_after_long_idle_validates_first() -> None:
    clock = Clock()
    sp, opener = make(replace(POOL, sessions_per_server=1, validate_idle_after=10.0), clock)
    await sp.maintain()
    opener.sessions[0].ping_fails = True
    clock.now += 11
    async with sp.borrow() as session:
        assert session is opener.sessions[1]  # the stale one failed its ping and was replaced
    assert opener.sessions[0].closed


async def test_borrow_server_unreachable_fails_fast_and_backs_off() -> None:
    clock = Clock()
    sp, opener = make(clock=clock)
    opener.fail = True
    with pytest.raises(ConnectFailed) as info:
        async with sp.borrow():
            pass
    assert info.value.delivered is False
    # Within the backoff window nobody tries to connect again: callers fail at once.
    with pytest.raises(ConnectFailed, match="reconnecting"):
        async with sp.borrow():
            pass
    opener.fail = False
    clock.now += 2  # the first backoff step is 1 s ± 20 %
    async with sp.borrow():
        pass


async def test_maintain_reports_leaked_borrow_with_where_it_was_taken(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    sp, _ = make(replace(POOL, leak_threshold=60.0), clock)
    borrow = sp.borrow()
    await borrow.__aenter__()
    clock.now += 61
    with caplog.at_level(logging.WARNING):
        await sp.maintain()
    assert "possible leak" in caplog.text
    assert "test_sessions.py" in caplog.text
    assert sp.leaked()
    assert "test_sessions.py" in sp.leaked()[0]
    await borrow.__aexit__(None, None, None)
    assert not sp.leaked()


async def test_close_fails_waiters_and_closes_sessions() -> None:
    sp, opener = make(replace(POOL, sessions_per_server=1, calls_per_session=1))
    gate = asyncio.Event()
    h = await started(hold(sp, gate))
    w = await started(borrow_once(sp))
    closing = asyncio.create_task(sp.close(grace=5))
    await asyncio.sleep(0.01)
    with pytest.raises(PoolClosed):
        await w
    gate.set()  # the call in flight finishes within the grace period
    await h
    await closing
    assert all(s.closed for s in opener.sessions)
