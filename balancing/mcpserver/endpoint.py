"""`/mcp/<pool>/`: any MCP client can point at a pool (Streamable HTTP, both protocol eras).

The gateway answers the protocol's own requests itself — `initialize` (handshake era, with a
session id of its own), `server/discover` (2026-07-28, stateless), `ping`, `tools/list` from the
runtime's merged list — and forwards the rest through the runtime: balanced, with affinity and
retries in `shared` pools, or on the client session's own upstream session in `sticky` pools.

A request is answered with `application/json` unless something must flow while it runs
(progress, logging, a relayed sampling or elicitation request): then the answer switches to an
SSE stream at the first such message, as the SDK's own server does.

Refusals of the transport (Host/Origin, key, pool, size, rate, unknown session) are HTTP
statuses with a JSON-RPC error body; failures of a forwarded call are JSON-RPC errors carrying
the REST error code in `error.data.code` (see `balancing.errors_http`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import lru_cache
from typing import Any, Final

import orjson
from django.conf import settings
from django.http.request import split_domain_port, validate_host

from balancing.api.access import admit_session, authenticate, charge, pool_for, started_host
from balancing.api.call import check_tool
from balancing.api.http import (
    ClientGone,
    Headers,
    Receive,
    Scope,
    Send,
    header,
    headers_dict,
    read_body,
    send_bytes,
)
from balancing.engine import protocol
from balancing.engine.affinity import RequestContext, match_rules
from balancing.engine.config import AdminState, Era, Health, SessionMode
from balancing.engine.errors import ConnectFailed, SessionGone, UpstreamClosed, UpstreamError
from balancing.engine.runtime import LivePool
from balancing.engine.sticky import ClientSession, SessionIds, close_sessions
from balancing.errors_http import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    ApiError,
    from_upstream,
)
from balancing.host import RuntimeHost
from balancing.keys import KeyRecord

log = logging.getLogger(__name__)

PREFIX: Final = "/mcp/"
SERVER_VERSION: Final = "0.1.0"
HEADER_MISMATCH: Final = -32020
# The modern era's envelope keys: the gateway's upstream sessions add their own.
_ENVELOPE_KEYS: Final = (
    protocol.PROTOCOL_VERSION_META_KEY,
    protocol.CLIENT_INFO_META_KEY,
    protocol.CLIENT_CAPABILITIES_META_KEY,
)
# Methods forwarded upstream as they are (the gateway answers the protocol's own itself).
_FORWARDED: Final = frozenset(
    {
        "tools/call",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "prompts/list",
        "prompts/get",
        "completion/complete",
    }
)
_STICKY_ONLY: Final = frozenset({"resources/subscribe", "resources/unsubscribe"})
_SHARED_CAPABILITIES: Final[dict[str, Any]] = {
    "tools": {"listChanged": False},
    "resources": {},
    "prompts": {},
    "logging": {},
    "completions": {},
}
_EVENTS_QUEUE: Final = 1000
# Refusals that stay HTTP statuses even mid-dispatch. Every other failure of a request is a
# JSON-RPC error on a 200: a 404 would tell a handshake-era client its session is gone.
_TRANSPORT_REFUSALS: Final = frozenset({"unknown_session", "rate_limited"})

Emit = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]


@lru_cache(maxsize=1)
def _ids(secret: str) -> SessionIds:
    return SessionIds(secret)


def session_ids() -> SessionIds:
    return _ids(settings.SECRET_KEY)


# ---- the entry point ----------------------------------------------------------------------


async def handle(scope: Scope, receive: Receive, send: Send) -> None:
    slug = scope["path"][len(PREFIX) :].strip("/")
    try:
        if not slug or "/" in slug:
            raise ApiError("not_found", "the MCP endpoint of a pool is /mcp/<pool>/")
        check_origin(scope)
        host = await started_host()
        key = await authenticate(host, header(scope, b"authorization"))
        live = pool_for(host, key, slug)
        method = scope["method"]
        if method == "POST":
            await _post(scope, receive, send, host, key, live)
        elif method == "DELETE":
            await _delete(scope, send, host, key, slug)
        elif method == "GET":
            await _get(scope, receive, send, host, key, slug)
        else:
            raise ApiError("method_not_allowed", f"{method} is not part of Streamable HTTP")
    except ApiError as error:
        await _refuse(send, error)
    except ClientGone:
        return


async def _refuse(send: Send, error: ApiError, request_id: Any = None) -> None:
    """An HTTP refusal with a JSON-RPC error body (the SDK client surfaces it as such)."""
    body = orjson.dumps({"jsonrpc": "2.0", "id": request_id, "error": error.rpc_error()})
    headers: Headers = [(b"content-type", b"application/json"), *error.headers]
    if error.status == 405:
        headers.append((b"allow", b"GET, POST, DELETE"))
    await send_bytes(send, error.status, body, headers)


# ---- DNS rebinding protection -----------------------------------------------------------


def check_origin(scope: Scope) -> None:
    """Refuse a `Host` outside `ALLOWED_HOSTS` and a browser `Origin` from elsewhere: a page on
    another site must not reach a gateway on localhost through a rebound DNS name."""
    allowed = settings.ALLOWED_HOSTS
    host = header(scope, b"host")
    if host is not None and not _host_allowed(host.decode("latin-1"), tuple(allowed)):
        raise ApiError("origin_forbidden", "this Host is not allowed (ALLOWED_HOSTS)")
    origin = header(scope, b"origin")
    if origin is not None and origin != b"null":
        text = origin.decode("latin-1")
        netloc = text.split("://", 1)[-1].split("/", 1)[0]
        if not _host_allowed(netloc, tuple(allowed)):
            raise ApiError("origin_forbidden", f"requests from origin {text!r} are not allowed")


@lru_cache(maxsize=256)
def _host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    domain, _ = split_domain_port(host)
    return bool(domain) and validate_host(domain, list(allowed))


# ---- POST: one JSON-RPC message ----------------------------------------------------------


def _parse(body: bytes) -> dict[str, Any]:
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _rpc_refusal(
            "invalid_json", PARSE_ERROR, "Parse error: the body is not JSON"
        ) from None
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        raise _rpc_refusal(
            "invalid_request", INVALID_REQUEST, "the body must be one JSON-RPC 2.0 message"
        )
    return message


def _rpc_refusal(code: str, rpc: int, message: str) -> ApiError:
    return ApiError(code, message, rpc=rpc)


def _is_modern(scope: Scope, message: dict[str, Any]) -> bool:
    version = header(scope, b"mcp-protocol-version")
    if version is not None:
        return version.decode("latin-1") in protocol.MODERN_PROTOCOL_VERSIONS
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    return isinstance(meta, dict) and (
        meta.get(protocol.PROTOCOL_VERSION_META_KEY) in protocol.MODERN_PROTOCOL_VERSIONS
    )


async def _post(
    scope: Scope, receive: Receive, send: Send, host: RuntimeHost, key: KeyRecord, live: LivePool
) -> None:
    message = _parse(await read_body(scope, receive, settings.MCPPOOL_MAX_BODY_BYTES))
    method = message.get("method")
    is_request = "id" in message
    if method == "initialize" and is_request:
        async with admit_session(host, key, live):  # charged like a call; sticky: capped
            await _initialize(scope, send, host, key, live, message)
        return
    session_header = header(scope, b"mcp-session-id")
    session = None
    modern = False
    if session_header is not None:
        session = _session(host, key, live.config.slug, session_header)
    elif isinstance(method, str) and _is_modern(scope, message):
        modern = True
        mcp_method = header(scope, b"mcp-method")
        if is_request and mcp_method is not None and mcp_method.decode("latin-1") != method:
            await _answer_error(send, message.get("id"), HEADER_MISMATCH,
                                "Mcp-Method does not match the body", status=400)  # fmt: skip
            return
    elif is_request and method not in ("ping", "server/discover"):
        raise ApiError("invalid_request", "Bad Request: Missing session ID (initialize first)")
    if not isinstance(method, str):
        await _client_response(send, session, message)
        return
    if not is_request:
        await _notification(session, message)
        await send_bytes(send, 202, b"", [])
        return
    reply = Reply(scope, send, session)
    try:
        if method == "tools/call":
            await _call_watching_disconnect(
                receive, reply, host, key, live, session, modern, message
            )
        else:
            result = await _dispatch(host, key, live, session, modern, message, reply)
            await reply.result(message["id"], result, modern, method)
    except ApiError as error:
        await reply.error(message["id"], error)


def _session(host: RuntimeHost, key: KeyRecord, slug: str, raw: bytes) -> ClientSession:
    session_id = raw.decode("latin-1")
    for expired in host.client_sessions.sweep_due():
        _end(host, expired)
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
        _end(host, session)
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


def _end(host: RuntimeHost, session: ClientSession) -> None:
    host.client_sessions.remove(session.id)
    task = asyncio.ensure_future(close_sessions([session]))
    _background.add(task)
    task.add_done_callback(_background.discard)


_background: set[asyncio.Future[None]] = set()


# ---- initialize (handshake era) and server/discover (modern era) ----------------------------


async def _initialize(
    scope: Scope,
    send: Send,
    host: RuntimeHost,
    key: KeyRecord,
    live: LivePool,
    message: dict[str, Any],
) -> None:
    params = message.get("params")
    if not isinstance(params, dict):
        params = {}
    requested = params.get("protocolVersion")
    version = (
        requested
        if requested in protocol.HANDSHAKE_PROTOCOL_VERSIONS
        else protocol.LATEST_HANDSHAKE_VERSION
    )
    capabilities = params.get("capabilities")
    capabilities = capabilities if isinstance(capabilities, dict) else {}
    now = host.runtime.clock()
    session = ClientSession(
        id="",
        pool=live.config.slug,
        key_id=key.id,
        protocol_version=version,
        created_at=now,
        last_used=now,
        client_capabilities=capabilities,
    )
    result: dict[str, Any] = {
        "protocolVersion": version,
        "capabilities": _SHARED_CAPABILITIES,
        "serverInfo": {"name": f"mcppool/{live.config.slug}", "version": SERVER_VERSION},
    }
    if live.config.session_mode is SessionMode.STICKY:
        try:
            upstream = await _bind(scope, host, key, live, session, params)
        except ApiError as error:
            await _refuse(send, error, message.get("id"))
            return
        result["capabilities"] = upstream.server_capabilities or _SHARED_CAPABILITIES
        if upstream.instructions:
            result["instructions"] = upstream.instructions
    else:
        session.id = session_ids().mint(0)
    for expired in host.client_sessions.add(session):
        _end(host, expired)
    body = orjson.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result})
    await send_bytes(send, 200, body, _json_headers(session))


async def _bind(
    scope: Scope,
    host: RuntimeHost,
    key: KeyRecord,
    live: LivePool,
    session: ClientSession,
    params: dict[str, Any],
) -> Any:
    """Sticky: pick this client's server (affinity rules first) and open its own session there."""
    client_info = params.get("clientInfo")
    client_name = client_info.get("name", "") if isinstance(client_info, dict) else ""
    pin = hash_key = None
    if live.config.rules:
        ctx = RequestContext(
            api_key_name=key.name, client_id=str(client_name), headers=headers_dict(scope)
        )
        decision = match_rules(live.config.rules, ctx)
        if decision is not None:
            pin, hash_key = decision.pin, decision.hash_key
    runtime = host.runtime
    pick = live.balancer.pick(live.endpoint_list(), runtime.clock(), hash_key=hash_key, pin=pin)
    if pick is None:
        raise ApiError("no_healthy_server", f"pool {live.config.slug!r} has no healthy server")
    server = pick.endpoint.config
    if server.era is Era.AUTO:
        # Sticky sessions exist for session state (log level, subscriptions, sampling and
        # elicitation mid-call), which only the handshake era has.
        server = replace(server, era=Era.HANDSHAKE)
    session.server_id = server.id
    session.id = session_ids().mint(server.id)
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue(_EVENTS_QUEUE)
    session.events = events
    relay_timeout = live.config.call_timeout

    async def on_event(event: dict[str, Any]) -> dict[str, Any] | None:
        """Upstream messages outside any call's stream: to a call of this client if one is
        running (stdio carries no call marker), else to the client's GET stream — requests
        too (roots/list), answered by the client's POST within the pool's call timeout."""
        emit: Emit | None = session.active_emit
        if emit is not None:
            return await emit(event)
        if "id" in event:
            return await _relay_request(session, event, enqueue, relay_timeout)
        with contextlib.suppress(asyncio.QueueFull):
            events.put_nowait(event)
        return None

    async def enqueue(message: dict[str, Any]) -> None:
        events.put_nowait(message)  # QueueFull: the upstream is told the handler failed

    try:
        # `listen`: over HTTP, the upstream's GET stream carries exactly these messages.
        upstream = await runtime.open_upstream(
            live.config,
            server,
            capabilities=session.client_capabilities,
            on_event=on_event,
            listen=True,
        )
    except UpstreamError as exc:
        raise from_upstream(exc) from None
    session.upstream = upstream
    return upstream


