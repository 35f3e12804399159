"""SessionPool under any interleaving of borrows, returns, cancellations, session deaths, open
failures and upkeep (hypothesis; fake sessions, no network).

Each example runs a generated crowd of callers on one event loop while a monitor checks the
bounds at every scheduling point:

* never more than K usable sessions (plus those opening), never more than M borrows on one;
* `in_flight` equals the borrows callers actually hold; a slot is never handed out twice;

and once every caller has finished, whatever happened to it, every slot is back: nothing in
flight, nobody waiting, and after `close()` every session the pool opened is closed.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balancing.engine.config import PoolConfig, ServerConfig, Transport
from balancing.engine.errors import ConnectFailed, SessionGone, UpstreamError, UpstreamTimeout
from balancing.engine.sessions import AcquireTimeout, PoolClosed, SessionPool

SERVER = ServerConfig(id=1, name="a", transport=Transport.STDIO, command="x")
# Upkeep must not retire or ping on its own within an example: those paths have their own tests.
QUIET: dict[str, Any] = {
    "keepalive_interval": 3600.0,
    "validate_idle_after": 3600.0,
    "max_lifetime": 3600.0,
}


class FakeSession:
    def __init__(self, number: int) -> None:
        self.number = number
        self.alive = True
        self.closed = False

    async def request(
        self,
        method: str,
        params: Any,
        *,
        timeout: float,
        on_message: Any = None,
        headers: Any = None,
    ) -> Any:
        await asyncio.sleep(0)
        if not self.alive:
            raise SessionGone("gone", server="a")
        return {}

    async def ping(self, timeout: float) -> float:
        return 0.001

    async def close(self) -> None:
        await asyncio.sleep(0)
        self.closed = True
        self.alive = False


class Opener:
    """Opens sessions with the generated outcomes, in turn (then always succeeds)."""

    def __init__(self, outcomes: list[str]) -> None:
        self.outcomes = outcomes
        self.sessions: list[FakeSession] = []
        self.attempts = 0

    async def __call__(self) -> FakeSession:
        outcome = self.outcomes[self.attempts] if self.attempts < len(self.outcomes) else "ok"
        self.attempts += 1
        if outcome.startswith("slow"):
            for _ in range(3):
                await asyncio.sleep(0)
        if outcome.endswith("fail"):
            raise ConnectFailed("refused", server="a")
        if outcome.endswith("timeout"):
            raise UpstreamTimeout("no answer to the MCP negotiation", server="a")
        session = FakeSession(len(self.sessions))
        self.sessions.append(session)
        return session


@dataclass(frozen=True)
class Caller:
    start: int  # scheduling points to wait before borrowing
    hold: int  # scheduling points to hold the slot
    action: str  # "return" | "raise" | "die" | "request"
    cancel_at: int | None  # cancel the caller after this many scheduling points (None: never)
    timeout: float


callers = st.builds(
    Caller,
    start=st.integers(0, 6),
    hold=st.integers(0, 8),
    action=st.sampled_from(["return", "return", "raise", "die", "request"]),
    cancel_at=st.one_of(st.none(), st.integers(0, 14)),
    timeout=st.sampled_from([0.0005, 0.05]),
)
open_outcomes = st.lists(
    st.sampled_from(["ok", "ok", "fail", "timeout", "slow-ok", "slow-fail"]), max_size=6
)


class Monitor:
    """The test's own count of held borrows, and the bounds checked at every scheduling point."""

    def __init__(self, sp: SessionPool, opener: Opener, k: int, m: int) -> None:
        self.sp, self.opener, self.k, self.m = sp, opener, k, m
        self.held: Counter[int] = Counter()  # session number → borrows held by callers
        self.violations: list[str] = []

    def check(self) -> None:
        sp = self.sp
        usable = [slot for slot in sp._slots if slot.usable]
        if len(usable) + sp.counts()["opening"] > self.k:
            self.violations.append(f"{len(usable)} usable + opening > K={self.k}")
        for slot in sp._slots:
            if slot.borrowed > self.m:
                self.violations.append(f"slot with {slot.borrowed} borrows > M={self.m}")
        for number, count in self.held.items():
            if count > self.m:
                self.violations.append(f"session {number} held {count} times > M={self.m}")
        if sp.in_flight != sum(self.held.values()):
            self.violations.append(
                f"in_flight {sp.in_flight} != borrows held {sum(self.held.values())}"
            )

    async def watch(self) -> None:
        while True:
            self.check()
            await asyncio.sleep(0)


