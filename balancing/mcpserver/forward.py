"""Forwarding a client's request: through the runtime, as the client sent it.

Every request takes the runtime's call path — a shared pool's balanced call with affinity,
retries and passive health, or a sticky session's call on its own upstream session with the same
accounting — so health, metrics and limits cannot differ by path. What reaches the upstream is the
client's request: its params with their `_meta` (a 2026 client's protocol version, `clientInfo`,
`clientCapabilities`, `traceparent`/`tracestate`, unknown keys, `progressToken`), its
`Mcp-Param-*` and trace-context headers. An upstream's JSON-RPC error comes back unchanged.

The gateway answers only what is its own by nature: `ping`, `tools/list` of a shared pool (the
merged list of its servers, with their strictest caching hints), `logging/setLevel` on a shared
pool (sent along with each of that client's calls), and `public`/`private` results still fresh
in its cache.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any, Final

from balancing.api.access import allowed_tool, charge, upstream_headers, visible_tools
from balancing.api.call import check_tool
from balancing.api.http import Receive, Scope, disconnected, header, headers_dict
from balancing.engine import protocol
from balancing.engine.affinity import RequestContext
from balancing.engine.errors import (
    CallRejected,
    ConnectFailed,
    SessionGone,
    UpstreamClosed,
    UpstreamError,
)
from balancing.engine.request_state import INVALID_MESSAGE, InvalidState
from balancing.engine.runtime import LivePool
from balancing.engine.sticky import ClientSession
from balancing.errors_http import INVALID_PARAMS, METHOD_NOT_FOUND, ApiError, from_upstream
from balancing.host import RuntimeHost
from balancing.keys import KeyRecord
from balancing.mcpserver import bridge, clients, crossing
from balancing.mcpserver.era import FORWARDED, discover
from balancing.mcpserver.relays import call_key
from balancing.mcpserver.replies import Reply

_STICKY_ONLY: Final = frozenset({"resources/subscribe", "resources/unsubscribe"})
# Results a shared pool may serve from its cache while their hints say they are fresh.
_CACHED: Final = frozenset(
    {"resources/list", "resources/templates/list", "resources/read", "prompts/list"}
)
# Requests a 2026 server may answer with `input_required`.
_MAY_ASK: Final = frozenset({"tools/call", "prompts/get", "resources/read"})
_TRACE_HEADERS: Final = (b"traceparent", b"tracestate", b"baggage")


class Request:
    """One client request on its way through: who asks, where, and how to answer."""

    __slots__ = ("host", "id", "key", "live", "method", "params", "reply", "session")

    def __init__(
        self,
        host: RuntimeHost,
        key: KeyRecord,
        live: LivePool,
        session: ClientSession | None,
        message: dict[str, Any],
        params: dict[str, Any] | None,
        reply: Reply,
    ) -> None:
        self.host = host
        self.key = key
        self.live = live
        self.session = session
        self.id = message["id"]
        self.method: str = message["method"]
        self.params = params
        self.reply = reply

    @property
    def sticky(self) -> bool:
        return self.session is not None and self.session.sticky


async def answer(request: Request, receive: Receive) -> None:
    """Run the request and answer it (result or error); a tool call is cancelled when the
    client goes away or (handshake era) cancels it."""
    reply = request.reply
    try:
        if request.method == "tools/call":
            result = await _watching_disconnect(request, receive)
            if result is None:
                return
        else:
            result = await dispatch(request)
    except CallRejected as exc:
        await reply.upstream_error(exc.error)
        return
    except ApiError as error:
        await reply.error(error)
        return
    await reply.result(result, request.method)


async def dispatch(request: Request) -> dict[str, Any]:
    if request.reply.modern and (bridged := await _for_new_client(request)) is not None:
        return bridged
    result = await _dispatch(request)
    if bridge.asks_old_client(request.reply, result):
        return await bridge.answer_for_old_client(
            request.session,
            request.reply,
            request.params,
            result,
            partial(_again, request),
            request.live.config.call_timeout,
        )
    return result


async def _for_new_client(request: Request) -> dict[str, Any] | None:
    """The era bridge's part of a 2026 request on a pool of handshake-era servers: a tool call
    held for the client's answers (or its retry), a listing as a client that can be asked.
    None: not the bridge's."""
    host, live, params = request.host, request.live, request.params
    if params is None:
        return None
    if bridge.holds(host, live, request.method, params):
        await _admit(request)
        headers_for = upstream_headers(host, request.key)
        ctx = _context(request, params.get("name")) if live.config.rules else None
        return await bridge.run_for_new_client(
            host, request.key, live, params, request.reply.emit, headers_for, ctx
        )
    if bridge.lists_as_client(live, request.method, params):
        headers_for = upstream_headers(host, request.key)
        result = await bridge.tools_as_client(host, live, params, headers_for)
        tools = visible_tools(host, request.key, live.config.slug, result.get("tools") or [])
        return {**result, "tools": tools}
    return None


