"""Active probes: is one MCP server answering, in the protocol era it speaks?

A probe asks the cheapest question the server's era allows, on a session of the prober's own
(never one of the runtime's, whose call slots belong to apps):

* 2026-07-28 servers: `server/discover` (stateless; nothing to keep between probes);
* handshake-era servers: `ping` on a probe session kept between probes, so a probe costs one round
  trip rather than a full `initialize`; when the server has forgotten the session (404 after a
  restart) the probe re-initializes at once and pings again — the server is up, it just lost us;
* stdio servers: through a process of the prober's own, kept like a session; a process that died
  is spawned again by the next probe. (`monitoring.checks` probes only the stdio servers that no
  web process reports on: the others are judged from the runtime's own sessions.)

Every probe is bounded by the pool's `check_timeout`, so a hanging server fails its probe rather
than holding up the worker. Starting a stdio process is not: it goes on in the background for up
to the pool's `start_timeout`, across as many probes as it takes (each answers "still starting",
which counts neither way), so a server slower to start than the check interval is started once,
not killed and spawned again every interval. Now and then a probe also reads `tools/list` and
reduces it to a count and a hash (see `tools_hash`).

`ProbeLoop` runs a `Prober` on an event loop thread of its own, so its sessions outlive the Celery
task that used them; `run_once` probes with fresh sessions and closes them (the admin's
"check now" in the web process, which must not keep upstream processes alive).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import aiohttp
import orjson
from django.conf import settings

from balancing import observe
from balancing.engine.config import PoolConfig, ServerConfig, Transport
from balancing.engine.errors import CallRejected, SessionGone, UpstreamError, UpstreamTimeout
from balancing.engine.policy import UpstreamPolicy
from balancing.engine.runtime import local_command
from balancing.engine.transport_http import client_session
from balancing.engine.upstream import UpstreamSession

log = logging.getLogger(__name__)
T = TypeVar("T")
JsonObject = dict[str, Any]

CLIENT_INFO: JsonObject = {"name": "mcppool-health", "version": "0.1.0"}
# How often a probe loop asks which of its kept servers still exist and are enabled.
SWEEP_SECONDS = 1.0
# Given the ids of the servers with kept probe sessions, the ids still to be probed.
Sweeper = Callable[[set[int]], set[int]]
TOOLS_MAX_PAGES = 100  # against a server whose cursor never ends
# The tool fields that decide what a call may send and get back and whether it may be retried.
# Descriptions and titles are left out: rewording one changes nothing a caller relies on.
HASHED_TOOL_FIELDS = ("name", "inputSchema", "outputSchema", "annotations")


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    latency_ms: float | None = None
    error: str = ""
    era: str = ""  # "handshake" / "modern"; empty when no session was negotiated
    protocol_version: str = ""
    tools_count: int | None = None  # None: tools were not read by this probe
    tools_hash: str = ""
    seconds: float = 0.0  # the whole probe, opening a session included
    starting: bool = False  # a stdio server still starting within its start timeout: no verdict


class StillStarting(Exception):
    """The server's process is starting and its start timeout has not passed: no verdict yet."""


