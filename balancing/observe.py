"""Traces and the audit trail at the gateway's edge: one wrapper around the hot-path handlers.

The router hands a request to `serve` instead of the handler when tracing or auditing is on
(`observer()` is not None); with both off the hot path is untouched. `serve` watches the body as the
handler reads it (so the handler's checks still come first: an unauthenticated client never makes
the gateway read its body), and once it is read

- opens the gateway's SERVER span, `{mcp.method.name} {tool}`, starting when the request arrived,
  whose parent is the client's trace context: `params._meta.traceparent` first (MCP's own), else
  the HTTP `traceparent` header. The runtime's pick and attempt spans are its children
  (`balancing.engine.tracing`);
- watches what the handler sends (status, bytes, the final JSON-RPC message or REST body) to tell
  the outcome, and after a tool call emits one `AuditRecord` (`balancing.audit`).

Config reloads and health probes get spans through `span(...)` and `probed(...)`.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Final

import orjson
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from balancing.api.http import Message, Receive, Scope, Send
from balancing.audit import AuditRecord, cap_payload, trail
from balancing.engine import tracing
from balancing.engine.config import PoolConfig, ServerConfig
from balancing.engine.tracing import Observer
from balancing.keys import bearer_secret

Handler = Callable[[Scope, Receive, Send], Awaitable[Any]]

REST: Final = "rest"
MCP: Final = "mcp"
_RESPONSE_KEEP: Final = 1 << 20  # bytes of an answer kept to read its outcome (and the result)


class _State:
    configured = False
    tracer: trace.Tracer | None = None
    provider: Any = None  # the SDK's TracerProvider, when tracing
    observer: Observer | None = None


_state = _State()


def observer() -> Observer | None:
    """The process's observer; None while tracing and auditing are both off."""
    if not _state.configured:
        configure_from_environment()
    return _state.observer


def configure(provider: Any = None, *, audit_log: bool | None = None) -> Observer | None:
    """Install tracing (`provider`: a TracerProvider, or None for none) and the audit log flag."""
    if audit_log is not None:
        trail.log_enabled = audit_log
    _state.configured = True
    _state.provider = provider
    _state.tracer = provider.get_tracer(tracing.TRACER_NAME) if provider is not None else None
    return _update()


def _update() -> Observer | None:
    wanted = _state.tracer is not None or trail.active
    if not wanted:
        _state.observer = None
    elif _state.observer is None or _state.observer.tracer is not _state.tracer:
        _state.observer = Observer(_state.tracer)
    return _state.observer


def configure_from_environment() -> Observer | None:
    """Tracing from the standard `OTEL_*` variables; the audit log from `MCPPOOL_AUDIT_LOG`.
    Raises `ImproperlyConfigured` for a variable it cannot honour."""
    try:
        provider = tracing.build_provider(os.environ)
    except ValueError as exc:
        raise ImproperlyConfigured(str(exc)) from None
    return configure(provider, audit_log=settings.MCPPOOL_AUDIT_LOG)


def refresh() -> Observer | None:
    """Re-read what the audit sinks want (sync: the database sink reads its pool settings) and
    return the observer the runtime should now hold. The host calls it on start and each reload."""
    if not _state.configured:
        configure_from_environment()
    trail.refresh()
    return _update()


def span(
    name: str, attributes: Mapping[str, Any] | None = None
) -> AbstractContextManager[trace.Span | None]:
    """An internal span (config reload, health probe) when tracing; nothing otherwise."""
    obs = observer()
    if obs is None or obs.tracer is None:
        return nullcontext()
    return obs.span(name, attributes)


def probed(pool: PoolConfig, server: ServerConfig, ok: bool, seconds: float, error: str) -> None:
    """A health probe of `server` that took `seconds` ended now: its span, when tracing."""
    obs = observer()
    if obs is None or obs.tracer is None:
        return
    end = time.time_ns()
    span = obs.tracer.start_span(
        "mcppool.health.probe",
        start_time=end - int(seconds * 1e9),
        attributes={"mcppool.pool": pool.slug, "mcppool.server": server.name, "mcppool.ok": ok},
    )
    if not ok:
        span.set_attribute("error.type", "probe_failed")
        span.set_status(Status(StatusCode.ERROR, error))
    span.end(end_time=end)


def flush() -> None:
    """Write the audit records still buffered (sync; the host calls it when it stops). Spans
    still queued are the SDK's: it exports them at exit, bounded by the exporter's timeout."""
    trail.flush()


async def serve_rest(
    obs: Observer, slug: str, tool: str, scope: Scope, receive: Receive, send: Send
) -> None:
    """`serve` for the REST tool call of `tool` in pool `slug`."""
    from balancing.api import call  # not at import time: call → access → host → this module

    async def handle(scope: Scope, receive: Receive, send: Send) -> None:
        await call.handle(scope, receive, send, slug, tool)

    await serve(obs, REST, handle, scope, receive, send, pool=slug, tool=tool)


# ---- the wrapper --------------------------------------------------------------------------------


