"""What a call did on its way through the runtime: OpenTelemetry spans, and a record for the audit.

Django-free. The runtime holds one optional `Observer` (`Runtime.observer`) and calls it at three
points: after each pick, around each upstream attempt, and (through `Attempt.session`) when an
attempt has its session. With tracing and auditing both off the observer is None, and the call
path pays a None check per point and nothing else.

Names and attributes follow OpenTelemetry's semantic conventions for MCP (`gen-ai/mcp.md`, status
development): span name `{mcp.method.name} {target}`, `mcp.method.name`, `gen_ai.tool.name`,
`gen_ai.operation.name = execute_tool`, `mcp.session.id`, `mcp.protocol.version`,
`network.transport`, `server.address`/`server.port`, `error.type` (`tool_error` for a result with
`isError`). What the conventions have no name for is `mcppool.*`. Trace context goes upstream in
`params._meta` (`traceparent`, `tracestate`, `baggage`, unprefixed, as SEP-414 says) and the HTTP
transport copies `traceparent` into an HTTP header as well.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from balancing.engine.balancer import Pick
from balancing.engine.config import PoolConfig, ServerConfig, Transport

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

JsonObject = dict[str, Any]

TRACER_NAME: Final = "mcppool"
# The W3C keys carried in `_meta` (SEP-414: unprefixed).
CONTEXT_KEYS: Final = ("traceparent", "tracestate", "baggage")
# Labels that end an attempt without a failure of the call.
_OK_LABELS: Final = frozenset({"ok"})


@dataclass(slots=True)
class CallRecord:
    """What the runtime did for the call in this context: the edge reads it for the audit."""

    server: str = ""  # the server of the last attempt (the one that answered, if any did)
    attempts: int = 0
    outcome: str = ""  # the last attempt's label: ok, tool_error, timeout, transport_error, ...


_current: ContextVar[CallRecord | None] = ContextVar("mcppool_call_record", default=None)


def current_record() -> CallRecord | None:
    return _current.get()


@contextmanager
def recording() -> Iterator[CallRecord]:
    """Collect what the runtime does for the call made inside this block."""
    record = CallRecord()
    token = _current.set(record)
    try:
        yield record
    finally:
        _current.reset(token)


def span_name(method: str, target: str | None) -> str:
    return f"{method} {target}" if target else method


def method_attributes(method: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The MCP attributes of a request (`mcp.method.name`, the tool, prompt or resource)."""
    attributes: dict[str, Any] = {"mcp.method.name": method}
    if params is None:
        return attributes
    if method == "tools/call" and isinstance(name := params.get("name"), str):
        attributes["gen_ai.tool.name"] = name
        attributes["gen_ai.operation.name"] = "execute_tool"
    elif method == "prompts/get" and isinstance(name := params.get("name"), str):
        attributes["gen_ai.prompt.name"] = name
    elif method.startswith("resources/") and isinstance(uri := params.get("uri"), str):
        attributes["mcp.resource.uri"] = uri
    return attributes


def target_of(method: str, params: Mapping[str, Any] | None) -> str | None:
    """The low-cardinality target of a span name: a tool's or a prompt's name."""
    if params is not None and method in ("tools/call", "prompts/get"):
        name = params.get("name")
        return name if isinstance(name, str) else None
    return None


def _server_attributes(server: ServerConfig) -> dict[str, Any]:
    attributes: dict[str, Any] = {"mcppool.server": server.name}
    if server.transport is Transport.STDIO:
        attributes["network.transport"] = "pipe"
        return attributes
    attributes["network.transport"] = "tcp"
    attributes["network.protocol.name"] = "http"
    parts = urlsplit(server.url)
    if parts.hostname:
        attributes["server.address"] = parts.hostname
        port = parts.port or (443 if parts.scheme == "https" else 80)
        attributes["server.port"] = port
    return attributes


def end_span(span: trace.Span, label: str, error: BaseException | None) -> None:
    """Close `span` with the conventions' error fields for `label` (an outcome label)."""
    span.set_attribute("mcppool.outcome", label)
    if label not in _OK_LABELS:
        code = getattr(error, "code", None) if error is not None else None
        span.set_attribute("error.type", str(code) if isinstance(code, int) else label)
        if isinstance(code, int):
            span.set_attribute("rpc.response.status_code", str(code))
        span.set_status(Status(StatusCode.ERROR, str(error) if error is not None else label))
    span.end()


class Attempt:
    """One upstream attempt of a call: its span (when tracing) and its line in the record."""

    __slots__ = ("params", "record", "span")

    def __init__(
        self, span: trace.Span | None, record: CallRecord | None, params: JsonObject | None
    ) -> None:
        self.span = span
        self.record = record
        self.params = params  # what to send: the caller's params with our span in `_meta`

    def session(self, session: Any) -> None:
        """The session the attempt got (a label of ours; the upstream's id is the upstream's)."""
        if self.span is not None and self.span.is_recording():
            self.span.set_attribute("mcppool.upstream.session", f"{id(session):x}")
            version = getattr(session, "protocol_version", "")
            if version:
                self.span.set_attribute("mcp.protocol.version", version)

    def end(self, label: str) -> None:
        if self.record is not None:
            self.record.outcome = label
        if self.span is not None:
            end_span(self.span, label, sys.exc_info()[1])