async def _ticks(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def _run_caller(sp: SessionPool, caller: Caller, monitor: Monitor) -> None:
    await _ticks(caller.start)
    async with sp.borrow(timeout=caller.timeout) as session:
        assert isinstance(session, FakeSession)
        assert session.alive or caller.action == "die"
        monitor.held[session.number] += 1
        try:
            if caller.action == "request":
                await session.request("tools/call", {}, timeout=1.0)
            await _ticks(caller.hold)
            if caller.action == "die":
                session.alive = False  # every other holder of this session sees it die too
                raise SessionGone("the process exited", server="a")
            if caller.action == "raise":
                raise RuntimeError("the caller's own bug")
        finally:
            monitor.held[session.number] -= 1


async def _scenario(
    k: int, m: int, crowd: list[Caller], outcomes: list[str], upkeep: list[int], seed: int
) -> Monitor:
    pool = PoolConfig(
        id=1, slug="p", sessions_per_server=k, calls_per_session=m, acquire_timeout=0.05, **QUIET
    )
    opener = Opener(outcomes)
    loop = asyncio.get_running_loop()
    sp = SessionPool(pool, SERVER, opener, clock=loop.time, rng=random.Random(seed))
    monitor = Monitor(sp, opener, k, m)
    watcher = asyncio.create_task(monitor.watch())

    tasks = [asyncio.create_task(_run_caller(sp, c, monitor)) for c in crowd]

    async def cancel_later(task: asyncio.Task[None], after: int) -> None:
        await _ticks(after)
        task.cancel()

    async def maintain_at(ticks: int) -> None:
        await _ticks(ticks)
        await sp.maintain()

    helpers = [
        asyncio.create_task(cancel_later(task, c.cancel_at))
        for task, c in zip(tasks, crowd, strict=True)
        if c.cancel_at is not None
    ]
    helpers += [asyncio.create_task(maintain_at(t)) for t in upkeep]
    results = await asyncio.gather(*tasks, *helpers, return_exceptions=True)
    for result in results:
        # Whatever a caller met is one of these; anything else escaped the pool's handling.
        allowed = (
            AcquireTimeout,
            PoolClosed,
            UpstreamError,
            RuntimeError,
            asyncio.CancelledError,
        )
        assert result is None or isinstance(result, allowed), repr(result)

    # every caller is done: every slot is back, nobody waits
    monitor.check()
    assert sp.in_flight == 0, (sp.in_flight, sp.waiting)
    assert sp.waiting == 0, (sp.in_flight, sp.waiting)
    assert all(slot.borrowed == 0 for slot in sp._slots)
    assert not sp._borrows
    await sp.close()
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    assert all(s.closed for s in opener.sessions), "a session the pool opened was never closed"
    return monitor


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    k=st.integers(1, 3),
    m=st.integers(1, 4),
    crowd=st.lists(callers, min_size=1, max_size=14),
    outcomes=open_outcomes,
    upkeep=st.lists(st.integers(0, 12), max_size=3),
    seed=st.integers(0, 2**16),
)
def test_session_pool_any_interleaving_stays_bounded_and_returns_every_slot(
    k: int, m: int, crowd: list[Caller], outcomes: list[str], upkeep: list[int], seed: int
) -> None:
    monitor = asyncio.run(_scenario(k, m, crowd, outcomes, upkeep, seed))
    assert monitor.violations == []


# ---- an example the properties found worth keeping -------------------------------------------


async def test_session_dies_with_several_borrows_in_flight_counts_them_until_returned() -> None:
    # given one session carrying three calls
    pool = PoolConfig(id=1, slug="p", sessions_per_server=1, calls_per_session=3, **QUIET)
    opener = Opener([])
    sp = SessionPool(pool, SERVER, opener, clock=asyncio.get_running_loop().time)
    dead = asyncio.Event()
    returned = asyncio.Event()

    async def call(dies: bool) -> None:
        async with sp.borrow() as session:
            if dies:
                session.alive = False  # type: ignore[misc]
                dead.set()
                return
            await returned.wait()

    others = [asyncio.create_task(call(False)) for _ in range(2)]
    await asyncio.sleep(0)

    # when the session dies under one of them, which returns first
    await call(True)

    # then the two calls still out on it are still counted, and a close waits for them
    assert sp.in_flight == 2
    closing = asyncio.create_task(sp.close(grace=5.0))
    await asyncio.sleep(0)
    assert not closing.done()
    returned.set()
    await asyncio.gather(*others, closing)
    assert sp.in_flight == 0


async def test_borrow_open_timeout_is_connect_failed_never_delivered() -> None:
    pool = PoolConfig(id=1, slug="p", sessions_per_server=1, **QUIET)
    sp = SessionPool(pool, SERVER, Opener(["timeout"]), clock=asyncio.get_running_loop().time)
    with pytest.raises(ConnectFailed) as info:
        async with sp.borrow():
            pass
    assert not info.value.delivered
    assert "could not open a session: no answer to the MCP negotiation" in str(info.value)
