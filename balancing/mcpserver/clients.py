"""The handshake era's client sessions as the endpoint sees them: ids, lookup, ending.

A session id is sealed (`engine/session_token.py`), so a request whose session this process
does not hold — it was created by another web process behind the same load balancer — is
continued here from the id alone: a shared pool's session is bookkeeping, rebuilt at once; a
sticky session on an HTTP server speaks on the server's own session (no new `initialize`). A
stdio server is a child of the process that spawned it, so only that process serves its
sessions; elsewhere the client gets the spec's 404 and initializes again.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from balancing.engine.config import AdminState, Era, Health, Transport
from balancing.engine.session_token import ForeignSession, SessionToken
from balancing.engine.sticky import ClientSession, close_sessions
from balancing.errors_http import ApiError
from balancing.host import RuntimeHost
from balancing.keys import KeyRecord
from balancing.mcpserver import remote


def seal(host: RuntimeHost, session: ClientSession) -> str:
    """The session's id: what any web process needs to continue it, sealed."""
    upstream = session.upstream
    token = SessionToken(
        pool=session.pool,
        key_id=session.key_id,
        owner=host.channel or host.process_id,  # the channel: where to reach the owner
        protocol_version=session.protocol_version,
        server_id=session.server_id,
        upstream_session_id=upstream.upstream_session_id if upstream is not None else None,
        server_capabilities=upstream.server_capabilities if upstream is not None else {},
        client_info=session.client_info,
        client_capabilities=session.client_capabilities,
    )
    return host.session_sealer.seal(token)


async def find(host: RuntimeHost, key: KeyRecord, slug: str, raw: bytes) -> ClientSession:
    """The client's session named by `Mcp-Session-Id`, or 404 (the client re-initializes)."""
    session_id = raw.decode("latin-1")
    for expired in host.client_sessions.sweep_due():
        end(host, expired)
    session = host.client_sessions.get(session_id)
    if session is None:
        session = await _continue(host, key, slug, session_id)
    if session.key_id != key.id or session.pool != slug:
        raise _unknown("")
    if session.sticky and not _bound_server_serves(host, session):
        end(host, session)
        raise ApiError("unknown_session", "the session's server went away: initialize again")
    return session


def _unknown(why: str) -> ApiError:
    return ApiError("unknown_session", f"Session not found{why}: initialize a new session")


# Sessions being continued here right now (id → the one task doing it): a client's concurrent
# requests landing here together share one continuation.
_continuing: dict[str, asyncio.Future[ClientSession]] = {}


async def _continue(host: RuntimeHost, key: KeyRecord, slug: str, session_id: str) -> ClientSession:
    """A session another process created, continued here from its sealed id."""
    try:
        token = host.session_sealer.open(slug, session_id)
    except ForeignSession:
        raise _unknown("") from None  # forged, altered, another pool, or a retired key
    if token.key_id != key.id:
        raise _unknown("")
    if host.owns(token.owner):
        raise _unknown(" (it ended or expired)")
    pending = _continuing.get(session_id)
    if pending is not None:
        return await asyncio.shield(pending)
    future: asyncio.Future[ClientSession] = asyncio.get_running_loop().create_future()
    _continuing[session_id] = future
    try:
        session = await _rebuild(host, session_id, token)
    except BaseException as exc:
        future.set_exception(exc)
        future.exception()  # retrieved: nobody else may be waiting
        raise
    else:
        future.set_result(session)
    finally:
        del _continuing[session_id]
    for expired in host.client_sessions.add(session):
        end(host, expired)
    return session


async def _rebuild(host: RuntimeHost, session_id: str, token: SessionToken) -> ClientSession:
    from balancing.mcpserver.relays import session_events  # relays imports this module

    now = host.runtime.clock()
    session = ClientSession(
        id=session_id,
        pool=token.pool,
        key_id=token.key_id,
        protocol_version=token.protocol_version,
        created_at=now,
        last_used=now,
        client_capabilities=token.client_capabilities,
        client_info=token.client_info,
        owned=False,
    )
    session.log_level = host.session_levels.get(session_id, "")  # set through another process
    if not token.server_id:
        return session  # a shared pool's session: bookkeeping only
    live = host.runtime.pools.get(token.pool)
    endpoint = live.endpoints.get(token.server_id) if live is not None else None
    if live is None or endpoint is None:
        raise ApiError("unknown_session", "the session's server went away: initialize again")
    server = endpoint.config
    if server.transport is Transport.STDIO or token.upstream_session_id is None:
        if remote.reachable(token.owner):
            raise remote.OwnedElsewhere(token.owner)  # served there, through this process
        raise _unknown(" (its stdio server runs in the web process that created it)")
    session.server_id = server.id
    session.upstream = await host.runtime.resume_upstream(
        replace(server, era=Era.HANDSHAKE),
        session_id=token.upstream_session_id,
        protocol_version=token.protocol_version,
        server_capabilities=token.server_capabilities,
        client_info=token.client_info,
        capabilities=token.client_capabilities,
        on_event=session_events(session, live.config.call_timeout),
    )
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