class Observer:
    """The runtime's one hook object; `tracer` None = audit records only, no spans."""

    def __init__(self, tracer: trace.Tracer | None) -> None:
        self.tracer = tracer

    @staticmethod
    def mark() -> int:
        return time.time_ns()

    def picked(
        self,
        mark: int,
        pool: PoolConfig,
        pick: Pick | None,
        *,
        retry: bool,
    ) -> None:
        """A pick happened between `mark` and now (`pick` None: nobody could take the call)."""
        if self.tracer is None:
            return
        span = self.tracer.start_span("mcppool.pick", start_time=mark)
        if span.is_recording():
            span.set_attribute("mcppool.pool", pool.slug)
            span.set_attribute("mcppool.strategy", str(pool.strategy))
            span.set_attribute("mcppool.retry", retry)
            if pick is not None:
                span.set_attribute("mcppool.server", pick.endpoint.config.name)
                span.set_attribute("mcppool.pick.panic", pick.panic)
                span.set_attribute("mcppool.pick.trial", pick.trial)
            else:
                span.set_attribute("error.type", "no_server")
                span.set_status(Status(StatusCode.ERROR, "no server could take the call"))
        span.end()

    def attempt(
        self, pool: PoolConfig, server: ServerConfig, method: str, params: JsonObject | None
    ) -> Attempt:
        record = _current.get()
        number = 1
        if record is not None:
            record.attempts += 1
            record.server = server.name
            number = record.attempts
        if self.tracer is None:
            return Attempt(None, record, params)
        span = self.tracer.start_span(
            span_name(method, target_of(method, params)), kind=SpanKind.CLIENT
        )
        if span.is_recording():
            span.set_attributes(method_attributes(method, params))
            span.set_attributes(_server_attributes(server))
            span.set_attribute("mcppool.pool", pool.slug)
            span.set_attribute("mcppool.attempt", number)
        return Attempt(span, record, with_context(params, span))

    @contextmanager
    def span(
        self, name: str, attributes: Mapping[str, Any] | None = None
    ) -> Iterator[trace.Span | None]:
        """An internal span around a block (config reloads, probes, relayed requests)."""
        if self.tracer is None:
            yield None
            return
        with self.tracer.start_as_current_span(name, attributes=attributes) as span:
            try:
                yield span
            except BaseException as exc:
                span.set_attribute("error.type", type(exc).__name__)
                raise


def with_context(params: JsonObject | None, span: trace.Span) -> JsonObject:
    """`params` with `span` as the trace context in `_meta` (the caller's own keys stay, a
    client's traceparent is replaced by ours: we are its child, the upstream ours)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    meta = params.get("_meta") if params else None
    merged = {**meta, **carrier} if isinstance(meta, dict) else carrier
    return {**(params or {}), "_meta": merged}


def context_from_meta(meta: Any) -> Any:
    """The OpenTelemetry context carried in a request's `_meta`, or None when it has none."""
    if not isinstance(meta, dict) or "traceparent" not in meta:
        return None
    carrier = {k: meta[k] for k in CONTEXT_KEYS if isinstance(meta.get(k), str)}
    return propagate.extract(carrier)


# ---- configuration from the standard OTEL_* environment variables ----------------------------


def tracing_wanted(environ: Mapping[str, str]) -> bool:
    """Traces are exported when an exporter is configured and the SDK is not disabled:
    `OTEL_TRACES_EXPORTER` names one (not `none`), or an OTLP endpoint is set."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def build_provider(environ: Mapping[str, str]) -> TracerProvider | None:
    """A tracer provider exporting in batches as the environment says, or None (tracing off).

    Everything else comes from the SDK's own reading of the environment: the service name
    (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`), the sampler (`OTEL_TRACES_SAMPLER`,
    `OTEL_TRACES_SAMPLER_ARG`), the endpoint, headers and timeout of the exporter, and the batch
    processor's queue and delays (`OTEL_BSP_*`). The batch processor drops spans when its queue is
    full and exports from its own thread, so a collector that is down never slows or fails a call.
    """
    if not tracing_wanted(environ):
        return None
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = environ.get(name, "").strip().lower()
        if protocol and protocol != "http/protobuf":
            raise ValueError(f"{name}={protocol!r}: mcppool exports OTLP over HTTP (http/protobuf)")
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",")]
    resource = Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME") or "mcppool"})
    provider = TracerProvider(resource=resource)
    for name in names:
        exporter: SpanExporter
        if name == "console":
            exporter = ConsoleSpanExporter()
        elif name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        else:
            raise ValueError(
                f"OTEL_TRACES_EXPORTER={name!r}: mcppool exports traces with otlp "
                "(OTLP over HTTP) or console"
            )
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider
