"""One logical MCP session to one upstream server, multiplexing many calls at once.

A session is to an MCP server what an HTTP/2 connection is to a web server: the pool keeps a few
per server and puts many concurrent calls on each. Calls from different clients get session-unique
JSON-RPC ids and progress tokens, so two clients that both send ``id: 1`` never see each other's
answers. The hot path stays on bytes and dicts (orjson, aiohttp): no SDK model is built per call.

What arrives from the server besides the answer is routed by ownership:

* to the call it belongs to (``on_message`` of ``request``): over HTTP everything on that call's
  response stream; over stdio the progress notifications carrying the call's progress token;
* to the session (``on_event`` of ``open``): everything else — list-changed notifications,
  logging outside a call (and, over stdio, all logging and server→client requests, since stdio
  carries no marker tying them to a call). Over HTTP those travel on the server's GET stream,
  which a session only opens when asked to (``listen``): a session with one owner wants them, a
  pooled session shared by many clients has nobody to give them to.

A server→client request (sampling, elicitation, roots) is answered with whatever the handler
returns; the session sends it back upstream under the server's own id. A ``ping`` from the server
is answered here. Handlers for notifications run inline on the receive path, so they must be quick
(hand the message to a queue); handlers for requests run as their own tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

from balancing.engine import jsonrpc, protocol
from balancing.engine.config import Era, ServerConfig, Transport
from balancing.engine.deadlines import deadline
from balancing.engine.errors import (
    CallRejected,
    ProtocolError,
    SessionGone,
    UpstreamError,
    UpstreamTimeout,
)
from balancing.engine.jsonrpc import JsonObject, Kind, RequestId
from balancing.engine.policy import CommandPolicy

if TYPE_CHECKING:
    import aiohttp

logger = logging.getLogger(__name__)

MessageHandler = Callable[[JsonObject], Awaitable[JsonObject | None]]
Clock = Callable[[], float]

METHOD_NOT_FOUND: Final = -32601
INTERNAL_ERROR: Final = -32603

# How long close() waits for a handshake-era DELETE before giving up on it.
CLOSE_TIMEOUT: Final = 2.0
# How long opening waits for the GET stream's answer before `notifications/initialized` (servers
# send their first session-level messages right after it). Servers answer a GET at once; this
# only bounds one that holds back its headers.
LISTEN_OPEN_WAIT: Final = 2.0


class ClientRefused(Exception):
    """Raised by a handler of a server→client request to answer it with this JSON-RPC error
    (a client's own refusal, passed on as the client sent it)."""

    def __init__(self, error: JsonObject) -> None:
        super().__init__(str(error.get("message", "")))
        self.error = error


class Call:
    """One request in flight on a session (the transports only read ``id``)."""

    __slots__ = ("headers", "id", "on_message", "progress_token")

    def __init__(
        self,
        request_id: int,
        on_message: MessageHandler | None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.id = request_id
        self.on_message = on_message
        self.progress_token: Any = None  # the caller's own token, restored on the way back
        # a client's own HTTP headers to pass on (`Mcp-Param-*`, trace context) and the caller's
        # identity as the operator defined it: HTTP only
        self.headers = headers


Deliver = Callable[[JsonObject, "Call | None"], Awaitable[None]]


class UpstreamTransport(Protocol):
    """What a session needs from a transport (`transport_http`, `transport_stdio`)."""

    @property
    def alive(self) -> bool: ...

    @property
    def cancels_by_disconnect(self) -> bool:
        """True when abandoning a call's exchange is itself the cancel signal (2026 HTTP)."""
        ...

    async def start(self) -> None: ...

    def use(self, era: Era, version: str | None) -> None:
        """Switch the wire framing (headers) to ``era`` at ``version`` (None: pre-handshake)."""
        ...

    async def roundtrip(
        self, call: Call, body: bytes, method: str, params: JsonObject | None
    ) -> JsonObject:
        """Send one request and return its JSON-RPC response message (result or error);
        everything else the server sends for it goes to the session's ``deliver``."""
        ...

    async def send(self, body: bytes, method: str, params: JsonObject | None) -> None:
        """Send a notification, or a response to a server→client request."""
        ...

    async def close(self) -> None: ...


class UpstreamSession:
    """A negotiated MCP session to one server; many calls may run on it at once."""

    def __init__(
        self,
        server: ServerConfig,
        *,
        client_info: JsonObject,
        capabilities: JsonObject,
        on_event: MessageHandler | None,
        clock: Clock,
    ) -> None:
        self.server = server
        self._client_info = client_info
        self._capabilities = capabilities
        self._on_event = on_event
        self._clock = clock
        self._ids = jsonrpc.IdAllocator(jsonrpc.random_start())
        # Over HTTP each call's progress comes on its own response stream, so the caller's token
        # goes upstream as the caller wrote it. Over stdio nothing ties a notification to its
        # call: progress is routed by token (`_by_token`, wire token -> call), and a session
        # shared by many clients rewrites tokens to the session-unique request id, restoring
        # the caller's own on the way back (one owner's tokens are already unique).
        self._by_token: dict[Any, Call] = {}
        self._maps_tokens = False
        self._rewrite_tokens = False
        self.handshake_version = protocol.LATEST_HANDSHAKE_VERSION
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight = 0
        self._closed = False
        self._envelope: JsonObject | None = None  # modern era: the `_meta` every request carries
        self._transport: UpstreamTransport
        # HTTP, handshake era: holds the GET stream open (opened with `listen`, or on demand by
        # `listen()`: the stream follows the client's, which may be on another web process)
        self._listener: Callable[[asyncio.Event], Awaitable[None]] | None = None
        self._listening: asyncio.Task[None] | None = None
        self._listen_at_start = False
        self.era = Era.AUTO
        self.protocol_version = ""
        self.server_info: JsonObject = {}
        self.server_capabilities: JsonObject = {}
        self.instructions = ""
        self.opened_at = clock()
        self.last_used = self.opened_at

    # ---------------------------------------------------------------- opening

    @classmethod
    async def open(
        cls,
        server: ServerConfig,
        *,
        http: aiohttp.ClientSession | None,
        client_info: JsonObject,
        capabilities: JsonObject,
        on_event: MessageHandler | None = None,
        timeout: float,
        clock: Clock = time.monotonic,
        listen: bool = False,
        commands: CommandPolicy | None = None,
        handshake_version: str | None = None,
    ) -> UpstreamSession:
        """Connect (HTTP) or spawn (stdio), then negotiate the era ``server.era`` asks for.

        ``http`` is the owner's shared aiohttp session (one keep-alive connector for every
        upstream); it is required for HTTP servers and ignored for stdio. ``listen``: over HTTP
        in the handshake era, also hold the server's GET stream open for messages outside any
        call (to ``on_event``) while the session lives; stdio sessions always receive them.
        ``commands``: the operator's stdio command policy, checked again just before spawning.
        A session that listens has one owner. ``handshake_version``: the version to ask for in
        ``initialize`` (a sticky client's own), the newest we speak by default.
        """
        session = cls(
            server,
            client_info=client_info,
            capabilities=capabilities,
            on_event=on_event,
            clock=clock,
        )
        if handshake_version in protocol.HANDSHAKE_PROTOCOL_VERSIONS:
            session.handshake_version = handshake_version
        if server.transport is Transport.STDIO:
            session._maps_tokens = True
            session._rewrite_tokens = not listen
            from balancing.engine.transport_stdio import StdioTransport

            session._transport = StdioTransport(server, session._deliver, commands)
        else:
            if http is None:
                raise ValueError(f"{server.name}: an HTTP server needs the shared aiohttp session")
            from balancing.engine.transport_http import HttpTransport

            transport = HttpTransport(server, http, session._deliver)
            session._transport = transport
            session._listener = transport.listen
            session._listen_at_start = listen
        try:
            async with asyncio.timeout(timeout):
                await session._transport.start()
                await session._negotiate(server.era, timeout)
        except TimeoutError:
            await session.close()
            raise UpstreamTimeout(
                f"no answer to the MCP negotiation within {timeout:g}s", server=server.name
            ) from None
        except BaseException:
            await session.close()
            raise
        return session

    @classmethod
    async def resume(
        cls,
        server: ServerConfig,
        *,
        http: aiohttp.ClientSession | None,
        session_id: str,
        protocol_version: str,
        server_capabilities: JsonObject,
        client_info: JsonObject,
        capabilities: JsonObject,
        on_event: MessageHandler | None = None,
        clock: Clock = time.monotonic,
    ) -> UpstreamSession:
        """Speak on an HTTP server's handshake-era session another process opened (its own
        ``session_id``, negotiated at ``protocol_version``): no ``initialize``, no round trip.
        The GET stream opens on demand (`listen`), when this process serves the client's."""
        if server.transport is Transport.STDIO or http is None:
            raise ValueError(f"{server.name}: only an HTTP session can be resumed, on a runtime")
        from balancing.engine.transport_http import HttpTransport

        session = cls(
            server,
            client_info=client_info,
            capabilities=capabilities,
            on_event=on_event,
            clock=clock,
        )
        transport = HttpTransport(server, http, session._deliver)
        transport.adopt(session_id, protocol_version)
        session._transport = transport
        session._listener = transport.listen
        session.era = Era.HANDSHAKE
        session.handshake_version = session.protocol_version = protocol_version
        session.server_capabilities = server_capabilities
        return session

    @property
    def upstream_session_id(self) -> str | None:
        """The server's own `Mcp-Session-Id` (HTTP, handshake era), None otherwise."""
        return getattr(self._transport, "session_id", None)

    async def listen(self) -> None:
        """Hold the server's GET stream open from now on (this process serves the client's GET
        stream); nothing when it already does, or over stdio (everything arrives anyway)."""
        if self._listener is None or not self.alive or self.era is not Era.HANDSHAKE:
            return
        if self._listening is not None and not self._listening.done():
            return
        await self._open_listener(self._listener)

    async def _negotiate(self, era: Era, timeout: float) -> None:
        """Modern era first (``server/discover``), the handshake when the server does not know it.

        Modern first, as the SDK's ``auto`` does: a server that speaks 2026-07-28 should be spoken
        to without a session (no session state upstream, no ping, no 404 re-opening). The probe
        costs one extra round trip only against handshake-only servers, and only when a session
        opens, which pooling makes rare.
        """
        if era is not Era.HANDSHAKE:
            try:
                probe_timeout = min(timeout, protocol.DISCOVER_PROBE_TIMEOUT)
                result = await self._discover(protocol.LATEST_MODERN_VERSION, probe_timeout)
                version = protocol.discover_version(result)
                if version:
                    self._adopt_modern(version, result)
                    return
                if era is Era.MODERN:
                    raise ProtocolError(
                        "server/discover names no modern version we speak",
                        server=self.server.name,
                    )
            except CallRejected as exc:
                if era is Era.MODERN or not protocol.falls_back_to_handshake(exc):
                    raise
            except ProtocolError as exc:
                # An HTTP 4xx without a JSON-RPC answer (server-everything: 400 "Server not
                # initialized") is a handshake-only server refusing the probe.
                if era is Era.MODERN or exc.delivered:
                    raise
            except UpstreamTimeout:
                # A handshake-only stdio server may ignore a method it does not know; over HTTP a
                # timeout is an outage, not an era verdict.
                if era is Era.MODERN or self.server.transport is not Transport.STDIO:
                    raise
        await self._initialize(timeout)

    async def _discover(self, version: str, timeout: float) -> JsonObject:
        self._transport.use(Era.MODERN, version)
        params = {"_meta": self._envelope_at(version)}
        return await self.request("server/discover", params, timeout=timeout)

    def _envelope_at(self, version: str) -> JsonObject:
        return {
            protocol.PROTOCOL_VERSION_META_KEY: version,
            protocol.CLIENT_INFO_META_KEY: self._client_info,
            protocol.CLIENT_CAPABILITIES_META_KEY: self._capabilities,
        }

    def _adopt_modern(self, version: str, result: JsonObject) -> None:
        self._transport.use(Era.MODERN, version)
        self._envelope = self._envelope_at(version)
        self.era = Era.MODERN
        self.protocol_version = version
        self.server_capabilities = _dict(result.get("capabilities"))
        self.server_info = _dict(_dict(result.get("_meta")).get(protocol.SERVER_INFO_META_KEY))
        self.instructions = str(result.get("instructions") or "")

    async def _initialize(self, timeout: float) -> None:
        self._transport.use(Era.HANDSHAKE, None)
        params = {
            "protocolVersion": self.handshake_version,
            "capabilities": self._capabilities,
            "clientInfo": self._client_info,
        }
        result = await self.request("initialize", params, timeout=timeout)
        version = result.get("protocolVersion")
        if version not in protocol.HANDSHAKE_PROTOCOL_VERSIONS:
            raise ProtocolError(
                f"initialize answered protocol version {version!r}, which we do not speak",
                server=self.server.name,
            )
        assert isinstance(version, str)  # noqa: S101  # narrows the type only
        self._transport.use(Era.HANDSHAKE, version)
        self.era = Era.HANDSHAKE
        self.protocol_version = version
        self.server_capabilities = _dict(result.get("capabilities"))
        self.server_info = _dict(result.get("serverInfo"))
        self.instructions = str(result.get("instructions") or "")
        if self._listener is not None and self._listen_at_start:
            await self._open_listener(self._listener)
        await self.notify("notifications/initialized", None)

    async def _open_listener(self, listener: Callable[[asyncio.Event], Awaitable[None]]) -> None:
        """Start the GET stream and wait (briefly) for its answer; close() stops it."""
        opened = asyncio.Event()
        self._listening = self._spawn(listener, opened)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LISTEN_OPEN_WAIT):
                await opened.wait()

    # ---------------------------------------------------------------- state

    @property
    def alive(self) -> bool:
        return not self._closed and self._transport.alive

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # ---------------------------------------------------------------- calls

    async def request(  # noqa: C901  # one branch per way a call can end, kept in order
        self,
        method: str,
        params: JsonObject | None,
        *,
        # Not asyncio.timeout() around the call: the session must know the deadline to raise
        # UpstreamTimeout (a server failure) and to abandon the call upstream.
        timeout: float,
        on_message: MessageHandler | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> JsonObject:
        """Send one request and return the server's ``result`` object.

        Raises ``CallRejected`` for a JSON-RPC error answer, ``UpstreamTimeout`` after
        ``timeout`` seconds, and the transport errors of `errors` otherwise. Cancelling the
        awaiting task abandons the call upstream (``notifications/cancelled``, or closing the
        response stream in the 2026 HTTP era).
        """
        if not self.alive:
            raise SessionGone("session is closed", server=self.server.name)
        request_id = self._ids.next()
        call = Call(request_id, on_message, headers)
        wire_params = params
        wire_token: Any = None
        if params is not None:
            meta = params.get("_meta")
            if isinstance(meta, dict):
                if "progressToken" in meta:
                    call.progress_token = wire_token = meta["progressToken"]
                    if self._rewrite_tokens:
                        # The request id is unique on this session, so it makes a unique token.
                        wire_token = request_id
                        meta = {**meta, "progressToken": request_id}
                        wire_params = {**params, "_meta": meta}
                    if self._maps_tokens:
                        self._by_token[wire_token] = call
                if self.era is Era.HANDSHAKE and protocol.has_envelope(meta):
                    # A 2026 client's envelope means nothing to a handshake-era server.
                    wire_params = {**params, "_meta": protocol.without_envelope(meta)}
        if self._envelope is not None:
            wire_params = protocol.with_envelope(wire_params, self._envelope)
        body = jsonrpc.encode_request(request_id, method, wire_params)
        self._in_flight += 1
        try:
            with deadline(timeout):
                response = await self._transport.roundtrip(call, body, method, wire_params)
        except TimeoutError:
            self._abandon(call, "timeout")
            raise UpstreamTimeout(
                f"{method} got no answer within {timeout:g}s", server=self.server.name
            ) from None
        except asyncio.CancelledError:
            self._abandon(call, "cancelled")
            raise
        finally:
            self._in_flight -= 1
            if wire_token is not None and self._maps_tokens:
                self._by_token.pop(wire_token, None)
            self.last_used = self._clock()
        result = response.get("result")
        if isinstance(result, dict):
            return result
        error = response.get("error")
        if isinstance(error, dict):
            raise CallRejected(error, server=self.server.name)
        raise ProtocolError(
            f"{method}: response has neither result nor error", server=self.server.name
        )

    async def notify(self, method: str, params: JsonObject | None) -> None:
        """Send a notification. The 2026 HTTP wire has none from client to server (the server
        drops them), so there it is skipped."""
        if self._envelope is not None:
            if self._transport.cancels_by_disconnect:
                logger.debug("%s: not sending %s on the 2026 HTTP wire", self.server.name, method)
                return
            params = protocol.with_meta(params, self._envelope)
        await self._transport.send(jsonrpc.encode_notification(method, params), method, params)

    async def ping(self, timeout: float) -> float:
        """Round-trip time in seconds of the era's liveness probe (``ping``; ``server/discover``
        in the modern era, which has no ping)."""
        started = self._clock()
        if self.era is Era.MODERN:
            await self.request("server/discover", None, timeout=timeout)
        else:
            await self.request("ping", None, timeout=timeout)
        return self._clock() - started

    async def close(self) -> None:
        """End the session upstream (DELETE / stop the process) and stop its background work.
        Idempotent; never raises for an upstream that is already gone."""
        if self._closed:
            return
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        try:
            await self._transport.close()
        except UpstreamError as exc:
            logger.debug("%s: close: %s", self.server.name, exc)

    async def detach(self) -> None:
        """Let go of a session another process also speaks on: stop its background work (the GET
        stream) without ending it upstream."""
        if self._closed:
            return
        self._closed = True
        for task in list(self._tasks):
            task.cancel()

    # ---------------------------------------------------------------- receive path

    def _abandon(self, call: Call, reason: str) -> None:
        """Tell the server we stopped waiting, unless dropping the exchange already did."""
        if self._transport.cancels_by_disconnect or not self.alive or self.era is Era.AUTO:
            return
        params: JsonObject = {"requestId": call.id, "reason": reason}
        self._spawn(self.notify, "notifications/cancelled", params)

    async def _deliver(self, message: JsonObject, call: Call | None) -> None:
        """Route a message from the server that is not the answer the transport waits for."""
        kind = jsonrpc.classify(message)
        if kind is Kind.NOTIFICATION:
            if message["method"] == "notifications/progress" and (
                call is not None or self._maps_tokens
            ):
                message, call = self._progress_owner(message, call)
                if call is None:
                    return  # progress for a call that already ended
            # (HTTP progress outside any call's stream carries its owner's own token: the
            # session's handler passes it on, as any session-level message.)
            handler = call.on_message if call is not None else self._on_event
            if handler is not None:
                try:
                    await handler(message)
                except Exception:
                    logger.exception(
                        "%s: handler for %s failed", self.server.name, message["method"]
                    )
        elif kind is Kind.REQUEST:
            self._spawn(self._answer, message, call)
        elif kind is Kind.RESPONSE:
            logger.debug(
                "%s: dropping a response nobody waits for: %r", self.server.name, message.get("id")
            )
        else:
            logger.warning("%s: dropping an invalid JSON-RPC message", self.server.name)

    def _progress_owner(
        self, message: JsonObject, call: Call | None
    ) -> tuple[JsonObject, Call | None]:
        if not self._maps_tokens:
            # HTTP: on the call's own stream, with the caller's own token
            return message, (call if call is not None and call.progress_token is not None else None)
        params = message.get("params")
        if not isinstance(params, dict):
            return message, None
        token = params.get("progressToken")
        owner = self._by_token.get(token) if isinstance(token, int | str) else None
        if owner is None or (call is not None and owner is not call):
            return message, None
        if not self._rewrite_tokens:
            return message, owner  # the token on the wire is the caller's own
        restored = {**params, "progressToken": owner.progress_token}
        return {**message, "params": restored}, owner

    async def _answer(self, message: JsonObject, call: Call | None) -> None:
        """Answer a server→client request under the server's own id."""
        request_id: RequestId = message["id"]
        method = message["method"]
        if method == "ping":
            body = jsonrpc.encode_result(request_id, {})
        else:
            handler = call.on_message if call is not None and call.on_message else self._on_event
            result: JsonObject | None = None
            body = b""
            if handler is not None:
                try:
                    result = await handler(message)
                except ClientRefused as refused:
                    body = jsonrpc.encode_error_object(request_id, refused.error)
                except Exception:
                    logger.exception("%s: handler for %s failed", self.server.name, method)
                    body = jsonrpc.encode_error(request_id, INTERNAL_ERROR, "client handler failed")
            if not body:
                body = (
                    jsonrpc.encode_result(request_id, result)
                    if result is not None
                    else jsonrpc.encode_error(
                        request_id, METHOD_NOT_FOUND, f"{method} not supported"
                    )
                )
        try:
            await self._transport.send(body, "", None)
        except UpstreamError as exc:
            logger.warning("%s: could not answer %s: %s", self.server.name, method, exc)

    def _spawn(self, work: Callable[..., Awaitable[None]], *args: Any) -> asyncio.Task[None]:
        """Run ``work(*args)`` in the background; close() cancels it. The coroutine is created
        inside the task so a task cancelled before it starts leaves nothing un-awaited."""

        async def run() -> None:
            try:
                await work(*args)
            except UpstreamError as exc:
                logger.debug("%s: background send failed: %s", self.server.name, exc)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _dict(value: Any) -> JsonObject:
    return value if isinstance(value, dict) else {}
