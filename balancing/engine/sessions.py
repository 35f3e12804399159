"""The sessions of one server: K multiplexed upstream sessions, each carrying up to M calls.

This is an HTTP/2-style pool, not a database pool: a borrow takes one *call slot* on the least
busy live session, so K=2 sessions with M=32 serve 64 concurrent calls. Borrowing is an
`async with` (`SessionPool.borrow`) that gives the slot back on every exit path, cancellation
included. When every slot is taken, callers wait in a FIFO queue for at most the acquire timeout.

Upkeep (`maintain`, run by the runtime about once a second): keep K sessions open (min idle = K),
ping idle sessions (keepalive), retire sessions at their max lifetime (replacement opened first,
the old one closed only once idle), drop dead ones, and report borrows held longer than the leak
threshold together with where they were taken. Opening after a failure backs off (1 s × 1.6, ±20 %,
up to 120 s) so a server that keeps failing is not hammered, and callers fail fast meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from types import CodeType, TracebackType
from typing import Any, Protocol

from balancing.engine.backoff import Backoff
from balancing.engine.config import PoolConfig, ServerConfig
from balancing.engine.errors import ConnectFailed, UpstreamError

log = logging.getLogger(__name__)

# Lifetimes get up to this share taken off at random, so sessions opened together do not all
# retire at the same moment (HikariCP).
LIFETIME_JITTER = 0.025


class Session(Protocol):
    """What the pool needs of an upstream session (`balancing.engine.upstream.UpstreamSession`)."""

    @property
    def alive(self) -> bool: ...

    async def request(
        self,
        method: str,
        params: dict[str, Any] | None,
        *,
        timeout: float,
        on_message: Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]: ...

    async def ping(self, timeout: float) -> float: ...

    async def close(self) -> None: ...


Opener = Callable[[], Awaitable[Session]]


class AcquireTimeout(UpstreamError):
    """Every call slot of the server stayed busy for the whole acquire timeout."""

    delivered = False

    @property
    def server_failure(self) -> bool:
        return False  # saturation is not ill health


class PoolClosed(UpstreamError):
    """The server left the pool (removed, disabled, shutting down) while the caller waited."""

    delivered = False

    @property
    def server_failure(self) -> bool:
        return False


class Slot:
    """One live upstream session and its bookkeeping."""

    __slots__ = ("borrowed", "expires_at", "last_used", "opened_at", "retiring", "session")

    def __init__(self, session: Session, now: float, lifetime: float) -> None:
        self.session = session
        self.borrowed = 0
        self.opened_at = now
        self.last_used = now
        self.expires_at = now + lifetime
        self.retiring = False

    @property
    def usable(self) -> bool:
        return not self.retiring and self.session.alive


class Borrow:
    """`async with pool.borrow() as session:` — one call slot, always given back."""

    __slots__ = ("_code", "_line", "_pool", "_timeout", "since", "slot")

    def __init__(self, pool: SessionPool, timeout: float | None, code: CodeType, line: int) -> None:
        self._pool = pool
        self._timeout = timeout
        self.slot: Slot | None = None
        self.since = 0.0
        self._code = code  # where it was taken, made text only when a leak is reported
        self._line = line

    @property
    def where(self) -> str:
        return f"{self._code.co_filename}:{self._line}"

    async def __aenter__(self) -> Session:
        self.slot = await self._pool._acquire(self._timeout)
        self.since = self._pool.clock()
        self._pool._borrows.add(self)
        return self.slot.session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        slot = self.slot
        if slot is None:
            return
        self.slot = None
        self._pool._borrows.discard(self)
        # A session that died mid-call (process exit, 404) marks itself dead: it is dropped here
        # and upkeep opens its replacement.
        self._pool._release(slot, discard=not slot.session.alive)


class SessionPool:
    def __init__(
        self,
        pool: PoolConfig,
        server: ServerConfig,
        opener: Opener,
        *,
        clock: Callable[[], float],
        rng: random.Random | None = None,
    ) -> None:
        self.pool = pool
        self.server = server
        self.clock = clock
        self._opener = opener
        self._rng = rng or random.Random()
        self._slots: list[Slot] = []
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._borrows: set[Borrow] = set()
        self._opening = 0
        # Counted apart from the slots: a session that dies under several calls leaves the pool
        # at once (so its replacement can open), but its calls are in flight until they return.
        self._in_flight = 0
        self._open_failures = 0
        self._next_open_at = 0.0
        self._last_open_error: BaseException | None = None
        self._backoff = Backoff(rng=self._rng)
        self._closed = False
        self._background: set[asyncio.Task[Any]] = set()
        self._leaks_reported: set[int] = set()
        self._drained: asyncio.Event | None = None  # set when closing and the last call ends

    # ---- config -------------------------------------------------------------------------
    def reconfigure(self, pool: PoolConfig, server: ServerConfig) -> None:
        """Apply a changed limit to the next borrow; sessions already open stay."""
        transport_changed = server.place != self.server.place
        self.pool, self.server = pool, server
        if transport_changed:
            # Where the server lives changed: every session retires, replacements open first.
            for slot in self._slots:
                slot.expires_at = 0.0
        self._wake(len(self._waiters))

    def reconnect_now(self) -> None:
        """The server is back (a health check passed): open sessions at the next chance instead
        of waiting out the backoff built up while it was away (up to two minutes)."""
        self._backoff.reset()
        self._next_open_at = 0.0

    # ---- borrowing ----------------------------------------------------------------------
    def borrow(self, timeout: float | None = None) -> Borrow:
        frame = sys._getframe(1)
        return Borrow(self, timeout, frame.f_code, frame.f_lineno)

    @property
    def capacity(self) -> int:
        return self.pool.sessions_per_server * self.pool.calls_per_session

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def counts(self) -> dict[str, int]:
        """Sessions by state, for metrics and the dashboard."""
        counts = {"idle": 0, "busy": 0, "retiring": 0, "opening": self._opening}
        for slot in self._slots:
            state = "retiring" if slot.retiring else ("busy" if slot.borrowed else "idle")
            counts[state] += 1
        return counts

    @property
    def opening(self) -> bool:
        """A session is being opened now (a stdio server starting)."""
        return self._opening > 0

    @property
    def last_open_error(self) -> BaseException | None:
        """Why the last opening failed, while no opening has succeeded since."""
        return self._last_open_error if self._open_failures else None

    async def ping_one(self, timeout: float) -> tuple[Session, float] | None:
        """Ping the least busy live session; it and the round trip (s), or None when none is open.

        The health report of a server this runtime runs (`balancing.engine.liveness`): asking the
        process that serves the calls costs a round trip, where a probe of its own would cost a
        second process. The ping shares the session with calls (JSON-RPC multiplexes).
        """
        slot = self._free_slot()
        if slot is None:
            return None
        self._take(slot)
        try:
            rtt = await slot.session.ping(timeout)
        except BaseException:
            self._release(slot, discard=not slot.session.alive)
            raise
        self._release(slot)
        return slot.session, rtt

    def _free_slot(self) -> Slot | None:
        best: Slot | None = None
        limit = self.pool.calls_per_session
        for slot in self._slots:
            if (
                slot.borrowed < limit
                and slot.usable
                and (best is None or slot.borrowed < best.borrowed)
            ):
                best = slot
        return best

    async def _acquire(self, timeout: float | None) -> Slot:
        if self._closed:
            raise PoolClosed("server left the pool", server=self.server.name)
        # Fast path: a free slot and nobody queued before us (FIFO fairness).
        if not self._waiters:
            slot = self._free_slot()
            if slot is not None:
                self._take(slot)
                if not self._stale(slot):
                    return slot
                return await self._validated(slot, self.pool.acquire_timeout)
        deadline = self.clock() + (self.pool.acquire_timeout if timeout is None else timeout)
        served = False  # woken from the queue (or opened a session): our turn, skip the queue
        while True:
            if self._closed:
                raise PoolClosed("server left the pool", server=self.server.name)
            if served or not self._waiters:
                slot = self._free_slot()
                if slot is not None:
                    self._take(slot)
                    return await self._validated(slot, deadline - self.clock())
            if len(self._slots) + self._opening < self.pool.sessions_per_server:
                if self.clock() >= self._next_open_at:
                    await self._open_one()
                    served = True
                    continue
                if not any(s.usable for s in self._slots):
                    # Nothing open and the server failed recently: fail fast so the balancer can
                    # try another server, rather than make the caller wait for a backoff.
                    raise ConnectFailed(
                        f"no session (reconnecting, last error: {self._last_open_error})",
                        server=self.server.name,
                    )
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise AcquireTimeout(
                    f"pool {self.pool.slug!r}: all {self.capacity} call slots of server "
                    f"{self.server.name!r} stayed busy for {self.pool.acquire_timeout:g} s",
                    server=self.server.name,
                )
            # A caller that was served but lost the slot keeps its place at the head.
            with contextlib.suppress(TimeoutError):  # the loop then reports AcquireTimeout
                await self._wait(remaining, front=served)
            served = True

    async def _wait(self, remaining: float, *, front: bool = False) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if front:
            self._waiters.appendleft(waiter)
        else:
            self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, remaining)
        except (TimeoutError, asyncio.CancelledError):
            if waiter.done() and not waiter.cancelled():
                self._wake(1)  # we were handed a slot we will not use: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def _wake(self, count: int) -> None:
        """Hand the next `count` queued callers their turn (they leave the queue now)."""
        waiters = self._waiters
        while count > 0 and waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                count -= 1

    def _stale(self, slot: Slot) -> bool:
        """Idle too long to hand out unchecked (and nobody else is using it right now)."""
        return slot.borrowed <= 1 and self.clock() - slot.last_used >= self.pool.validate_idle_after

    async def _validated(self, slot: Slot, remaining: float) -> Slot:
        """Ping a session that sat idle too long before handing it out (HikariCP-style)."""
        if not self._stale(slot):
            return slot
        try:
            await slot.session.ping(min(self.pool.check_timeout, max(remaining, 0.1)))
            slot.last_used = self.clock()
            return slot
        except BaseException as exc:
            self._release(slot, discard=True)
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.info(
                "%s: idle session failed validation (%s); opening another", self.server.name, exc
            )
            return await self._acquire(remaining)

    def _take(self, slot: Slot) -> None:
        slot.borrowed += 1
        self._in_flight += 1

    def _release(self, slot: Slot, *, discard: bool = False) -> None:
        slot.borrowed -= 1
        self._in_flight -= 1
        slot.last_used = self.clock()
        if discard or not slot.session.alive or (slot.retiring and slot.borrowed == 0):
            self._drop(slot)
        self._wake(1)
        if self._drained is not None and not self.in_flight:
            self._drained.set()

    def _drop(self, slot: Slot) -> None:
        if slot in self._slots:
            self._slots.remove(slot)
            self._spawn(slot.session.close())

    async def _open_one(self) -> None:
        self._opening += 1
        try:
            session = await self._opener()
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            self._open_failures += 1
            self._last_open_error = exc
            self._next_open_at = self.clock() + self._backoff.next_delay()
            log.warning("%s: could not open a session: %s", self.server.name, exc)
            if not any(s.usable for s in self._slots):
                if isinstance(exc, ConnectFailed):
                    raise
                # However the opening failed (a handshake that timed out, a process that died
                # during it), the caller's call never left: it may be retried elsewhere.
                reason = Exception.__str__(exc) if isinstance(exc, UpstreamError) else str(exc)
                raise ConnectFailed(
                    f"could not open a session: {reason}", server=self.server.name
                ) from exc
            return
        finally:
            self._opening -= 1
        self._open_failures = 0
        self._backoff.reset()
        self._next_open_at = 0.0
        if self._closed:
            self._spawn(session.close())
            return
        lifetime = self.pool.max_lifetime * (1 - LIFETIME_JITTER * self._rng.random())
        self._slots.append(Slot(session, self.clock(), lifetime))
        self._wake(self.pool.calls_per_session)

    # ---- upkeep -------------------------------------------------------------------------
    async def maintain(self) -> None:
        """One round of upkeep; the runtime calls it about once a second."""
        if self._closed:
            return
        now = self.clock()
        for slot in list(self._slots):
            if not slot.session.alive and slot.borrowed == 0:
                self._drop(slot)
        # Retire at max lifetime: open the replacement first, close the old one once idle.
        for slot in list(self._slots):
            if not slot.retiring and now >= slot.expires_at:
                if self._live() <= self.pool.sessions_per_server and now >= self._next_open_at:
                    await self._try_open()
                slot.retiring = True
                if slot.borrowed == 0:
                    self._drop(slot)
        await self._keepalive()
        while self._live() + self._opening < self.pool.sessions_per_server:
            if self.clock() < self._next_open_at or not await self._try_open():
                break
        self._report_leaks()

    def _live(self) -> int:
        return sum(1 for s in self._slots if s.usable)

    async def _try_open(self) -> bool:
        try:
            await self._open_one()
        except UpstreamError:
            return False
        return self._open_failures == 0

    async def _keepalive(self) -> None:
        now = self.clock()
        idle = [
            s
            for s in self._slots
            if s.borrowed == 0 and s.usable and now - s.last_used >= self.pool.keepalive_interval
        ]
        for slot in idle:
            self._take(slot)  # hold it so nobody else takes it mid-ping
            try:
                await slot.session.ping(self.pool.check_timeout)
            except Exception as exc:
                log.info(
                    "%s: keepalive ping failed (%s); replacing the session", self.server.name, exc
                )
                self._release(slot, discard=True)
            else:
                self._release(slot)

    def _report_leaks(self) -> None:
        now = self.clock()
        for borrow in list(self._borrows):
            if (
                now - borrow.since > self.pool.leak_threshold
                and id(borrow) not in self._leaks_reported
            ):
                self._leaks_reported.add(id(borrow))
                log.warning(
                    "%s/%s: a session borrow has been held for %.0f s (possible leak), taken at %s",
                    self.pool.slug,
                    self.server.name,
                    now - borrow.since,
                    borrow.where,
                )
        if len(self._leaks_reported) > 1000:
            live = {id(b) for b in self._borrows}
            self._leaks_reported &= live

    def leaked(self) -> list[str]:
        """Where each borrow held longer than the leak threshold was taken."""
        now = self.clock()
        return [b.where for b in self._borrows if now - b.since > self.pool.leak_threshold]

    # ---- shutdown -----------------------------------------------------------------------
    async def close(self, grace: float = 0.0) -> None:
        """Stop taking borrows; wait up to `grace` for calls in flight, then close every session."""
        self._closed = True
        self._wake(len(self._waiters))
        if self.in_flight:
            self._drained = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), grace)
        slots, self._slots = self._slots, []
        await asyncio.gather(*(s.session.close() for s in slots), return_exceptions=True)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    @property
    def closed(self) -> bool:
        return self._closed

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
