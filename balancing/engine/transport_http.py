"""Streamable HTTP to an upstream MCP server, on the owner's shared aiohttp session.

Each request is one POST; the answer comes back either as ``application/json`` or as an SSE
stream that may carry the call's notifications and server→client requests before the response.
The SSE parser works on raw chunks and only splits lines, so a plain JSON answer costs one
``orjson.loads``.

In the handshake era a session may also hold the server's standalone GET stream open (`listen`),
where the server sends what belongs to no call: list-changed and logging notifications and its own
requests (roots, sampling, elicitation). Only sessions with one owner ask for it (sticky client
sessions): in a shared pool no single client could receive those messages.

Not implemented: resuming a broken *call* stream with ``Last-Event-ID`` (a broken stream fails the
call with ``UpstreamClosed``; the runtime may retry it when that is safe). The GET stream does
resume with it when the server numbers its events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Final, Literal

import aiohttp
import orjson

from balancing.engine import jsonrpc, protocol
from balancing.engine.config import Era, ServerConfig
from balancing.engine.errors import (
    ConnectFailed,
    ProtocolError,
    SessionGone,
    UpstreamClosed,
    UpstreamError,
    UpstreamRefused,
)
from balancing.engine.jsonrpc import JsonObject
from balancing.engine.policy import OutboundPolicy

if TYPE_CHECKING:
    from balancing.engine.upstream import Call, Deliver

logger = logging.getLogger(__name__)

# The largest message (a JSON body or one SSE event) we accept; a bigger one is a protocol error,
# never an unbounded buffer.
MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
# Error bodies are only read for their JSON-RPC error; a page of HTML is not worth more.
MAX_ERROR_BODY_BYTES: Final = 64 * 1024
CONNECT_TIMEOUT: Final = 5.0
# The call's own deadline bounds the exchange (asyncio.timeout in the session); aiohttp's default
# 5-minute total would cut long tool calls, so only the connect phase gets its own bound here.
_REQUEST_TIMEOUT: Final = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT)
_SHORT_TIMEOUT: Final = aiohttp.ClientTimeout(total=2.0)
# Reconnecting a broken GET stream: doubling from the first delay up to the last, like the SDK
# client's 1 s default but quicker to come back after a blip (a lost stream loses messages).
LISTEN_BACKOFF_FIRST: Final = 0.25
LISTEN_BACKOFF_MAX: Final = 8.0
LISTEN_TAKEN_MAX: Final = 1.0
LAST_EVENT_ID_HEADER: Final = "last-event-id"
# How long an idle upstream connection may be reused: under the 5 s after which uvicorn, Node's
# http server and hypercorn (what MCP servers mostly run on) close an idle connection. Longer, a
# call may go out on a connection the server is closing at that moment and fail as
# "Server disconnected" — delivered as far as anyone can tell, so not retried for a tool that
# is not idempotent. Reconnecting after a quiet spell costs one TCP handshake.
IDLE_CONNECTION_SECONDS: Final = 4.0

_JSON: Final = "application/json"
_SSE: Final = "text/event-stream"


def client_session(outbound: OutboundPolicy | None = None) -> aiohttp.ClientSession:
    """The owner's shared aiohttp session (one keep-alive connector for every HTTP upstream).

    With a policy, every address a connection is about to use is checked after DNS resolution
    (the connector's socket factory), so a name rebound to a denied address is refused at
    connect time, not only when the URL was saved. The runtime and the health probes use this.
    """
    connector = aiohttp.TCPConnector(
        limit=0,
        keepalive_timeout=IDLE_CONNECTION_SECONDS,
        socket_factory=outbound.socket_factory if outbound is not None else None,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),
        skip_auto_headers=("User-Agent",),
    )


class SseParser:
    """Incremental ``text/event-stream`` parser yielding the data of each ``message`` event."""

    __slots__ = ("_buffer", "_data", "_event", "_limit", "_size", "last_id")

    def __init__(self, limit: int = MAX_MESSAGE_BYTES) -> None:
        self._buffer = bytearray()
        self._data: list[bytes] = []
        self._event = b""
        self._size = 0
        self._limit = limit
        self.last_id = ""  # the latest event `id` seen: what a reconnect sends as Last-Event-ID

    def feed(self, chunk: bytes) -> list[bytes]:
        buffer = self._buffer
        buffer += chunk
        events: list[bytes] = []
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            line = bytes(buffer[start:end])
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                # Empty data is a resumability "priming" event (server-everything sends them).
                if self._size and self._event in (b"", b"message"):
                    events.append(self._data[0] if len(self._data) == 1 else b"\n".join(self._data))
                self._data = []
                self._event = b""
                self._size = 0
                continue
            if line[0] == 0x3A:  # ":" starts a comment (keep-alive)
                continue
            field, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if field == b"data":
                self._size += len(value)
                if self._size > self._limit:
                    raise ProtocolError(f"an SSE event exceeds {self._limit} bytes")
                self._data.append(value)
            elif field == b"event":
                self._event = value
            elif field == b"id" and b"\0" not in value:  # the spec ignores ids with NUL
                self.last_id = value.decode("utf-8", "replace")
            # `retry` is the server's reconnect hint; our backoff is our own.
        del buffer[:start]
        if len(buffer) > self._limit:
            raise ProtocolError(f"an SSE line exceeds {self._limit} bytes")
        return events


class HttpTransport:
    """Streamable HTTP framing for one `UpstreamSession`."""

    def __init__(self, server: ServerConfig, http: aiohttp.ClientSession, deliver: Deliver) -> None:
        self._name = server.name
        self._url = server.url
        self._http = http
        self._deliver = deliver
        self._extra = dict(server.headers)
        self._session_id: str | None = None
        self._modern = False
        self._capture_session_id = False
        self._gone = False
        self._headers = self._build_headers(None)

    @property
    def alive(self) -> bool:
        return not self._gone

    @property
    def cancels_by_disconnect(self) -> bool:
        return self._modern

    @property
    def session_id(self) -> str | None:
        return self._session_id

    async def start(self) -> None:
        """Nothing to do: connections come from the shared pool on first use."""

    def adopt(self, session_id: str, version: str) -> None:
        """Speak on a handshake-era session negotiated elsewhere (another web process)."""
        self._session_id = session_id
        self.use(Era.HANDSHAKE, version)

    def use(self, era: Era, version: str | None) -> None:
        self._modern = era is Era.MODERN
        # Only the initialize exchange hands out a session id.
        self._capture_session_id = era is Era.HANDSHAKE and version is None
        self._headers = self._build_headers(version)

    def _build_headers(self, version: str | None) -> dict[str, str]:
        headers = {
            **self._extra,
            "accept": "application/json, text/event-stream",
            "content-type": _JSON,
        }
        if version is not None:
            headers[protocol.PROTOCOL_VERSION_HEADER] = version
        if self._session_id is not None and not self._modern:
            headers[protocol.SESSION_ID_HEADER] = self._session_id
        return headers

    # ---------------------------------------------------------------- requests

    async def roundtrip(
        self, call: Call, body: bytes, method: str, params: JsonObject | None
    ) -> JsonObject:
        headers = self._headers
        if self._modern:
            headers = {**headers, **protocol.modern_headers(method, params)}
        if call.headers:  # the client's own (`Mcp-Param-*`) and the caller's identity headers
            headers = {**headers, **call.headers}
        if params is not None and (context := protocol.trace_headers(params)):
            headers = {**headers, **context}  # the trace context in `_meta`, as HTTP sees it
        response = await self._post(body, headers)
        try:
            answer = await self._read_answer(response, call)
        except BaseException:
            # A half-read body (cancelled, timed out, broken) must not go back to the pool; in the
            # modern era closing it is also how the server learns the call was abandoned.
            response.close()
            raise
        response.release()
        return answer

    async def _post(self, body: bytes, headers: dict[str, str]) -> aiohttp.ClientResponse:
        try:
            return await self._http.post(
                self._url, data=body, headers=headers, timeout=_REQUEST_TIMEOUT
            )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise ConnectFailed(f"cannot connect to {self._url}: {exc}", server=self._name) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamClosed(f"POST {self._url} failed: {exc!r}", server=self._name) from exc

    async def _read_answer(self, response: aiohttp.ClientResponse, call: Call) -> JsonObject:
        status = response.status
        if self._capture_session_id and (session_id := response.headers.get("mcp-session-id")):
            self._session_id = session_id
        if status >= 300:
            return await self._read_failure(response, call)
        content_type = response.content_type
        if content_type == _SSE:
            return await self._read_stream(response, call)
        if content_type == _JSON:
            return await self._read_json(response, call)
        raise ProtocolError(
            f"HTTP {status} with content type {content_type!r} for a request", server=self._name
        )

    async def _read_json(self, response: aiohttp.ClientResponse, call: Call) -> JsonObject:
        raw = await self._read_body(response, MAX_MESSAGE_BYTES)
        try:
            decoded = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(f"invalid JSON answer: {exc}", server=self._name) from exc
        # A JSON array is a 2025-03-26 batch: the answer may share it with notifications.
        messages = decoded if isinstance(decoded, list) else [decoded]
        answer: JsonObject | None = None
        for message in messages:
            if not isinstance(message, dict):
                continue
            if "method" not in message and message.get("id") == call.id:
                answer = message
            else:
                await self._deliver(message, call)
        if answer is None:
            raise ProtocolError("JSON answer without the call's response", server=self._name)
        return answer

    async def _read_stream(self, response: aiohttp.ClientResponse, call: Call) -> JsonObject:
        parser = SseParser()
        deliver = self._deliver
        try:
            async for chunk in response.content.iter_any():
                for data in parser.feed(chunk):
                    message = jsonrpc.decode(data)
                    if message is None:
                        raise ProtocolError("invalid JSON in an SSE event", server=self._name)
                    if "method" not in message and message.get("id") == call.id:
                        return message
                    await deliver(message, call)
        except aiohttp.ClientError as exc:
            raise UpstreamClosed(f"SSE stream broke: {exc!r}", server=self._name) from exc
        raise UpstreamClosed("SSE stream ended without the call's response", server=self._name)

    async def _read_failure(self, response: aiohttp.ClientResponse, call: Call) -> JsonObject:
        status = response.status
        try:
            raw = await self._read_body(response, MAX_ERROR_BODY_BYTES)
        except ProtocolError:
            raw = b""
        message = jsonrpc.decode(raw) if raw else None
        error = message.get("error") if message is not None else None
        if _carried_session(response) and _session_gone(status, error):
            self._gone = True
            raise SessionGone(f"HTTP {status}: the server forgot our session", server=self._name)
        if message is not None and isinstance(error, dict) and message.get("id") == call.id:
            return message  # a JSON-RPC error with an HTTP status (2026: -32601 → 404, …)
        # A 4xx refused the request before running it (the request's fault, not the server's);
        # a 5xx may have run part of it.
        if status < 500:
            raise UpstreamRefused(
                f"HTTP {status} from {self._url}", status=status, server=self._name
            )
        raise ProtocolError(f"HTTP {status} from {self._url}", server=self._name)

    async def _read_body(self, response: aiohttp.ClientResponse, limit: int) -> bytes:
        length = response.content_length
        try:
            if length is not None and length <= limit:
                return await response.read()
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise ProtocolError(f"answer exceeds {limit} bytes", server=self._name)
                chunks.append(chunk)
            return b"".join(chunks)
        except aiohttp.ClientError as exc:
            raise UpstreamClosed(f"answer broke off: {exc!r}", server=self._name) from exc

    # ---------------------------------------------------------------- one-way messages

    async def send(self, body: bytes, method: str, params: JsonObject | None) -> None:
        """POST a notification or a response; the server acknowledges with 202."""
        response = await self._post(body, self._headers)
        try:
            if response.status >= 300:
                error = None
                if response.status in (400, 404):
                    message = jsonrpc.decode(await self._read_body(response, MAX_ERROR_BODY_BYTES))
                    error = message.get("error") if message is not None else None
                if _carried_session(response) and _session_gone(response.status, error):
                    self._gone = True
                    raise SessionGone(
                        f"HTTP {response.status} for {method or 'a response'}", server=self._name
                    )
                raise ProtocolError(
                    f"HTTP {response.status} for {method or 'a response'}",
                    server=self._name,
                    delivered=response.status >= 500,
                )
        finally:
            response.release()

    # ---------------------------------------------------------------- the GET stream

    async def listen(self, opened: asyncio.Event) -> None:
        """Hold the handshake-era GET stream open while the session lives; what arrives on it
        goes to the session as belonging to no call (requests are answered by POST, there).

        ``opened`` is set once the first GET has its answer (or failed): the session sends
        ``notifications/initialized`` after that, because servers send their first session-level
        message right after it (server-everything asks for roots) and drop whatever finds no
        stream open. 405: the server offers no stream, stop. 404 (or 400 naming the session): the
        session is gone. Anything else: reconnect after a doubling delay, with ``Last-Event-ID``
        when the server numbers its events (then it may replay what we missed).
        """
        delay = LISTEN_BACKOFF_FIRST
        last_id = ""
        try:
            while not self._gone and self._session_id is not None:
                parser = SseParser()
                try:
                    outcome = await self._listen_once(parser, last_id, opened)
                except (aiohttp.ClientError, UpstreamError, TimeoutError) as exc:
                    logger.debug("%s: GET stream broke: %r", self._name, exc)
                    outcome = "idle"
                opened.set()
                if outcome == "stop":
                    return
                last_id = parser.last_id or last_id
                if outcome == "progress":
                    delay = LISTEN_BACKOFF_FIRST
                await asyncio.sleep(delay)
                # "taken": another web process holds the stream and is letting go of it (or,
                # with Redis away, keeps it): ask again soon, but not at full speed forever.
                delay = min(
                    delay * 2, LISTEN_TAKEN_MAX if outcome == "taken" else LISTEN_BACKOFF_MAX
                )
        finally:
            opened.set()

    async def _listen_once(
        self, parser: SseParser, last_id: str, opened: asyncio.Event
    ) -> Literal["stop", "progress", "taken", "idle"]:
        """One GET stream until it ends: ``stop`` listening for good, or reconnect (``progress``:
        the stream carried something, ``taken``: another holder is letting go — so soon)."""
        headers = {k: v for k, v in self._headers.items() if k != "content-type"}
        headers["accept"] = _SSE
        if last_id:
            headers[LAST_EVENT_ID_HEADER] = last_id
        async with self._http.get(self._url, headers=headers, timeout=_REQUEST_TIMEOUT) as response:
            opened.set()
            status = response.status
            if status == 405:
                logger.debug("%s: the server offers no GET stream", self._name)
                return "stop"
            if status >= 300:
                raw = b""
                with contextlib.suppress(ProtocolError):
                    raw = await self._read_body(response, MAX_ERROR_BODY_BYTES)
                message = jsonrpc.decode(raw) if raw else None
                if _session_gone(status, message.get("error") if message is not None else None):
                    logger.info("%s: HTTP %d on the GET stream: session gone", self._name, status)
                    self._gone = True
                    return "stop"
                logger.debug("%s: GET stream refused with HTTP %d", self._name, status)
                if status == 409:
                    return "taken"  # a stream still open upstream (another process's, going)
                return "idle"  # 5xx: try again later
            if response.content_type != _SSE:
                logger.debug("%s: GET answered %r, not a stream", self._name, response.content_type)
                return "stop"
            progress = False
            async for chunk in response.content.iter_any():
                progress = True
                for data in parser.feed(chunk):
                    message = jsonrpc.decode(data)
                    if message is None:
                        logger.warning("%s: invalid JSON on the GET stream", self._name)
                        continue
                    await self._deliver(message, None)
            return "progress" if progress else "idle"

    async def close(self) -> None:
        """End a handshake-era session with DELETE (405 = the server keeps no sessions)."""
        session_id, self._session_id = self._session_id, None
        self._gone = True
        if session_id is None or self._modern:
            return
        headers = {**self._headers, protocol.SESSION_ID_HEADER: session_id}
        try:
            async with self._http.delete(self._url, headers=headers, timeout=_SHORT_TIMEOUT) as r:
                if r.status not in (200, 202, 204, 404, 405):
                    logger.debug("%s: DELETE session answered %d", self._name, r.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.debug("%s: DELETE session failed: %r", self._name, exc)


def _carried_session(response: aiohttp.ClientResponse) -> bool:
    """Whether the request named a handshake-era session: only then can a 404 mean the server
    forgot it. Judged by what was sent, not by the transport now: the GET stream may have met the
    same 404 and closed the session while this request was on its way."""
    return protocol.SESSION_ID_HEADER in response.request_info.headers


def _session_gone(status: int, error: object) -> bool:
    """404 is the spec's "unknown session". Some servers (the npm server-everything among them)
    answer 400 "No valid session ID provided" instead; both mean "initialize again"."""
    if status == 404:
        return True
    if status == 400 and isinstance(error, dict):
        return "session" in str(error.get("message", "")).lower()
    return False