async def _again(request: Request, params: dict[str, Any]) -> dict[str, Any]:
    request.params = params
    return await _dispatch(request)


async def _dispatch(request: Request) -> dict[str, Any]:
    method, live, host = request.method, request.live, request.host
    if method == "ping":
        return {}
    if method == "server/discover":
        return await discover(host, live)
    sticky = request.sticky
    if method == "tools/list" and not sticky:
        tools = await host.runtime.list_tools(live.config.slug)
        ttl, scope = live.tools_hints
        visible = visible_tools(host, request.key, live.config.slug, tools)
        return {"tools": visible, "ttlMs": ttl, "cacheScope": scope}
    if method == "logging/setLevel" and not sticky:
        level = (request.params or {}).get("level")
        if not isinstance(level, str):
            raise ApiError("invalid_arguments", "level must be a string", rpc=INVALID_PARAMS)
        if request.session is not None:
            request.session.log_level = level  # sent along with this session's calls
            await crossing.share_level(request.session)  # by every web process
        return {}
    if method not in FORWARDED and not (sticky and (method in _STICKY_ONLY or "/" in method)):
        raise ApiError("not_found", f"Method not found: {method}", rpc=METHOD_NOT_FOUND)
    await _admit(request)
    if not sticky:
        return await _forward_shared(request)
    result = await _forward_sticky(request)
    if method == "tools/list":  # a sticky session's own listing: what this caller may call
        tools = visible_tools(host, request.key, live.config.slug, result.get("tools") or [])
        result = {**result, "tools": tools}
    return result


async def _admit(request: Request) -> None:
    """The caller's per-tool policy and its rate, for what goes upstream."""
    host, live, method = request.host, request.live, request.method
    if method == "tools/call" and isinstance(tool := (request.params or {}).get("name"), str):
        await allowed_tool(host, request.key, live, tool)
    if method in FORWARDED:
        await charge(host, request.key, live)


def upstream_params(request: Request) -> dict[str, Any] | None:
    """The client's params as it sent them. On a shared pool a handshake-era client gets the
    log level it asked for sent along with each call, and its capabilities (from `initialize`),
    so a 2026 upstream may ask it for input (the era bridge); a handshake-era upstream never
    sees them (the 2026 envelope is left out for it)."""
    params = request.params or None
    session = request.session
    if session is None or session.sticky:
        return params
    extra: dict[str, Any] = {}
    if session.log_level:
        extra[protocol.LOG_LEVEL_META_KEY] = session.log_level
    if session.client_capabilities and request.method in _MAY_ASK:
        extra[protocol.CLIENT_CAPABILITIES_META_KEY] = session.client_capabilities
    if not extra:
        return params
    meta = params.get("_meta") if params else None
    meta = {**meta, **extra} if isinstance(meta, dict) else extra
    return {**(params or {}), "_meta": meta}


def client_headers(scope: Scope) -> dict[str, str] | None:
    """The client's headers a 2026 upstream must see: `Mcp-Param-*` and trace context."""
    out: dict[str, str] | None = None
    for name, value in scope["headers"]:
        if name.startswith(b"mcp-param-") or name in _TRACE_HEADERS:
            if out is None:
                out = {}
            out[name.decode("latin-1")] = value.decode("latin-1")
    return out


async def _forward_shared(request: Request) -> dict[str, Any]:
    live, host, reply, method = request.live, request.host, request.reply, request.method
    params = upstream_params(request)
    tool = params.get("name") if method == "tools/call" and params else None
    if tool is not None:
        try:
            check_tool(live, tool)
        except ApiError:
            raise ApiError("unknown_tool", f"Unknown tool: {tool}", rpc=INVALID_PARAMS) from None
    slug = live.config.slug
    cache = host.runtime.results if method in _CACHED else None
    if cache is not None and (hit := cache.get(slug, method, params, request.key.id)):
        return hit
    ctx = _context(request, tool) if live.config.rules else None
    try:
        result = await host.runtime.request(
            slug,
            method,
            params,
            tool=tool,
            ctx=ctx,
            on_message=reply.emit,
            headers=client_headers(reply.scope) if reply.modern else None,
            upstream_headers=upstream_headers(host, request.key),
        )
    except InvalidState:
        raise invalid_state() from None
    except CallRejected:
        raise
    except UpstreamError as exc:
        raise from_upstream(exc) from None
    if cache is not None:
        cache.put(slug, method, params, request.key.id, result)
    return result


