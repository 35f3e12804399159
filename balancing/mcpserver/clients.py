"""The handshake era's client sessions as the endpoint sees them: ids, lookup, ending."""

from __future__ import annotations

import asyncio
from functools import lru_cache

from django.conf import settings

from balancing.engine.config import AdminState, Health
from balancing.engine.sticky import ClientSession, SessionIds, close_sessions
from balancing.errors_http import ApiError
from balancing.host import RuntimeHost
from balancing.keys import KeyRecord


@lru_cache(maxsize=1)
def _ids(secret: str) -> SessionIds:
    return SessionIds(secret)


def session_ids() -> SessionIds:
    return _ids(settings.SECRET_KEY)


def find(host: RuntimeHost, key: KeyRecord, slug: str, raw: bytes) -> ClientSession:
    """The client's session named by `Mcp-Session-Id`, or 404 (the client re-initializes)."""
    session_id = raw.decode("latin-1")
    for expired in host.client_sessions.sweep_due():
        end(host, expired)
    session = host.client_sessions.get(session_id)
    if session is None or session.key_id != key.id or session.pool != slug:
        # Expired, ended, not this client's — or minted by another web process (the id's MAC
        # says so), whose sessions live there: the client re-initializes here.
        where = (
            "another web process" if session is None and session_ids().verify(session_id) else ""
        )
        detail = f" (made by {where}: route by Mcp-Session-Id)" if where else ""
        raise ApiError("unknown_session", f"Session not found{detail}: initialize a new session")
    if session.sticky and not _bound_server_serves(host, session):
        end(host, session)
        raise ApiError("unknown_session", "the session's server went away: initialize again")
    return session


def _bound_server_serves(host: RuntimeHost, session: ClientSession) -> bool:
    """A sticky session's server is still in the pool, not down, and its session is alive."""
    live = host.runtime.pools.get(session.pool)
    endpoint = live.endpoints.get(session.server_id) if live is not None else None
    return (
        endpoint is not None
        and endpoint.config.state is not AdminState.DISABLED
        and endpoint.config.health is not Health.DOWN
        and session.upstream.alive
    )


def end(host: RuntimeHost, session: ClientSession) -> None:
    """Forget the session now; close its upstream session in the background."""
    host.client_sessions.remove(session.id)
    task = asyncio.ensure_future(close_sessions([session]))
    _background.add(task)
    task.add_done_callback(_background.discard)


_background: set[asyncio.Future[None]] = set()
