"""`POST /api/v1/pools/<pool>/tools/<tool>/call`: the REST hot path, as a bare ASGI handler.

Body: `{"arguments": {...}, "timeout": <seconds>, "affinity_key": "<string>"}` (all optional).
The answer is the tool's MCP result as the upstream sent it (`content`, `structuredContent`,
`isError`...). With `Accept: text/event-stream` the answer is an SSE stream instead: `progress`
and `log` events while the tool runs (`notifications/progress` / `notifications/message`), then
one `result` or `error` event.

Order of checks, cheapest first: size (`Content-Length`), key, pool permission, pool, rate,
then the body. An unauthenticated client never makes the gateway read its body.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final

import orjson
from django.conf import settings

from balancing.api.access import (
    allowed_tool,
    authenticate,
    charge,
    pool_for,
    started_host,
    upstream_headers,
)
from balancing.api.http import (
    SSE_HEADERS,
    ClientGone,
    Receive,
    Scope,
    Send,
    accepts,
    disconnected,
    header,
    headers_dict,
    parse_json_object,
    read_body,
    send_bytes,
    send_error,
    sse_event,
    too_large,
)
from balancing.engine.affinity import RequestContext
from balancing.engine.errors import CallRejected, UpstreamError
from balancing.engine.runtime import HeadersFor, LivePool, Runtime
from balancing.errors_http import INVALID_PARAMS, ApiError, from_upstream

PREFIX: Final = "/api/v1/pools/"
SUFFIX: Final = "/call"
_OK: Final = [(b"content-type", b"application/json")]
_PROGRESS_TOKEN: Final = "rest"


def match(path: str) -> tuple[str, str] | None:
    """`(pool, tool)` when `path` is a tool-call URL (a trailing slash is allowed)."""
    if not path.startswith(PREFIX):
        return None
    rest = path[len(PREFIX) :].rstrip("/")
    if not rest.endswith(SUFFIX):
        return None
    parts = rest[: -len(SUFFIX)].split("/")
    if len(parts) != 3 or parts[1] != "tools" or not parts[0] or not parts[2]:
        return None
    return parts[0], parts[2]


class CallRequest:
    __slots__ = ("affinity_key", "arguments", "timeout")

    def __init__(self, body: dict[str, Any]) -> None:
        arguments = body.get("arguments", {})
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise ApiError("invalid_arguments", "'arguments' must be a JSON object")
        timeout = body.get("timeout")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
        ):
            raise ApiError("invalid_request", "'timeout' must be a positive number of seconds")
        affinity_key = body.get("affinity_key")
        if affinity_key is not None and not isinstance(affinity_key, str):
            raise ApiError("invalid_request", "'affinity_key' must be a string")
        unknown = set(body) - {"arguments", "timeout", "affinity_key"}
        if unknown:
            raise ApiError("invalid_request", f"unknown fields: {', '.join(sorted(unknown))}")
        self.arguments: dict[str, Any] = arguments
        self.timeout: float | None = float(timeout) if timeout is not None else None
        self.affinity_key: str = affinity_key or ""


async def handle(scope: Scope, receive: Receive, send: Send, slug: str, tool: str) -> None:
    limit: int = settings.MCPPOOL_MAX_BODY_BYTES
    try:
        if scope["method"] != "POST":
            raise ApiError("method_not_allowed", "use POST to call a tool")
        length = header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise too_large(limit)  # before anything else: nothing of it is read
        host = await started_host()
        key = await authenticate(host, header(scope, b"authorization"), scope=scope, slug=slug)
        live = pool_for(host, key, slug)
        await charge(host, key, live)
        request = CallRequest(parse_json_object(await read_body(scope, receive, limit)))
        check_tool(live, tool)
        await allowed_tool(host, key, live, tool)
        identity = upstream_headers(host, key)
        ctx = None
        if live.config.rules:
            ctx = RequestContext(
                api_key_name=key.name,
                client_id=request.affinity_key,
                headers=headers_dict(scope),
                tool=tool,
            )
        if accepts(scope, b"text/event-stream"):
            await _stream(scope, receive, send, host.runtime, slug, tool, request, ctx, identity)
            return
        try:
            result = await host.runtime.call_tool(
                slug,
                tool,
                request.arguments,
                ctx=ctx,
                timeout=request.timeout,
                upstream_headers=identity,
            )
        except UpstreamError as exc:
            raise call_error(exc, tool) from None
        await send_bytes(send, 200, orjson.dumps(result), _OK)
    except ApiError as error:
        await send_error(send, error)
    except ClientGone:
        return


def check_tool(live: LivePool, tool: str) -> None:
    """404 for a tool no server of the pool lists. A server not listed yet may have any tool, so
    then the call goes through and the upstream answers."""
    if tool in live.tools:
        return
    for endpoint in live.endpoints.values():
        if endpoint.tools is None or tool in endpoint.tools:
            return
    raise ApiError("unknown_tool", f"pool {live.config.slug!r} has no tool {tool!r}")


def call_error(exc: UpstreamError, tool: str) -> ApiError:
    if isinstance(exc, CallRejected) and exc.code == INVALID_PARAMS:
        text = str(exc.error.get("message", "")).lower()
        if "unknown tool" in text or "not found" in text:
            return ApiError("unknown_tool", str(exc.error.get("message", "")) or f"no {tool!r}")
    return from_upstream(exc)


async def _stream(
    scope: Scope,
    receive: Receive,
    send: Send,
    runtime: Runtime,
    slug: str,
    tool: str,
    request: CallRequest,
    ctx: RequestContext | None,
    identity: HeadersFor | None = None,
) -> None:
    """SSE: progress and log events while the tool runs, then its result (or error).

    The response starts with the first event, so an error before any progress is still an
    ordinary JSON error with its status. A client that disconnects cancels the call upstream.
    """
    started = False

    async def start() -> None:
        nonlocal started
        if not started:
            started = True
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})

    async def on_message(message: dict[str, Any]) -> dict[str, Any] | None:
        method = message.get("method")
        if method == "notifications/progress":
            params = dict(message.get("params") or {})
            params.pop("progressToken", None)
            await start()
            await _chunk(send, sse_event("progress", orjson.dumps(params)))
        elif method == "notifications/message":
            await start()
            await _chunk(send, sse_event("log", orjson.dumps(message.get("params") or {})))
        return None  # server→client requests get "not supported": REST has no back channel

    call = asyncio.ensure_future(
        runtime.call_tool(
            slug,
            tool,
            request.arguments,
            ctx=ctx,
            timeout=request.timeout,
            on_message=on_message,
            meta={"progressToken": _PROGRESS_TOKEN},
            upstream_headers=identity,
        )
    )
    watcher = asyncio.ensure_future(disconnected(receive))
    try:
        await asyncio.wait((call, watcher), return_when=asyncio.FIRST_COMPLETED)
        if not call.done():
            call.cancel()  # the client left: abandon the call upstream
            with contextlib.suppress(BaseException):
                await call
            return
        try:
            result = call.result()
        except UpstreamError as exc:
            error = call_error(exc, tool)
            if not started:
                await send_error(send, error)
                return
            body = orjson.dumps({"error": {"code": error.code, "message": error.message}})
            await _chunk(send, sse_event("error", body), more=False)
            return
        await start()
        await _chunk(send, sse_event("result", orjson.dumps(result)), more=False)
    finally:
        watcher.cancel()
        if not call.done():
            call.cancel()


async def _chunk(send: Send, data: bytes, *, more: bool = True) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": more})


async def run(scope: Scope, receive: Receive, send: Send) -> bool:
    """Serve `scope` when it is a tool call; False to let the next app have it."""
    target = match(scope["path"])
    if target is None:
        return False
    await handle(scope, receive, send, *target)
    return True
