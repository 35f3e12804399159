"""What this runtime knows of the stdio servers it runs, for the active health checks.

A stdio server's calls are served by processes this web process spawned. A health check that
spawned a copy of its own would double the processes and, on a loaded machine where start-up takes
longer than the check interval, kill and respawn that copy every interval. Instead each runtime
reports, every half interval, what its own sessions say: a ping's round trip and protocol era,
"still starting" while a process is being started, or why it could not start. The worker turns
a fresh report into the check's result and probes only the servers no runtime reports on
(docs/health.md).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from balancing.engine.config import Transport
from balancing.engine.errors import UpstreamError
from balancing.engine.runtime import Runtime
from balancing.engine.sessions import SessionPool

# Bounds of the reporting period (half the shortest check interval of the pools reported on).
MIN_PERIOD = 0.25
MAX_PERIOD = 5.0


@dataclass(frozen=True, slots=True)
class Liveness:
    server_id: int
    ok: bool
    starting: bool = False  # a process is being started (within the pool's start timeout)
    latency_ms: float | None = None
    error: str = ""
    era: str = ""
    protocol_version: str = ""


def stdio_pools(runtime: Runtime) -> list[tuple[float, list[SessionPool]]]:
    """(check timeout, stdio session pools) of every pool that runs stdio servers."""
    found = []
    for live in list(runtime.pools.values()):
        pools = [
            sp
            for sp in list(live.sessions.values())
            if sp.server.transport is Transport.STDIO and not sp.closed
        ]
        if pools:
            found.append((live.config.check_timeout, pools))
    return found


def period(runtime: Runtime) -> float:
    """How often to report: half the shortest check interval of a pool with stdio servers."""
    intervals = [
        live.config.check_interval
        for live in list(runtime.pools.values())
        if any(s.transport is Transport.STDIO for s in live.config.servers)
    ]
    if not intervals:
        return MAX_PERIOD
    return min(max(min(intervals) / 2.0, MIN_PERIOD), MAX_PERIOD)


async def survey(runtime: Runtime) -> list[Liveness]:
    """One report per stdio server this runtime has sessions for (or is starting)."""
    work = [_one(sp, timeout) for timeout, pools in stdio_pools(runtime) for sp in pools]
    return [r for r in await asyncio.gather(*work) if r is not None]


async def _one(sp: SessionPool, timeout: float) -> Liveness | None:
    server_id = sp.server.id
    try:
        pinged = await sp.ping_one(timeout)
    except (UpstreamError, OSError, TimeoutError) as exc:
        return Liveness(server_id, ok=False, error=f"ping failed: {exc or type(exc).__name__}")
    if pinged is not None:
        session, rtt = pinged
        era = getattr(session, "era", "")
        return Liveness(
            server_id,
            ok=True,
            latency_ms=rtt * 1000.0,
            era=str(getattr(era, "value", era)),
            protocol_version=str(getattr(session, "protocol_version", "")),
        )
    if sp.opening:
        return Liveness(server_id, ok=False, starting=True, error="starting")
    error = sp.last_open_error
    if error is not None:
        return Liveness(server_id, ok=False, error=f"could not start: {error}"[:2000])
    return None  # nothing open, nothing tried yet: no verdict of ours