# Results the 2026-07-28 wire requires caching directives on (the SDK's `CacheableResult`).
_CACHEABLE: Final = frozenset(
    {
        "server/discover",
        "tools/list",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "prompts/list",
    }
)


def modern_result(method: str, result: dict[str, Any]) -> dict[str, Any]:
    """Fill in what the 2026-07-28 wire requires and a handshake-era upstream does not send."""
    if "resultType" in result and (method not in _CACHEABLE or "ttlMs" in result):
        return result
    result = {"resultType": "complete", **result}
    if method in _CACHEABLE:
        result.setdefault("ttlMs", 0)
        result.setdefault("cacheScope", "private")
    return result


def _discover(live: LivePool) -> dict[str, Any]:
    return {
        "supportedVersions": list(protocol.MODERN_PROTOCOL_VERSIONS),
        "capabilities": _SHARED_CAPABILITIES,
        "resultType": "complete",
        "_meta": {
            protocol.SERVER_INFO_META_KEY: {
                "name": f"mcppool/{live.config.slug}",
                "version": SERVER_VERSION,
            }
        },
    }


# ---- requests ----------------------------------------------------------------------------


async def _dispatch(
    host: RuntimeHost,
    key: KeyRecord,
    live: LivePool,
    session: ClientSession | None,
    modern: bool,
    message: dict[str, Any],
    reply: Reply,
) -> dict[str, Any]:
    method: str = message["method"]
    params = message.get("params")
    if params is not None and not isinstance(params, dict):
        raise _rpc_refusal("invalid_request", INVALID_PARAMS, "params must be an object")
    if method == "ping":
        return {}
    if method == "server/discover":
        return _discover(live)
    if method == "tools/list" and not (session is not None and session.sticky):
        return {"tools": await host.runtime.list_tools(live.config.slug)}
    if method == "logging/setLevel" and not (session is not None and session.sticky):
        level = (params or {}).get("level")
        if not isinstance(level, str):
            raise _rpc_refusal("invalid_arguments", INVALID_PARAMS, "level must be a string")
        if session is not None:
            session.log_level = level  # sent along with this session's calls
        return {}
    sticky = session is not None and session.sticky
    if method not in _FORWARDED and not (sticky and (method in _STICKY_ONLY or "/" in method)):
        raise _rpc_refusal("not_found", METHOD_NOT_FOUND, f"Method not found: {method}")
    if method in _FORWARDED:
        await charge(host, key, live)
    return await _forward(
        host, key, live, session, method, _upstream_params(params, session), reply
    )


