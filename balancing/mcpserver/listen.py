"""`subscriptions/listen` (2026-07-28): a client's stream of the pool's change notifications.

The answer to the request is the stream (SSE, always: a client that does not accept one gets 406,
as from the SDK's server): `notifications/subscriptions/acknowledged` with the honored filter
first, then each event the client asked for from any server of the pool, every frame carrying the
request's id under `_meta["io.modelcontextprotocol/subscriptionId"]`. The events come from the
runtime's per-server feeds (`engine/feeds.py`); a change in the pool's servers is itself a change
of its lists, told to the listeners that asked. The stream ends:

* when the client goes away — its share of the feeds is let go;
* gracefully (the final result frame) when the pool is removed (or the runtime closes first);
* abruptly (no result: the spec's "lost", the client listens again and refetches) when a server's
  upstream stream or session ends, the client stops reading (past the backlog bound), or the web
  process is stopped (uvicorn cuts open streams after its graceful-shutdown timeout).

A comment line after 15 s of quiet keeps idle proxies (HAProxy's `timeout server`) from cutting
the stream, and every second it checks that its caller may still use the pool: the stream of a
key revoked, expired or taken off the pool since it opened ends (as lost: listening again is
401/403) — both as on a sticky session's GET stream (`relays.pump`). Streams are bounded per API
key and per process, like sticky sessions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, Final

import orjson

from balancing.api.access import charge, still_allowed
from balancing.api.http import Receive, Send, header
from balancing.engine.errors import UpstreamError
from balancing.engine.feeds import ACKNOWLEDGED, SUBSCRIPTION_ID_META_KEY, Interest, Listener
from balancing.errors_http import INTERNAL_ERROR, INVALID_PARAMS, ApiError, from_upstream
from balancing.mcpserver.forward import Request
from balancing.mcpserver.relays import pump, sse_headers
from balancing.mcpserver.replies import frame, modern_result

METHOD: Final = "subscriptions/listen"
MAX_PER_KEY: Final = 64
MAX_PER_PROCESS: Final = 1024

_open: Counter[int] = Counter()  # listen streams open in this process, per API key id


async def serve(request: Request, receive: Receive, send: Send) -> None:
    host, key, live, id_json = request.host, request.key, request.live, request.reply.id_json
    params = request.params
    if b"text/event-stream" not in (header(request.reply.scope, b"accept") or b""):
        raise ApiError("not_acceptable", "a subscriptions/listen answer is an event stream")
    notifications = (params or {}).get("notifications")
    if not isinstance(notifications, dict):
        raise ApiError(
            "invalid_arguments", "subscriptions/listen needs a notifications filter (an object)",
            rpc=INVALID_PARAMS,
        )  # fmt: skip
    await charge(host, key, live)
    if _open[key.id] >= MAX_PER_KEY or _open.total() >= MAX_PER_PROCESS:
        raise ApiError("session_limit", "Subscription limit reached", rpc=INTERNAL_ERROR)
    interest = Interest.of(notifications)
    slug = live.config.slug
    _open[key.id] += 1
    try:
        try:
            listener = await host.runtime.listen(slug, interest)
        except UpstreamError as exc:
            raise from_upstream(exc) from None
        try:
            await _stream(receive, send, listener, id_json, lambda: still_allowed(host, key, slug))
        finally:
            host.runtime.unlisten(listener)
    finally:
        _open[key.id] -= 1
        if _open[key.id] <= 0:
            del _open[key.id]


async def _stream(
    receive: Receive,
    send: Send,
    listener: Listener,
    id_json: bytes,
    allowed: Callable[[], bool],
) -> None:
    meta = b'{"' + SUBSCRIPTION_ID_META_KEY.encode() + b'":' + id_json + b"}"
    await send({"type": "http.response.start", "status": 200, "headers": sse_headers(None)})
    ack = {"method": ACKNOWLEDGED, "params": {"notifications": listener.interest.honored()}}
    await _event(send, _stamped(ack, meta))

    async def write(event: dict[str, Any]) -> None:
        await _event(send, _stamped(event, meta))

    how = await pump(receive, send, listener.next, write, allowed)
    if how == "refused":
        listener.end("lost")  # its caller may no longer listen: 401/403 next time
    if how != "gone":
        await _end(send, listener, id_json, meta)


def _stamped(event: dict[str, Any], meta: bytes) -> bytes:
    """The event as a JSON-RPC notification with the subscription id in its `_meta` (spliced in
    as JSON text: the id is echoed exactly as the client wrote it)."""
    params = orjson.dumps(event.get("params") or {})
    params = (params[:-1] + b",") if params != b"{}" else b"{"
    method = orjson.dumps(event["method"])
    return (
        b'{"jsonrpc":"2.0","method":' + method + b',"params":' + params + b'"_meta":' + meta + b"}}"
    )


async def _event(send: Send, message: bytes) -> None:
    body = b"event: message\ndata: " + message + b"\n\n"
    await send({"type": "http.response.body", "body": body, "more_body": True})


async def _end(send: Send, listener: Listener, id_json: bytes, meta: bytes) -> None:
    """Graceful: the listen request's result, stamped, as the last frame. Lost: just the end."""
    body = b""
    if listener.ended == "graceful":
        result = orjson.dumps(modern_result(METHOD, {}))
        result = result[:-1] + b',"_meta":' + meta + b"}"
        body = b"event: message\ndata: " + frame(id_json, b"result", result) + b"\n\n"
    await send({"type": "http.response.body", "body": body, "more_body": False})
