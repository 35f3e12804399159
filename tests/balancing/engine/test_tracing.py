"""The engine's tracing pieces without Django: when traces are on, what goes in `_meta`, and how an
attempt's span reports its server and outcome."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from balancing.engine import tracing
from balancing.engine.config import PoolConfig, ServerConfig, Transport
from balancing.engine.errors import CallRejected

POOL = PoolConfig(id=1, slug="p")
SERVER = ServerConfig(id=1, name="s1", transport=Transport.STREAMABLE_HTTP,
                      url="http://10.0.0.5:8123/mcp")  # fmt: skip
ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, False),
        (ENDPOINT, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://x:4318/v1/traces"}, True),
        ({**ENDPOINT, "OTEL_SDK_DISABLED": "true"}, False),
        ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
    ],
)
def test_tracing_wanted_follows_the_standard_variables(
    environ: dict[str, str], wanted: bool
) -> None:
    assert tracing.tracing_wanted(environ) is wanted
    provider = tracing.build_provider(environ)
    assert (provider is not None) is wanted
    if provider is not None:
        provider.shutdown()


def test_unknown_exporter_or_protocol_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="zipkin"):
        tracing.build_provider({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(ValueError, match="grpc"):
        tracing.build_provider({**ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})


@pytest.fixture
def spans() -> Iterator[tuple[tracing.Observer, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield tracing.Observer(provider.get_tracer("test")), exporter
    provider.shutdown()


def test_attempt_puts_its_span_in_meta_and_keeps_the_callers_keys(
    spans: tuple[tracing.Observer, InMemorySpanExporter],
) -> None:
    observer, _ = spans
    client = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    params: dict[str, Any] = {"name": "echo", "_meta": {"progressToken": 5, "traceparent": client}}
    # when
    attempt = observer.attempt(POOL, SERVER, "tools/call", params)
    # then: our span replaces the client's traceparent; the caller's other keys and dict stay
    assert attempt.span is not None
    span_id = f"{attempt.span.get_span_context().span_id:016x}"
    assert attempt.params is not None
    assert attempt.params["_meta"]["progressToken"] == 5
    assert attempt.params["_meta"]["traceparent"].split("-")[2] == span_id
    assert params["_meta"]["traceparent"] == client
    attempt.end("ok")


def test_attempt_span_reports_server_and_rpc_error(
    spans: tuple[tracing.Observer, InMemorySpanExporter],
) -> None:
    observer, exporter = spans
    # given
    with tracing.recording() as record:
        attempt = observer.attempt(POOL, SERVER, "tools/call", {"name": "echo"})
        # when: the upstream answered with a JSON-RPC error
        try:
            raise CallRejected({"code": -32602, "message": "bad"}, server="s1")
        except CallRejected:
            attempt.end("rejected")
    # then
    (span,) = exporter.get_finished_spans()
    attributes = dict(span.attributes or {})
    assert span.name == "tools/call echo"
    assert attributes["server.address"] == "10.0.0.5"
    assert attributes["server.port"] == 8123
    assert attributes["error.type"] == "-32602"
    assert attributes["rpc.response.status_code"] == "-32602"
    assert span.status.status_code is StatusCode.ERROR
    assert (record.server, record.attempts, record.outcome) == ("s1", 1, "rejected")


def test_context_from_meta_reads_the_clients_traceparent() -> None:
    meta = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    context = tracing.context_from_meta(meta)
    from opentelemetry import trace

    parent = trace.get_current_span(context).get_span_context()
    assert f"{parent.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert tracing.context_from_meta({"progressToken": 1}) is None