def _upstream_params(
    params: dict[str, Any] | None, session: ClientSession | None
) -> dict[str, Any] | None:
    """The client's params without its modern-era envelope (the upstream session sends its
    own); a shared pool's handshake client gets its log level asked for on each call."""
    if not params:
        params = None
    meta = params.get("_meta") if params else None
    level = session.log_level if session is not None and not session.sticky else ""
    if not isinstance(meta, dict) and not level:
        return params
    clean = (
        {k: v for k, v in meta.items() if k not in _ENVELOPE_KEYS} if isinstance(meta, dict) else {}
    )
    if level:
        clean[protocol.LOG_LEVEL_META_KEY] = level
    out = {k: v for k, v in (params or {}).items() if k != "_meta"}
    if clean:
        out["_meta"] = clean
    return out or None


async def _forward(
    host: RuntimeHost,
    key: KeyRecord,
    live: LivePool,
    session: ClientSession | None,
    method: str,
    params: dict[str, Any] | None,
    reply: Reply,
) -> dict[str, Any]:
    tool = params.get("name") if method == "tools/call" and params else None
    if method == "tools/call" and not isinstance(tool, str):
        raise _rpc_refusal("invalid_arguments", INVALID_PARAMS, "tools/call needs a tool name")
    if session is not None and session.sticky:
        return await _forward_sticky(host, live, session, method, params, reply)
    if tool is not None:
        try:
            check_tool(live, tool)
        except ApiError:
            raise _rpc_refusal("unknown_tool", INVALID_PARAMS, f"Unknown tool: {tool}") from None
    ctx = None
    if live.config.rules:
        ctx = RequestContext(api_key_name=key.name, client_id=reply.client_id, tool=tool,
                             headers=headers_dict(reply.scope))  # fmt: skip
    try:
        return await host.runtime.request(
            live.config.slug, method, params, tool=tool, ctx=ctx, on_message=reply.emit
        )
    except UpstreamError as exc:
        raise from_upstream(exc) from None


