"""`/mcp/<pool>/`: any MCP client can point at a pool (Streamable HTTP, both protocol eras).

The entry: checks that refuse a request before anything else (path, Host/Origin against DNS
rebinding, API key, pool), then one POST's way through — parsed and validated (`validate`), its
era told apart and its wire rules checked (`era`), forwarded through the runtime (`forward`),
answered (`replies`); server→client traffic and the session's GET stream are `relays`.

Refusals of the transport (Host/Origin, key, pool, size, rate, unknown session) are HTTP
statuses with a JSON-RPC error body; the gateway's own failures of a forwarded call are JSON-RPC
errors carrying the REST error code in `error.data.code` (see `balancing.errors_http`); an
upstream's JSON-RPC error is passed on unchanged. What the gateway answers itself is listed in
`docs/protocol.md`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Final

from django.conf import settings
from django.http.request import split_domain_port, validate_host

from balancing.api.access import admit_session, authenticate, pool_for, started_host
from balancing.api.http import ClientGone, Receive, Scope, Send, header, read_body, send_bytes
from balancing.engine.runtime import LivePool
from balancing.engine.sticky import close_sessions
from balancing.errors_http import ApiError
from balancing.host import RuntimeHost
from balancing.keys import KeyRecord
from balancing.mcpserver import clients, era, forward, listen, relays, remote, validate
from balancing.mcpserver.replies import Reply, refuse

PREFIX: Final = "/mcp/"


async def handle(scope: Scope, receive: Receive, send: Send) -> None:
    slug = scope["path"][len(PREFIX) :].strip("/")
    try:
        if not slug or "/" in slug:
            raise ApiError("not_found", "the MCP endpoint of a pool is /mcp/<pool>/")
        check_origin(scope)
        host = await started_host()
        key = await authenticate(host, header(scope, b"authorization"), scope=scope, slug=slug)
        live = pool_for(host, key, slug)
        method = scope["method"]
        if method == "POST":
            await _post(scope, receive, send, host, key, live)
        elif method == "DELETE":
            await _delete(scope, send, host, key, slug)
        elif method == "GET":
            await relays.stream(scope, receive, send, host, key, slug)
        else:
            raise ApiError("method_not_allowed", f"{method} is not part of Streamable HTTP")
    except remote.OwnedElsewhere as owner:  # GET, DELETE: no body
        await _forward(owner, scope, b"", receive, send)
    except ApiError as error:
        await refuse(send, error)
    except ClientGone:
        return


async def _forward(
    owner: remote.OwnedElsewhere,
    scope: Scope,
    body: bytes,
    receive: Receive,
    send: Send,
    id_json: bytes = b"null",
) -> None:
    """Another web process serves the request (its session's stdio server runs there, or the
    call it continues is held there)."""
    try:
        await remote.forward(owner.channel, scope, body, receive, send, owner.gone)
    except ApiError as error:
        await refuse(send, error, id_json)


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


async def _post(
    scope: Scope, receive: Receive, send: Send, host: RuntimeHost, key: KeyRecord, live: LivePool
) -> None:
    body = await read_body(scope, receive, settings.MCPPOOL_MAX_BODY_BYTES)
    message = validate.parse(body)
    method = message.get("method")
    is_request = "id" in message
    id_json = validate.id_json(message) if is_request and isinstance(method, str) else b"null"
    try:
        await _route(scope, receive, send, host, key, live, message, id_json)
    except remote.OwnedElsewhere as owner:
        await _forward(owner, scope, body, receive, send, id_json)
    except ApiError as error:
        await refuse(send, error, id_json)


async def _route(
    scope: Scope,
    receive: Receive,
    send: Send,
    host: RuntimeHost,
    key: KeyRecord,
    live: LivePool,
    message: dict[str, Any],
    id_json: bytes,
) -> None:
    method = message.get("method")
    is_request = "id" in message
    session_header = header(scope, b"mcp-session-id")
    session = None
    modern = False
    if session_header is not None:
        session = await clients.find(host, key, live.config.slug, session_header)
    elif isinstance(method, str) and era.is_modern(scope, message):
        if not is_request:
            await send_bytes(send, 202, b"", [])  # the 2026 wire has no client notifications
            return
        era.check_modern_request(scope, message)
        modern = True
    elif method == "initialize" and is_request:
        async with admit_session(host, key, live):  # charged like a call; sticky: capped
            await era.initialize(scope, send, host, key, live, message, id_json)
        return
    elif is_request and method not in ("ping", "server/discover"):
        raise ApiError("invalid_request", "Bad Request: Missing session ID (initialize first)")
    if not isinstance(method, str):
        if modern or "id" not in message:
            raise validate.refusal("a JSON-RPC message needs a method, or a result or error")
        await relays.client_response(send, session, message)
        return
    if not is_request:
        await relays.notification(session, message)
        await send_bytes(send, 202, b"", [])
        return
    if method == "initialize":
        raise ApiError("invalid_request", "this session is already initialized")
    params = validate.check_params(method, message.get("params"))
    reply = Reply(scope, send, session, id_json, modern)
    request = forward.Request(host, key, live, session, message, params, reply)
    if modern and method == listen.METHOD:
        await listen.serve(request, receive, send)
        return
    await forward.answer(request, receive)


# ---- DELETE ------------------------------------------------------------------------------


async def _delete(scope: Scope, send: Send, host: RuntimeHost, key: KeyRecord, slug: str) -> None:
    raw = header(scope, b"mcp-session-id")
    if raw is None:
        raise ApiError("invalid_request", "DELETE needs an Mcp-Session-Id")
    session = await clients.find(host, key, slug, raw)
    host.client_sessions.remove(session.id)
    await close_sessions([session], end_upstream=True)  # on whichever process it lands
    await send_bytes(send, 200, b"", [])
