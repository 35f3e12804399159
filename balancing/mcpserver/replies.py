"""One POST's answer, in the form its era expects.

JSON by default; an SSE stream from the first message that must flow while the request runs
(progress, logging, a relayed server→client request), as the SDK's own server does. The request id
is echoed as the exact JSON text the client sent.

Results are shaped for the client's era: the 2026-07-28 wire requires `resultType` and, on
cacheable results, `ttlMs`/`cacheScope` (filled with "do not cache" when a handshake-era upstream
gave none — never invented); a handshake-era client never sees those 2026-only fields nor `_meta`
keys of the 2026 namespace. Errors the upstream answered pass on unchanged; on the 2026 wire their
HTTP status follows the spec's table (-32602 → 400, -32601 → 404, …).
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from mcp.shared.inbound import ERROR_CODE_HTTP_STATUS

from balancing.api.http import Headers, Scope, Send, header, send_bytes
from balancing.engine.sticky import ClientSession
from balancing.errors_http import ApiError
from balancing.mcpserver.relays import relay_request, sse, sse_headers

# Refusals that stay HTTP statuses even mid-dispatch on the handshake wire. Every other failure is
# a JSON-RPC error on a 200 there: a 404 would tell a handshake-era client its session is gone.
_TRANSPORT_REFUSALS: Final = frozenset({"unknown_session", "rate_limited", "session_limit"})
# Results the 2026-07-28 wire requires caching directives on (the SDK's `CacheableResult`).
CACHEABLE: Final = frozenset(
    {
        "server/discover",
        "tools/list",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "prompts/list",
    }
)
_MODERN_ONLY: Final = frozenset({"resultType", "ttlMs", "cacheScope"})
_MODERN_META_PREFIX: Final = "io.modelcontextprotocol/"


def frame(id_json: bytes, member: bytes, payload: bytes) -> bytes:
    return b'{"jsonrpc":"2.0","id":' + id_json + b',"' + member + b'":' + payload + b"}"


def json_headers(session: ClientSession | None) -> Headers:
    headers: Headers = [(b"content-type", b"application/json")]
    if session is not None:
        headers.append((b"mcp-session-id", session.id.encode()))
    return headers


async def refuse(send: Send, error: ApiError, id_json: bytes = b"null") -> None:
    """An HTTP refusal with a JSON-RPC error body (the SDK client surfaces it as such)."""
    body = frame(id_json, b"error", orjson.dumps(error.rpc_error()))
    headers: Headers = [(b"content-type", b"application/json"), *error.headers]
    if error.status == 405:
        headers.append((b"allow", b"GET, POST, DELETE"))
    await send_bytes(send, _modern_status(error.rpc_code, error.status), body, headers)


def _modern_status(rpc: int, status: int) -> int:
    """A transport refusal keeps its status; a JSON-RPC error the spec maps gets the spec's."""
    return status if status != 400 else ERROR_CODE_HTTP_STATUS.get(rpc, status)


def modern_result(method: str, result: dict[str, Any]) -> dict[str, Any]:
    """Fill in what the 2026-07-28 wire requires and a handshake-era upstream does not send."""
    if "resultType" in result and (method not in CACHEABLE or "ttlMs" in result):
        return result
    result = {"resultType": "complete", **result}
    if method in CACHEABLE:
        result.setdefault("ttlMs", 0)
        result.setdefault("cacheScope", "private")
    return result


def handshake_result(result: dict[str, Any]) -> dict[str, Any]:
    """Drop what only the 2026-07-28 wire has (a modern upstream's hints and `_meta` keys)."""
    meta = result.get("_meta")
    leaks = isinstance(meta, dict) and any(k.startswith(_MODERN_META_PREFIX) for k in meta)
    if not leaks and _MODERN_ONLY.isdisjoint(result):
        return result
    out = {k: v for k, v in result.items() if k not in _MODERN_ONLY}
    if leaks:
        assert isinstance(meta, dict)  # noqa: S101  # narrows the type only
        kept = {k: v for k, v in meta.items() if not k.startswith(_MODERN_META_PREFIX)}
        if kept:
            out["_meta"] = kept
        else:
            del out["_meta"]
    return out


class Reply:
    """One POST's answer: JSON, or SSE from the first message that must flow during the call."""

    __slots__ = ("_send", "_sse_ok", "_started", "id_json", "modern", "scope", "session")

    def __init__(
        self,
        scope: Scope,
        send: Send,
        session: ClientSession | None,
        id_json: bytes,
        modern: bool,
    ) -> None:
        self.scope = scope
        self._send = send
        self.session = session
        self.id_json = id_json
        self.modern = modern
        accept = header(scope, b"accept") or b""
        self._sse_ok = b"text/event-stream" in accept
        self._started = False

    async def _start(self) -> None:
        if not self._started:
            self._started = True
            await self._send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": sse_headers(self.session),
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
        return await relay_request(session, message, self._send_event, None)

    @property
    def can_ask(self) -> bool:
        """A server→client request can reach this client: it has a session and reads SSE."""
        return self._sse_ok and self.session is not None

    async def ask(self, message: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        """Send the client a request of the gateway's own on this call's stream (the era
        bridge) and return its answer's result; an error answer raises `ClientRefused`."""
        assert self.session is not None  # noqa: S101  # checked by can_ask
        return await relay_request(self.session, message, self._send_event, timeout)

    async def _send_event(self, message: dict[str, Any]) -> None:
        await self._start()
        await self._send({"type": "http.response.body", "body": sse(message), "more_body": True})

    async def result(self, result: dict[str, Any], method: str) -> None:
        shaped = modern_result(method, result) if self.modern else handshake_result(result)
        await self._finish(frame(self.id_json, b"result", orjson.dumps(shaped)), 200)

    async def error(self, error: ApiError) -> None:
        """The gateway's own error."""
        if not self._started and (error.code in _TRANSPORT_REFUSALS):
            await refuse(self._send, error, self.id_json)
            return
        status = ERROR_CODE_HTTP_STATUS.get(error.rpc_code, 200) if self.modern else 200
        await self._finish(frame(self.id_json, b"error", orjson.dumps(error.rpc_error())), status)

    async def upstream_error(self, error: dict[str, Any]) -> None:
        """A JSON-RPC error the upstream answered: passed on as it is."""
        code = error.get("code")
        status = (
            ERROR_CODE_HTTP_STATUS.get(code, 200) if self.modern and isinstance(code, int) else 200
        )
        await self._finish(frame(self.id_json, b"error", orjson.dumps(error)), status)

    async def _finish(self, body: bytes, status: int) -> None:
        if self._started:
            data = b"event: message\ndata: " + body + b"\n\n"
            await self._send({"type": "http.response.body", "body": data, "more_body": False})
            return
        await send_bytes(self._send, status, body, json_headers(self.session))