async def _forward_sticky(
    host: RuntimeHost,
    live: LivePool,
    session: ClientSession,
    method: str,
    params: dict[str, Any] | None,
    reply: Reply,
) -> dict[str, Any]:
    """On the client's own upstream session; accounted like a pooled call."""
    runtime = host.runtime
    endpoint = live.endpoints.get(session.server_id)
    if endpoint is None or not session.upstream.alive:
        _end(host, session)
        raise ApiError("unknown_session", "the session's server left the pool: initialize again")
    slug, server = live.config.slug, endpoint.config.name
    started = runtime.clock()
    endpoint.stats.begin()
    label, failed = "ok", False
    session.active_emit = reply.emit
    session.in_flight += 1
    try:
        result: dict[str, Any] = await session.upstream.request(
            method, params, timeout=live.config.call_timeout, on_message=reply.emit
        )
        if result.get("isError") is True:
            label = "tool_error"
        return result
    except UpstreamError as exc:
        label, failed = "upstream_error", exc.server_failure
        if isinstance(exc, ConnectFailed | SessionGone | UpstreamClosed):
            # The bound server (or our session on it) is gone; whatever state the client had
            # there is lost, so the client must start over — on a healthy server.
            _end(host, session)
            if not exc.delivered:
                raise ApiError(
                    "unknown_session", f"the session's server went away: {exc}"
                ) from None
        raise from_upstream(exc) from None
    finally:
        session.in_flight -= 1
        if session.active_emit is reply.emit:
            session.active_emit = None
        now = runtime.clock()
        endpoint.stats.end(now, now - started, failed)
        runtime.metrics.calls[(slug, server, label)] += 1
        runtime.metrics.durations[(slug, server)].observe(now - started)