def tools_hash(tools: Iterable[JsonObject]) -> str:
    """SHA-256 of the canonical JSON of the tools sorted by name, each reduced to
    `HASHED_TOOL_FIELDS` (absent fields left out): equal for servers offering the same calls."""
    reduced = sorted(
        ({k: t[k] for k in HASHED_TOOL_FIELDS if k in t} for t in tools),
        key=lambda t: str(t.get("name", "")),
    )
    return hashlib.sha256(orjson.dumps(reduced, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _where(server: ServerConfig) -> tuple[Any, ...]:
    """What identifies the server's endpoint: when it changes, the kept session is stale."""
    return (
        server.transport,
        server.url,
        server.headers,
        server.command,
        server.args,
        server.env,
        server.cwd,
        server.era,
    )


class Prober:
    """Probes servers on one event loop, keeping a probe session per server between probes."""

    def __init__(
        self, *, keep_sessions: bool = True, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.keep_sessions = keep_sessions
        self._clock = clock
        self._sessions: dict[int, tuple[tuple[Any, ...], UpstreamSession]] = {}
        # stdio processes being started: (where, the opening, when it began); outlives probes
        self._opening: dict[int, tuple[tuple[Any, ...], asyncio.Task[UpstreamSession], float]] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._pool_of: dict[int, int] = {}  # server id -> pool id, for `retain`
        self._http: aiohttp.ClientSession | None = None

    @property
    def kept(self) -> set[int]:
        """Ids of the servers with a probe session open (or a process starting) now."""
        return set(self._sessions) | set(self._opening)

    def session_of(self, server_id: int) -> UpstreamSession | None:
        """The kept probe session of a server, if one is open."""
        kept = self._sessions.get(server_id)
        return kept[1] if kept is not None else None

    async def probe(
        self, pool: PoolConfig, server: ServerConfig, *, list_tools: bool = False
    ) -> ProbeResult:
        lock = self._locks.setdefault(server.id, asyncio.Lock())
        self._pool_of[server.id] = pool.id
        async with lock:  # one probe per server at a time: they would share the session
            started = self._clock()
            try:
                result = await self._probe(pool, server, list_tools)
            except StillStarting as exc:
                result = ProbeResult(ok=False, error=str(exc), starting=True)
            except Exception as exc:  # whatever went wrong, it is this server's failed probe
                if not isinstance(exc, (UpstreamError, OSError, TimeoutError)):
                    log.warning("probe of %s failed unexpectedly", server.name, exc_info=True)
                kept = self.session_of(server.id)
                if not (isinstance(exc, (TimeoutError, UpstreamTimeout)) and kept and kept.alive):
                    # A slow answer leaves the session usable: reopening it (an `initialize` and
                    # a new connection) on every slow probe cost more than the probes at 1000.
                    await self._drop(server.id)
                result = ProbeResult(ok=False, error=_describe(exc, pool.check_timeout))
            finally:
                if not self.keep_sessions:
                    await self._drop(server.id)
            result = replace(result, seconds=self._clock() - started)
            observe.probed(pool, server, result.ok, result.seconds, result.error)  # a span
            return result

    async def probe_pool(
        self,
        pool: PoolConfig,
        servers: Iterable[tuple[ServerConfig, bool]],
        *,
        jitter: float = 0.0,
        rng: random.Random | None = None,
    ) -> list[ProbeResult]:
        """Probe `(server, list_tools)` pairs concurrently; results in the same order.

        Each probe starts after a random delay of up to `jitter` seconds, so the servers of a pool
        are not all hit in the same millisecond, check after check.
        """
        rng = rng or random.Random()

        async def one(server: ServerConfig, list_tools: bool) -> ProbeResult:
            if jitter > 0:
                await asyncio.sleep(rng.uniform(0, jitter))
            return await self.probe(pool, server, list_tools=list_tools)

        return list(await asyncio.gather(*(one(s, t) for s, t in servers)))

    async def retain(self, pool_id: int, server_ids: Iterable[int]) -> None:
        """Keep probe sessions only for these servers of the pool; close its others."""
        keep = set(server_ids)
        await self.forget([s for s, p in self._pool_of.items() if p == pool_id and s not in keep])

    async def forget(self, server_ids: Iterable[int]) -> None:
        """Close the probe sessions of these servers (removed, disabled, or moved)."""
        for server_id in list(server_ids):
            await self._drop(server_id)
            self._locks.pop(server_id, None)
            self._pool_of.pop(server_id, None)

    async def close(self) -> None:
        await self.forget(list(self.kept))
        if self._http is not None:
            await self._http.close()
            self._http = None

    # ---- internals ---------------------------------------------------------------------
    async def _probe(self, pool: PoolConfig, server: ServerConfig, list_tools: bool) -> ProbeResult:
        timeout = pool.check_timeout
        session = await self._session(pool, server)
        try:
            rtt = await session.ping(timeout)
        except SessionGone:
            # The server forgot our session (restarted) or the stdio process exited: it may be
            # fine; re-initialize and ask again before calling it a failure.
            await self._drop(server.id)
            session = await self._session(pool, server)
            rtt = await session.ping(timeout)
        count: int | None = None
        digest = ""
        if list_tools:
            tools = await _list_tools(session, timeout)
            if tools is not None:
                count, digest = len(tools), tools_hash(tools)
        return ProbeResult(
            ok=True,
            latency_ms=rtt * 1000.0,
            era=session.era.value,
            protocol_version=session.protocol_version,
            tools_count=count,
            tools_hash=digest,
        )

    async def _session(self, pool: PoolConfig, server: ServerConfig) -> UpstreamSession:
        where = _where(server)
        kept = self._sessions.get(server.id)
        if kept is not None:
            if kept[0] == where and kept[1].alive:
                return kept[1]
            await self._drop(server.id)
        if server.transport is Transport.STDIO:
            session = await self._started(pool, server, where)
            self._sessions[server.id] = (where, session)
            return session
        if self._http is None:
            # The runtime's client: the outbound policy is checked on every connect.
            policy = _policy()
            self._http = client_session(policy.outbound if policy else None)
        session = await UpstreamSession.open(
            local_command(server),
            http=self._http,
            client_info=CLIENT_INFO,
            capabilities={},
            timeout=pool.check_timeout,
        )
        self._sessions[server.id] = (where, session)
        return session

    async def _started(
        self, pool: PoolConfig, server: ServerConfig, where: tuple[Any, ...]
    ) -> UpstreamSession:
        """The stdio session once its process has started; waits at most the check timeout.

        The start goes on in the background (up to `start_timeout`) when the probe gives up, and
        the next probe waits for the same start rather than spawning another process.
        """
        opening = self._opening.get(server.id)
        if opening is not None and opening[0] != where:
            await self._drop(server.id)
            opening = None
        if opening is None:
            task = asyncio.ensure_future(
                UpstreamSession.open(
                    local_command(server),
                    http=None,
                    client_info=CLIENT_INFO,
                    capabilities={},
                    timeout=pool.start_timeout,
                    commands=policy.commands if (policy := _policy()) else None,
                )
            )
            opening = self._opening[server.id] = (where, task, self._clock())
        _, task, since = opening
        try:
            return await asyncio.wait_for(asyncio.shield(task), pool.check_timeout)
        except TimeoutError:
            if task.done():
                raise  # the start itself timed out
            raise StillStarting(
                f"starting for {self._clock() - since:.0f}s (start timeout {pool.start_timeout:g}s)"
            ) from None
        finally:
            if task.done():
                self._opening.pop(server.id, None)

    async def _drop(self, server_id: int) -> None:
        opening = self._opening.pop(server_id, None)
        if opening is not None and not opening[1].done():
            opening[1].cancel()  # ends the process being started
            await asyncio.gather(opening[1], return_exceptions=True)
        kept = self._sessions.pop(server_id, None)
        if kept is not None:
            with contextlib.suppress(Exception):
                await kept[1].close()


async def _list_tools(session: UpstreamSession, timeout: float) -> list[JsonObject] | None:
    """Every page of `tools/list`; None when the server has no tools to list (it refused)."""
    tools: list[JsonObject] = []
    cursor: str | None = None
    for _ in range(TOOLS_MAX_PAGES):
        try:
            page = await session.request(
                "tools/list", {"cursor": cursor} if cursor else None, timeout=timeout
            )
        except CallRejected:
            return None  # no tools capability: not a health problem
        tools.extend(t for t in page.get("tools", []) if isinstance(t, dict) and "name" in t)
        cursor = page.get("nextCursor")
        if not isinstance(cursor, str) or not cursor:
            break
    return tools


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s"
    text = str(exc) or type(exc).__name__
    return text[:2000]


# ---- running probes from synchronous code ---------------------------------------------------


class ProbeLoop:
    """An event loop on a thread of its own, holding a `Prober` from one Celery task to the next.

    Celery runs tasks synchronously; a loop per task would close every kept session (and kill
    every stdio probe process) when the task ends. Here the loop lives as long as the worker
    process, and `run` hands it work from any thread, waiting at most `timeout` seconds.
    """

    def __init__(self, sweeper: Sweeper | None = None, every: float = SWEEP_SECONDS) -> None:
        self.pid = os.getpid()
        self.prober = Prober()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="mcppool-probes", daemon=True
        )
        self._thread.start()
        self._sweeping: concurrent.futures.Future[None] | None = None
        if sweeper is not None:
            self._sweeping = asyncio.run_coroutine_threadsafe(
                self._sweep_forever(sweeper, every), self._loop
            )

    async def _sweep_forever(self, sweeper: Sweeper, every: float) -> None:
        """Close the probe sessions (and stdio probe processes) of servers deleted or disabled
        since: within `every` seconds, not at the pool's next round — a deleted pool has none."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(every)
            kept = self.prober.kept
            if not kept:
                continue
            try:
                wanted = await loop.run_in_executor(None, sweeper, kept)
            except Exception as exc:  # database away: keep them until it answers
                log.warning("probe sweep failed: %s", exc)
                continue
            gone = kept - wanted
            if gone:
                log.info("closing the probe sessions of %d removed server(s)", len(gone))
                await self.prober.forget(gone)

    def run(self, work: Callable[[Prober], Awaitable[T]], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(_call(work, self.prober), self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"probes did not finish within {timeout:g}s") from None

    def stop(self) -> None:
        if not self._loop.is_running():
            return
        if self._sweeping is not None:
            self._sweeping.cancel()
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.prober.close(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()


async def _call(work: Callable[[Prober], Awaitable[T]], prober: Prober) -> T:
    return await work(prober)


_process_loop: ProbeLoop | None = None
_process_lock = threading.Lock()
_sweeper: Sweeper | None = None


def use_sweeper(sweeper: Sweeper) -> None:
    """Which of the kept servers are still wanted (`monitoring.checks.still_wanted`): this
    module stays free of the database, the worker's tasks module plugs it in."""
    global _sweeper
    _sweeper = sweeper


def process_loop() -> ProbeLoop:
    """This process's probe loop, started on first use (after a fork, a new one)."""
    global _process_loop
    with _process_lock:
        if _process_loop is None or _process_loop.pid != os.getpid():
            _process_loop = ProbeLoop(_sweeper)
        return _process_loop


def stop_process_loop() -> None:
    """Close this process's probe sessions and stop its loop (worker shutdown, tests)."""
    global _process_loop
    with _process_lock:
        loop, _process_loop = _process_loop, None
    if loop is not None and loop.pid == os.getpid():
        loop.stop()


def run_in_process_loop(work: Callable[[Prober], Awaitable[T]], timeout: float) -> T:
    """Run probes on this process's kept sessions (the Celery worker's way)."""
    return process_loop().run(work, timeout)


def run_once(work: Callable[[Prober], Awaitable[T]], timeout: float) -> T:
    """Run probes on fresh sessions, closed before returning (nothing is left running)."""

    async def main() -> T:
        prober = Prober(keep_sessions=False)
        try:
            async with asyncio.timeout(timeout):
                return await work(prober)
        finally:
            await prober.close()

    return asyncio.run(main())


def _policy() -> UpstreamPolicy | None:
    """The operator's command and outbound policy (settings), as the web process enforces it."""
    policy: UpstreamPolicy | None = getattr(settings, "MCPPOOL_UPSTREAM_POLICY", None)
    return policy