class _Exchange:
    """What one request brought and what its answer was, as seen on the wire."""

    __slots__ = ("bytes_in", "bytes_out", "chunks", "kept", "status")

    def __init__(self) -> None:
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.chunks: list[bytes] = []
        self.kept = 0

    def body(self) -> bytes:
        return b"".join(self.chunks)


def _parent_context(scope: Scope, meta: Any) -> Any:
    parent = tracing.context_from_meta(meta)
    if parent is not None:
        return parent
    carrier = {}
    for name, value in scope["headers"]:
        if name in (b"traceparent", b"tracestate", b"baggage"):
            carrier[name.decode()] = value.decode("latin-1")
    return propagate.extract(carrier) if carrier else None


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return ""


class _Call:
    """One hot-path request while it runs. Its span starts once the handler has read the body
    (after the handler's own checks: an unauthenticated client still never makes the gateway read
    it), because a trace context in `_meta` decides the span's parent."""

    __slots__ = ("exchange", "message", "method", "obs", "pool", "scope", "span", "started_ns",
                 "token", "tool", "transport")  # fmt: skip

    def __init__(self, obs: Observer, transport: str, scope: Scope, pool: str, tool: str) -> None:
        self.obs = obs
        self.transport = transport
        self.scope = scope
        self.pool = pool
        self.tool = tool
        self.method = "tools/call" if transport == REST else ""
        self.message: Any = None
        self.exchange = _Exchange()
        self.span: trace.Span | None = None
        self.token: Any = None
        self.started_ns = time.time_ns()

    def receive(self, receive: Receive) -> Receive:
        chunks: list[bytes] = []

        async def received() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                self.exchange.bytes_in += len(chunk)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    self.body_read(b"".join(chunks))
            return message

        return received

    def body_read(self, body: bytes) -> None:
        self.message = _json(body)
        params = self.params
        if self.transport == MCP:
            message = self.message if isinstance(self.message, dict) else {}
            method = message.get("method")
            # notifications and a client's answers are no calls of their own
            self.method = method if isinstance(method, str) and "id" in message else ""
            self.tool = tracing.target_of(self.method, params) or ""
        if self.method and self.obs.tracer is not None:
            span = self.start_span(params.get("_meta") if params else None)
            # Set in the handler's own task (this runs inside its `receive()`): the runtime's
            # spans for the call become this span's children.
            self.token = otel_context.attach(trace.set_span_in_context(span))

    @property
    def params(self) -> dict[str, Any] | None:
        params = self.message.get("params") if isinstance(self.message, dict) else None
        return params if isinstance(params, dict) else None

    def start_span(self, meta: Any) -> trace.Span:
        assert self.obs.tracer is not None  # noqa: S101  # narrows the type only
        self.span = span = self.obs.tracer.start_span(
            tracing.span_name(self.method, self.tool or None),
            context=_parent_context(self.scope, meta),
            kind=SpanKind.SERVER,
            start_time=self.started_ns,
        )
        if span.is_recording():
            # REST names its tool in the path: the same attributes as MCP's `params.name`
            params = self.params if self.transport == MCP else {"name": self.tool}
            span.set_attributes(
                _server_span_attributes(self.scope, self.transport, self.method, params, self.pool)
            )
            if isinstance(self.message, dict) and "id" in self.message:
                span.set_attribute("jsonrpc.request.id", str(self.message["id"]))
        return span


async def serve(
    obs: Observer, transport: str, handler: Handler, scope: Scope, receive: Receive, send: Send,
    *, pool: str = "", tool: str = "",
) -> None:  # fmt: skip
    """Run `handler` for one hot-path request inside its server span, then audit a tool call."""
    if scope.get("method") != "POST":
        await handler(scope, receive, send)
        return
    started = time.perf_counter()
    at = time.time()
    if transport == MCP:
        pool = scope["path"][len("/mcp/") :].strip("/")
    call = _Call(obs, transport, scope, pool, tool)
    exchange = call.exchange
    try:
        with tracing.recording() as record:
            await handler(scope, call.receive(receive), _watch(send, exchange))
    finally:
        if call.token is not None:
            otel_context.detach(call.token)
        elif call.method and obs.tracer is not None:
            call.start_span(None)  # refused before its body was read: a span all the same
        audited = call.method == "tools/call" and trail.active
        recording = call.span is not None and call.span.is_recording()
        # Reading the answer is for the audit and a sampled span; an unsampled call skips it.
        outcome, answer = _outcome(transport, exchange) if audited or recording else ("", None)
        if call.span is not None:
            _end_server_span(call.span, outcome, exchange.status, record)
    if audited:
        latency_ms = (time.perf_counter() - started) * 1000.0
        request = call.params if transport == MCP else call.message
        trail.emit(
            _call_record(scope, transport, at, call.pool, call.tool, record, outcome, exchange,
                         latency_ms, call.span, request, answer)
        )  # fmt: skip