async def _call_watching_disconnect(
    receive: Receive,
    reply: Reply,
    host: RuntimeHost,
    key: KeyRecord,
    live: LivePool,
    session: ClientSession | None,
    modern: bool,
    message: dict[str, Any],
) -> None:
    """A tool call runs while the client's connection is watched: a client that goes away
    (the modern era's way to cancel) cancels the call upstream, and so does a handshake-era
    `notifications/cancelled` naming it.

    The call runs in this task and one small watcher task cancels it on a disconnect; that is
    a third of the cost of running both as tasks under `asyncio.wait` (measured on the hot path).
    """
    me = asyncio.current_task()
    assert me is not None
    watcher = asyncio.ensure_future(_cancel_on_disconnect(receive, me))
    request_id = message["id"]
    if session is not None:
        session.calls[_id_key(request_id)] = me
    try:
        result = await _dispatch(host, key, live, session, modern, message, reply)
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():
            me.uncancel()
            return  # the client left: nobody to answer
        if session is not None and me.cancelling() and _id_key(request_id) not in session.calls:
            me.uncancel()  # cancelled by the client's notifications/cancelled
            await reply.error(request_id, ApiError("invalid_request", "Request cancelled"))
            return
        raise
    finally:
        watcher.cancel()
        if session is not None:
            session.calls.pop(_id_key(request_id), None)
    await reply.result(request_id, result, modern, "tools/call")