def invalid_state() -> ApiError:
    """The spec's refusal of a `requestState` this deployment did not seal (or was altered)."""
    return ApiError(
        "invalid_arguments", INVALID_MESSAGE, rpc=INVALID_PARAMS, reason="invalid_request_state"
    )


def _context(request: Request, tool: Any) -> RequestContext:
    """What affinity rules match on."""
    scope = request.reply.scope
    client = (header(scope, b"mcp-client-id") or b"").decode("latin-1")
    name = tool if isinstance(tool, str) else None
    return RequestContext(api_key_name=request.key.name, client_id=client, tool=name,
                          headers=headers_dict(scope))  # fmt: skip


async def _forward_sticky(request: Request) -> dict[str, Any]:
    """On the client's own upstream session, through the runtime's accounting."""
    session, host, live = request.session, request.host, request.live
    assert session is not None  # noqa: S101  # a sticky request always has its session
    if not session.upstream.alive or session.server_id not in live.endpoints:
        clients.end(host, session)
        raise ApiError("unknown_session", "the session's server left the pool: initialize again")
    emit = request.reply.emit
    session.active_emit = emit
    session.in_flight += 1
    try:
        return await host.runtime.request_bound(
            live.config.slug,
            session.server_id,
            session.upstream,
            request.method,
            upstream_params(request),
            on_message=emit,
            upstream_headers=upstream_headers(host, request.key),
        )
    except InvalidState:
        raise invalid_state() from None
    except CallRejected:
        raise
    except UpstreamError as exc:
        if isinstance(exc, ConnectFailed | SessionGone | UpstreamClosed):
            # The bound server (or our session on it) is gone; whatever state the client had
            # there is lost, so the client must start over — on a healthy server.
            clients.end(host, session)
            if not exc.delivered:
                raise ApiError(
                    "unknown_session", f"the session's server went away: {exc}"
                ) from None
        raise from_upstream(exc) from None
    finally:
        session.in_flight -= 1
        if session.active_emit is emit:
            session.active_emit = None


async def _watching_disconnect(request: Request, receive: Receive) -> dict[str, Any] | None:
    """A tool call runs while the client's connection is watched: a client that goes away
    (the 2026 era's way to cancel) cancels the call upstream, and so does a handshake-era
    `notifications/cancelled` naming it. None: nobody is left to answer.

    The call runs in this task. Only a call still running after `WATCH_AFTER` gets a small
    watcher task that cancels it on a disconnect: most calls end sooner and make no task (a
    watcher per call cost ~3 µs of the endpoint's ~54 µs of own Python, `bench.hot_path`).
    """
    me = asyncio.current_task()
    assert me is not None  # noqa: S101  # called from a task
    watch = _Watch(receive, me)
    timer = me.get_loop().call_later(WATCH_AFTER, watch.start)
    session = request.session
    key = call_key(request.id)
    if session is not None:
        session.calls[key] = me
    try:
        return await dispatch(request)
    except asyncio.CancelledError:
        if watch.client_left():
            me.uncancel()
            return None  # the client left: nobody to answer
        if session is not None and me.cancelling() and key not in session.calls:
            me.uncancel()  # cancelled by the client's notifications/cancelled
            raise ApiError("invalid_request", "Request cancelled") from None
        raise
    finally:
        timer.cancel()
        watch.stop()
        if session is not None:
            session.calls.pop(key, None)


# How long a tool call runs before its client's connection is watched for a disconnect: a client
# that leaves sooner has its call cancelled upstream this much later.
WATCH_AFTER: Final = 0.05


class _Watch:
    """The disconnect watcher of one call, started only if the call outlasts `WATCH_AFTER`."""

    __slots__ = ("_receive", "_task", "_victim")

    def __init__(self, receive: Receive, victim: asyncio.Task[Any]) -> None:
        self._receive = receive
        self._victim = victim
        self._task: asyncio.Future[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._cancel_on_disconnect())

    def client_left(self) -> bool:
        return self._task is not None and self._task.done() and not self._task.cancelled()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _cancel_on_disconnect(self) -> None:
        await disconnected(self._receive)
        self._victim.cancel()