def _watch(send: Send, exchange: _Exchange) -> Send:
    async def watched(message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            exchange.status = int(message["status"])
        elif kind == "http.response.body":
            chunk = message.get("body", b"")
            exchange.bytes_out += len(chunk)
            if chunk:
                if exchange.kept + len(chunk) > _RESPONSE_KEEP:
                    exchange.chunks = [chunk]  # keep the tail: the last message says how it ended
                    exchange.kept = len(chunk)
                else:
                    exchange.chunks.append(chunk)
                    exchange.kept += len(chunk)
        await send(message)

    return watched


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None


def _last_sse_data(body: bytes) -> Any:
    for line in reversed(body.split(b"\n")):
        if line.startswith(b"data:"):
            return _json(line[5:].strip())
    return None


def _outcome(transport: str, exchange: _Exchange) -> tuple[str, Any]:
    """`(outcome, result)` from the answer: ok, tool_error or the error's stable code."""
    body = exchange.body()
    answer = _json(body)
    if answer is None and b"data:" in body:
        answer = _last_sse_data(body)
    if not isinstance(answer, dict):
        return ("ok" if 200 <= exchange.status < 300 else f"http_{exchange.status}"), None
    if transport == MCP and "jsonrpc" in answer:
        error = answer.get("error")
        if isinstance(error, dict):
            data = error.get("data")
            code = data.get("code") if isinstance(data, dict) else None
            return (str(code) if code else f"rpc_{error.get('code')}"), None
        answer = answer.get("result")
    elif "error" in answer and exchange.status >= 400:
        error = answer["error"]
        return (str(error.get("code")) if isinstance(error, dict) else "error"), None
    if isinstance(answer, dict) and answer.get("isError") is True:
        return "tool_error", answer
    return "ok", answer


def _server_span_attributes(
    scope: Scope, transport: str, method: str, params: Mapping[str, Any] | None, pool: str
) -> dict[str, Any]:
    attributes = tracing.method_attributes(method, params)
    attributes["mcppool.pool"] = pool
    attributes["mcppool.transport"] = transport
    attributes["network.transport"] = "tcp"
    attributes["network.protocol.name"] = "http"
    attributes["url.path"] = scope["path"]
    client = scope.get("client")
    if client:
        attributes["client.address"] = client[0]
        attributes["client.port"] = client[1]
    session = _header(scope, b"mcp-session-id")
    if session:
        attributes["mcp.session.id"] = _session_hash(session)
    version = _header(scope, b"mcp-protocol-version")
    if version:
        attributes["mcp.protocol.version"] = version
    return attributes


def _end_server_span(
    span: trace.Span, outcome: str, status: int, record: tracing.CallRecord
) -> None:
    if span.is_recording():
        span.set_attribute("http.response.status_code", status)
        span.set_attribute("mcppool.attempts", record.attempts)
        if record.server:
            span.set_attribute("mcppool.server", record.server)
        span.set_attribute("mcppool.outcome", outcome)
        if outcome != "ok":
            span.set_attribute("error.type", outcome)
            span.set_status(Status(StatusCode.ERROR, outcome))
    span.end()


def _session_hash(session_id: str) -> str:
    # The id lets its holder continue the session: only a hash goes into traces and audit rows.
    return hashlib.sha256(session_id.encode()).hexdigest()[:16]


def _key_of(scope: Scope) -> tuple[str, str]:
    """`(name, prefix)` of the presented API key (the name only once it is known: after auth)."""
    from balancing.host import get_host

    secret = bearer_secret(_header(scope, b"authorization"))
    keys = get_host().keys
    prefix = keys.prefix_of(secret) if secret else None
    if prefix is None:
        return "", ""
    record = keys.get(prefix)
    return (record.name if record is not None else ""), prefix


def _call_record(
    scope: Scope,
    transport: str,
    at: float,
    pool: str,
    tool: str,
    record: tracing.CallRecord,
    outcome: str,
    exchange: _Exchange,
    latency_ms: float,
    span: trace.Span | None,
    request: Any,
    answer: Any,
) -> AuditRecord:
    key_name, key_prefix = _key_of(scope)
    client = scope.get("client")
    session = _header(scope, b"mcp-session-id")
    entry = AuditRecord(
        kind="tool_call",
        at=at,
        transport=transport,
        key_name=key_name,
        key_prefix=key_prefix,
        pool=pool,
        tool=tool,
        server=record.server,
        attempts=record.attempts,
        outcome=outcome,
        status=exchange.status,
        latency_ms=round(latency_ms, 3),
        bytes_in=exchange.bytes_in,
        bytes_out=exchange.bytes_out,
        client_address=client[0] if client else "",
        session=_session_hash(session) if session else "",
    )
    if span is not None:
        context = span.get_span_context()
        if context.is_valid:
            entry.trace_id = f"{context.trace_id:032x}"
    cap = trail.payload_cap(pool)
    if cap:
        arguments = request.get("arguments") if isinstance(request, dict) else None
        entry.arguments = cap_payload(arguments, cap)
        entry.result = cap_payload(answer, cap)
    return entry