async def _cancel_on_disconnect(receive: Receive, victim: asyncio.Task[Any]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    victim.cancel()


def _id_key(request_id: Any) -> str:
    return f"{type(request_id).__name__}:{request_id}"


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


# ---- notifications and responses from the client -------------------------------------------


async def _notification(session: ClientSession | None, message: dict[str, Any]) -> None:
    method = message["method"]
    params = message.get("params")
    if method == "notifications/cancelled" and session is not None and isinstance(params, dict):
        call = session.calls.pop(_id_key(params.get("requestId")), None)
        if call is not None:
            call.cancel()
        return
    if session is not None and session.sticky and method != "notifications/initialized":
        # roots/list_changed and the like belong to the client's own upstream session
        with contextlib.suppress(UpstreamError):
            await session.upstream.notify(method, params if isinstance(params, dict) else None)


async def _client_response(
    send: Send, session: ClientSession | None, message: dict[str, Any]
) -> None:
    """The client's answer to a relayed server→client request (sampling, elicitation, roots)."""
    future = session.pending.pop(str(message.get("id")), None) if session is not None else None
    if future is None:
        raise ApiError("invalid_request", "no relayed request waits for this response")
    if not future.done():
        future.set_result(message)
    await send_bytes(send, 202, b"", [])


# ---- DELETE and GET ---------------------------------------------------------------------------


async def _delete(scope: Scope, send: Send, host: RuntimeHost, key: KeyRecord, slug: str) -> None:
    raw = header(scope, b"mcp-session-id")
    if raw is None:
        raise ApiError("invalid_request", "DELETE needs an Mcp-Session-Id")
    session = host.client_sessions.get(raw.decode("latin-1"))
    if session is None or session.key_id != key.id or session.pool != slug:
        raise ApiError("unknown_session", "Session not found")
    host.client_sessions.remove(session.id)
    await close_sessions([session])
    await send_bytes(send, 200, b"", [])


async def _get(
    scope: Scope, receive: Receive, send: Send, host: RuntimeHost, key: KeyRecord, slug: str
) -> None:
    """The session's own SSE stream (sticky pools): upstream messages outside any call."""
    raw = header(scope, b"mcp-session-id")
    if raw is None:
        raise ApiError("method_not_allowed", "no stream without a session")
    session = _session(host, key, slug, raw)
    events = session.events
    if events is None:
        raise ApiError("method_not_allowed", "a shared pool has no session stream")
    await send({"type": "http.response.start", "status": 200, "headers": _sse_headers(session)})
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        while True:
            getter = asyncio.ensure_future(events.get())
            await asyncio.wait((getter, watcher), return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                return
            data = _sse(getter.result())
            await send({"type": "http.response.body", "body": data, "more_body": True})
    finally:
        watcher.cancel()


async def _relay_request(
    session: ClientSession,
    message: dict[str, Any],
    send_out: Callable[[dict[str, Any]], Awaitable[None]],
    timeout: float | None,
) -> dict[str, Any]:
    """Relay a server→client request (sampling, elicitation, roots) to the client under a gateway
    id and return the result of its answer, which arrives as a POST (`_client_response`).
    Raises when the client refuses or does not answer in time: the upstream gets an error."""
    relay_id = session.relay_id()
    future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    session.pending[relay_id] = future
    try:
        await send_out({**message, "id": relay_id})
        async with asyncio.timeout(timeout):
            answer = await future
    finally:
        session.pending.pop(relay_id, None)
    if "error" in answer:
        raise RuntimeError(f"the client refused {message.get('method')}: {answer['error']}")
    result = answer.get("result")
    return result if isinstance(result, dict) else {}


# ---- answers ----------------------------------------------------------------------------------


def _json_headers(session: ClientSession | None) -> Headers:
    headers: Headers = [(b"content-type", b"application/json")]
    if session is not None:
        headers.append((b"mcp-session-id", session.id.encode()))
    return headers


def _sse_headers(session: ClientSession | None) -> Headers:
    headers: Headers = [
        (b"content-type", b"text/event-stream"),
        (b"cache-control", b"no-cache, no-transform"),
        (b"x-accel-buffering", b"no"),
    ]
    if session is not None:
        headers.append((b"mcp-session-id", session.id.encode()))
    return headers


def _sse(message: dict[str, Any]) -> bytes:
    return b"event: message\ndata: " + orjson.dumps(message) + b"\n\n"


async def _answer_error(send: Send, request_id: Any, code: int, message: str, status: int) -> None:
    body = orjson.dumps(
        {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
    )
    await send_bytes(send, status, body, [(b"content-type", b"application/json")])


class Reply:
    """One POST's answer: JSON, or SSE from the first message that must flow during the call."""

    __slots__ = ("_send", "_sse_ok", "_started", "client_id", "scope", "session")

    def __init__(self, scope: Scope, send: Send, session: ClientSession | None) -> None:
        self.scope = scope
        self._send = send
        self.session = session
        accept = header(scope, b"accept") or b""
        self._sse_ok = b"text/event-stream" in accept
        self._started = False
        client = header(scope, b"mcp-client-id")
        self.client_id = client.decode("latin-1") if client else ""

    async def _start(self) -> None:
        if not self._started:
            self._started = True
            await self._send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": _sse_headers(self.session),
                }
            )

    async def emit(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """An upstream message for this call: notifications go to the client on this stream; a
        server→client request is relayed under a gateway id and its answer awaited."""
        if not self._sse_ok:
            return None
        if "id" not in message:
            await self._send_event(message)
            return None
        session = self.session
        if session is None or not session.sticky:
            return None  # shared pools declare no sampling or elicitation upstream
        # No timeout of its own: the call's deadline bounds it.
        return await _relay_request(session, message, self._send_event, None)

    async def _send_event(self, message: dict[str, Any]) -> None:
        await self._start()
        await self._send({"type": "http.response.body", "body": _sse(message), "more_body": True})

    async def result(
        self, request_id: Any, result: dict[str, Any], modern: bool, method: str = ""
    ) -> None:
        if modern:
            result = modern_result(method, result)
        await self._finish(orjson.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}))

    async def error(self, request_id: Any, error: ApiError) -> None:
        if not self._started and error.code in _TRANSPORT_REFUSALS:
            await _refuse(self._send, error, request_id)
            return
        body = {"jsonrpc": "2.0", "id": request_id, "error": error.rpc_error()}
        await self._finish(orjson.dumps(body))

    async def _finish(self, body: bytes) -> None:
        if self._started:
            data = b"event: message\ndata: " + body + b"\n\n"
            await self._send({"type": "http.response.body", "body": data, "more_body": False})
            return
        await send_bytes(self._send, 200, body, _json_headers(self.session))
