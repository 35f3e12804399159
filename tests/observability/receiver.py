"""A real OTLP/HTTP trace receiver for tests and docs: aiohttp, protobuf decoded with
`opentelemetry-proto`, spans kept as plain dicts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.upstreams import procs

KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


@dataclass
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status_code: int  # 0 unset, 1 ok, 2 error
    status_message: str
    service: str

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


@dataclass
class Receiver:
    url: str  # the traces endpoint: .../v1/traces
    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0

    async def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], seconds: float = 15.0
    ) -> list[ReceivedSpan]:
        """The spans once `predicate` holds for them (waits on the condition, bounded)."""
        for _ in range(int(seconds / 0.05)):
            if predicate(self.spans):
                return self.spans
            await asyncio.sleep(0.05)
        raise AssertionError(f"spans never matched; got {[s.name for s in self.spans]}")

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.trace_id == trace_id]


def _value(value: dict[str, Any]) -> Any:
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in value:
            return value[key]
    if "intValue" in value:
        return int(value["intValue"])
    return value


def decode(body: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans: list[ReceivedSpan] = []
    for resource_spans in request.resource_spans:
        service = ""
        for attribute in resource_spans.resource.attributes:
            if attribute.key == "service.name":
                service = attribute.value.string_value
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                data = MessageToDict(span)
                attributes = {a["key"]: _value(a["value"]) for a in data.get("attributes", [])}
                spans.append(
                    ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=KINDS.get(span.kind, str(span.kind)),
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        attributes=attributes,
                        status_code=span.status.code,
                        status_message=span.status.message,
                        service=service,
                    )
                )
    return spans


@contextlib.asynccontextmanager
async def otlp_receiver() -> AsyncIterator[Receiver]:
    """Serve `POST /v1/traces` on a free local port in this event loop."""
    port = procs.free_port()
    receiver = Receiver(url=f"http://127.0.0.1:{port}/v1/traces")

    async def traces(request: web.Request) -> web.Response:
        receiver.requests += 1
        receiver.spans.extend(decode(await request.read()))
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield receiver
    finally:
        await runner.cleanup()


def tree(spans: list[ReceivedSpan]) -> list[tuple[int, ReceivedSpan]]:
    """`(depth, span)` depth-first, children by start time; roots are spans whose parent is not
    among `spans` (the client's span, for a call that brought a traceparent)."""
    ids = {s.span_id for s in spans}
    children: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        children.setdefault(span.parent_span_id, []).append(span)
    out: list[tuple[int, ReceivedSpan]] = []

    def walk(span: ReceivedSpan, depth: int) -> None:
        out.append((depth, span))
        for child in sorted(children.get(span.span_id, []), key=lambda s: s.start_ns):
            walk(child, depth + 1)

    for root in sorted((s for s in spans if s.parent_span_id not in ids), key=lambda s: s.start_ns):
        walk(root, 0)
    return out


SHOWN = ("mcp.method.name", "gen_ai.tool.name", "mcppool.pool", "mcppool.server",
         "mcppool.attempt", "mcppool.attempts", "mcppool.retry", "mcppool.outcome", "error.type",
         "mcppool.upstream.session", "server.address", "server.port", "network.transport",
         "mcp.protocol.version", "client.address", "jsonrpc.request.id")  # fmt: skip


def render(spans: list[ReceivedSpan]) -> str:
    """The spans as an indented tree: name, kind, duration, status and the telling attributes."""
    lines = []
    for depth, span in tree(spans):
        status = " ERROR" if span.status_code == 2 else ""
        lines.append(
            f"{'    ' * depth}{span.name}  [{span.kind}{status}]  {span.duration_ms:.1f} ms"
        )
        shown = {k: span.attributes[k] for k in SHOWN if k in span.attributes}
        for key, value in shown.items():
            lines.append(f"{'    ' * depth}    {key} = {value!r}")
    return "\n".join(lines)
