"""Client sessions of the MCP endpoint (handshake era): ids, idle expiry, sticky bindings.

A client that speaks the handshake era gets a session id from the gateway on `initialize`. In a
`shared` pool the session is only bookkeeping (protocol version, log level, who owns it); its
calls ride the pool's multiplexed upstream sessions. In a `sticky` pool the session is bound to
one server and owns one upstream session of its own, so whatever is stateful upstream (log level,
subscriptions, sampling and elicitation mid-call) belongs to exactly one client.

Ids are sealed tokens (`engine/session_token.py`) that any web process can open: a process that
does not hold a session continues it from its id (over HTTP, on the upstream's own session) as a
*copy* (`owned` False). A copy ending (idle, process stopping) only forgets the session here;
the owner's session, or the client's DELETE, ends it upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


class UpstreamLike(Protocol):
    @property
    def alive(self) -> bool: ...

    async def close(self) -> None: ...

    async def detach(self) -> None: ...


@dataclass(slots=True, eq=False)
class ClientSession:
    id: str
    pool: str
    key_id: int
    protocol_version: str
    created_at: float
    last_used: float
    server_id: int = 0  # sticky: the bound server
    upstream: Any = None  # sticky: the session's own `UpstreamSession`
    log_level: str = ""  # set by logging/setLevel; forwarded with each call in shared pools
    client_capabilities: dict[str, Any] = field(default_factory=dict)
    client_info: dict[str, Any] = field(default_factory=dict)
    owned: bool = True  # False: continued here from its sealed id, created by another process
    stream_at: str = ""  # the channel of the web process serving the client's GET stream ("": here)
    # server→client requests relayed to the client, waiting for its answer (gateway id → future)
    pending: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    next_relay_id: int = 0
    in_flight: int = 0
    # the endpoint's handles: calls running (client request id → task), the emitter of the
    # call running now (stdio upstreams tie no message to a call), the GET stream's queue
    calls: dict[str, asyncio.Future[Any]] = field(default_factory=dict)
    active_emit: Any = None
    events: asyncio.Queue[dict[str, Any]] | None = None

    @property
    def sticky(self) -> bool:
        return self.upstream is not None

    def relay_id(self) -> str:
        self.next_relay_id += 1
        return f"mcppool-{self.next_relay_id}"


class SessionTable:
    """The process's client sessions; expired ones are swept as new ones are made."""

    def __init__(
        self, *, idle_timeout: float = 600.0, clock: Callable[[], float], sweep_every: float = 30.0
    ) -> None:
        self.idle_timeout = idle_timeout
        self._clock = clock
        self._sessions: dict[str, ClientSession] = {}
        self._sweep_every = sweep_every
        self._last_sweep = clock()
        self._opening: dict[str, list[int]] = {}  # pool → key ids of sticky sessions opening

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Any:
        return iter(list(self._sessions.values()))

    def add(self, session: ClientSession) -> list[ClientSession]:
        """Register `session`; returns the expired sessions swept out (the caller closes them)."""
        self._sessions[session.id] = session
        return self.sweep_due()

    def sweep_due(self) -> list[ClientSession]:
        """Every `sweep_every` seconds: remove and return the expired sessions."""
        now = self._clock()
        if now - self._last_sweep < self._sweep_every:
            return []
        self._last_sweep = now
        return self.expired(now)

    def get(self, session_id: str) -> ClientSession | None:
        session = self._sessions.get(session_id)
        if session is not None:
            session.last_used = self._clock()
        return session

    def peek(self, session_id: str) -> ClientSession | None:
        """The session, without counting this as its use (another process's news about it)."""
        return self._sessions.get(session_id)

    def remove(self, session_id: str) -> ClientSession | None:
        return self._sessions.pop(session_id, None)

    def expired(self, now: float) -> list[ClientSession]:
        """Remove and return sessions idle past the timeout (never one with a call running)."""
        gone = [
            s
            for s in self._sessions.values()
            if s.in_flight == 0 and now - s.last_used > self.idle_timeout
        ]
        for session in gone:
            del self._sessions[session.id]
        return gone

    def drain(self) -> list[ClientSession]:
        sessions = list(self._sessions.values())
        self._sessions.clear()
        return sessions

    # ---- sticky sessions cost a process: capped, and closed with their pool or server ----

    @contextlib.contextmanager
    def slot(self, pool: str, key_id: int, total: int, per_key: int) -> Iterator[None]:
        """Hold a place for one sticky session of `key_id` in `pool` while it is being opened,
        or raise SessionLimit. Taken before the upstream session opens (a spawn takes a second),
        so concurrent `initialize`s cannot all pass the count; a session that registers counts
        on its own once the slot is released."""
        held = [s for s in self._sessions.values() if s.pool == pool and s.server_id and s.owned]
        pending = self._opening.get(pool, [])
        mine = sum(1 for s in held if s.key_id == key_id) + pending.count(key_id)
        if len(held) + len(pending) >= total:
            raise SessionLimit(f"pool {pool!r} holds its maximum of {total} sticky sessions")
        if mine >= per_key:
            raise SessionLimit(
                f"this API key holds its maximum of {per_key} sticky sessions in pool {pool!r}"
            )
        pending.append(key_id)
        self._opening[pool] = pending
        try:
            yield
        finally:
            pending.remove(key_id)
            if not pending:
                self._opening.pop(pool, None)

    def orphans(self, servers: Mapping[str, Collection[int]]) -> list[ClientSession]:
        """Remove and return the sessions whose pool is gone, or whose bound server is gone or
        disabled (`servers`: each live pool's serving server ids). The caller closes them."""
        gone = [
            s
            for s in self._sessions.values()
            if s.pool not in servers or (s.server_id and s.server_id not in servers[s.pool])
        ]
        for session in gone:
            del self._sessions[session.id]
        return gone


class SessionLimit(Exception):
    """A pool's sticky-session cap (total or per key) is reached."""


async def close_sessions(sessions: list[ClientSession], *, end_upstream: bool = False) -> None:
    """Close the upstream sessions of sticky client sessions (a copy only lets go of it: the
    session goes on upstream for the other processes, unless `end_upstream`: the client's
    DELETE); fail their waiting relays."""
    for session in sessions:
        for future in session.pending.values():
            if not future.done():
                future.cancel()
        session.pending.clear()
    await asyncio.gather(
        *(
            s.upstream.close() if s.owned or end_upstream else s.upstream.detach()
            for s in sessions
            if s.upstream is not None
        ),
        return_exceptions=True,
    )
