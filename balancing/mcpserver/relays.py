"""What flows the other way: server→client requests relayed to the client and its answers, the
client's notifications, and a sticky session's own GET stream.

A sticky client session owns its upstream session, so a server→client request (sampling,
elicitation, roots) reaches the client: on the stream of the call it belongs to, or else on the
session's GET stream, under a gateway id; the client's answer comes back as a POST and goes
upstream exactly as the client wrote it — a result, or an error with its own code and message.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Final

import orjson

from balancing import observe
from balancing.api.access import still_allowed
from balancing.api.http import Receive, Scope, Send, disconnected, header, send_bytes
from balancing.engine.errors import UpstreamError
from balancing.engine.sticky import ClientSession
from balancing.engine.upstream import ClientRefused
from balancing.errors_http import ApiError
from balancing.host import RuntimeHost
from balancing.keys import KeyRecord
from balancing.mcpserver import clients, crossing

EVENTS_QUEUE: Final = 1000
KEEPALIVE_SECONDS: Final = 15.0
CHECK_SECONDS: Final = 1.0

Emit = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]
SendOut = Callable[[dict[str, Any]], Awaitable[None]]


def session_events(session: ClientSession, relay_timeout: float | None) -> Emit:
    """The handler of a sticky session's upstream messages outside any call's stream: to a call
    of this client if one is running (stdio carries no call marker), else to the client's GET
    stream — requests too (roots/list), answered by the client's POST within `relay_timeout`."""
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue(EVENTS_QUEUE)
    session.events = events

    async def enqueue(message: dict[str, Any]) -> None:
        crossing.to_stream(session, message)  # QueueFull: the upstream is told the handler failed

    async def on_event(event: dict[str, Any]) -> dict[str, Any] | None:
        emit: Emit | None = session.active_emit
        if emit is not None:
            return await emit(event)
        if "id" in event:
            return await relay_request(session, event, enqueue, relay_timeout)
        with contextlib.suppress(asyncio.QueueFull):
            crossing.to_stream(session, event)
        return None

    return on_event


async def relay_request(
    session: ClientSession,
    message: dict[str, Any],
    send_out: SendOut,
    timeout: float | None,
) -> dict[str, Any]:
    """Relay a server→client request to the client under a gateway id and return the result of
    its answer, which arrives as a POST (`client_response`). A client's error answer raises
    `ClientRefused` carrying it, so the server gets the error the client sent."""
    method = str(message.get("method"))
    with observe.span(method, {"mcp.method.name": method, "mcppool.relayed": True}):
        return await _relay(session, message, send_out, timeout)


async def _relay(
    session: ClientSession,
    message: dict[str, Any],
    send_out: SendOut,
    timeout: float | None,
) -> dict[str, Any]:
    relay_id = crossing.relay_id(session)
    future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    session.pending[relay_id] = future
    try:
        await send_out({**message, "id": relay_id})
        async with asyncio.timeout(timeout):
            answer = await future
    finally:
        session.pending.pop(relay_id, None)
    error = answer.get("error")
    if isinstance(error, dict):
        raise ClientRefused(error)
    result = answer.get("result")
    return result if isinstance(result, dict) else {}


async def notification(session: ClientSession | None, message: dict[str, Any]) -> None:
    method = message["method"]
    params = message.get("params")
    if method == "notifications/cancelled" and session is not None and isinstance(params, dict):
        call = session.calls.pop(call_key(params.get("requestId")), None)
        if call is not None:
            call.cancel()
        return
    if session is not None and session.sticky and method != "notifications/initialized":
        # roots/list_changed and the like belong to the client's own upstream session
        with contextlib.suppress(UpstreamError):
            await session.upstream.notify(method, params if isinstance(params, dict) else None)


def call_key(request_id: Any) -> str:
    return f"{type(request_id).__name__}:{request_id}"


async def client_response(
    send: Send, session: ClientSession | None, message: dict[str, Any]
) -> None:
    """The client's answer to a relayed server→client request (sampling, elicitation, roots)."""
    future = session.pending.pop(str(message.get("id")), None) if session is not None else None
    if future is None:
        if session is not None and await crossing.pass_answer(session, message):
            await send_bytes(send, 202, b"", [])  # awaited by the web process that relayed it
            return
        raise ApiError("invalid_request", "no relayed request waits for this response")
    if not future.done():
        future.set_result(message)
    await send_bytes(send, 202, b"", [])


async def stream(
    scope: Scope, receive: Receive, send: Send, host: RuntimeHost, key: KeyRecord, slug: str
) -> None:
    """GET: the session's own SSE stream (sticky pools): upstream messages outside any call."""
    raw = header(scope, b"mcp-session-id")
    if raw is None:
        raise ApiError("method_not_allowed", "no stream without a session")
    session = await clients.find(host, key, slug, raw)
    events = session.events
    if events is None:
        raise ApiError("method_not_allowed", "a shared pool has no session stream")
    await crossing.claim_stream(session)  # the session-level messages come here now
    await send({"type": "http.response.start", "status": 200, "headers": sse_headers(session)})
    await pump(receive, send, events.get, lambda m: _write(send, sse(m)), partial(
        still_allowed, host, key, slug))  # fmt: skip
    await send({"type": "http.response.body", "body": b"", "more_body": False})


Source = Callable[[], Awaitable[dict[str, Any] | None]]
Write = Callable[[dict[str, Any]], Awaitable[None]]


async def pump(
    receive: Receive, send: Send, source: Source, write: Write, allowed: Callable[[], bool]
) -> str:
    """Write what `source` gives to an open SSE response until it gives None (`"ended"`), the
    client goes away (`"gone"`), or its caller may no longer use the pool (`"refused"`: key
    revoked, expired or taken off the pool since; checked every `CHECK_SECONDS`). A comment line
    every `KEEPALIVE_SECONDS` of quiet keeps proxies from cutting the stream."""
    gone = asyncio.ensure_future(disconnected(receive))
    getter = asyncio.ensure_future(source())
    quiet = 0.0  # seconds since the last write
    try:
        while True:
            done, _ = await asyncio.wait(
                (getter, gone), timeout=CHECK_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
            if gone in done:
                return "gone"
            if getter not in done:
                if not allowed():
                    return "refused"
                quiet += CHECK_SECONDS
                if quiet >= KEEPALIVE_SECONDS:
                    quiet = 0.0
                    await _write(send, b": \n\n")
                continue
            message = getter.result()
            if message is None:
                return "ended"
            quiet = 0.0
            await write(message)
            getter = asyncio.ensure_future(source())
    finally:
        getter.cancel()
        gone.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gone


async def _write(send: Send, body: bytes) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": True})


def sse_headers(session: ClientSession | None) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"content-type", b"text/event-stream"),
        (b"cache-control", b"no-cache, no-transform"),
        (b"x-accel-buffering", b"no"),
    ]
    if session is not None:
        headers.append((b"mcp-session-id", session.id.encode()))
    return headers


def sse(message: dict[str, Any]) -> bytes:
    return b"event: message\ndata: " + orjson.dumps(message) + b"\n\n"
