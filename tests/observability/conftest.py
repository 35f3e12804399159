"""Fixtures for traces and the audit trail: a real OTLP receiver, tracing wired to it, two
replicas of the fault-injecting upstream (one too slow for the pool's timeout), a live gateway."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Iterator

import pytest
from asgiref.sync import sync_to_async
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from audit.models import PoolAuditSettings
from balancing import observe
from balancing.audit import LOGGER_NAME, JsonFormatter, trail
from servers import services
from servers.models import Pool, Server
from tests.api.gateway import Gateway, add_key, serve_gateway
from tests.observability.receiver import Receiver, otlp_receiver
from tests.upstreams import procs

SLOW_MS = 2500.0  # the slow replica's delay: over the pool's call timeout, so a retry follows
CALL_TIMEOUT = 1.0


@pytest.fixture(scope="session")
def slow_replica() -> Iterator[procs.UpstreamProcess]:
    upstream = procs.start_faulty_http(name="slow", json_response=True, delay_ms=SLOW_MS)
    yield upstream
    upstream.stop()


def tracer_provider(endpoint: str) -> TracerProvider:
    """What `OTEL_EXPORTER_OTLP_ENDPOINT` would build, aimed at `endpoint`, exporting promptly."""
    provider = TracerProvider(resource=Resource.create({"service.name": "mcppool-test"}))
    exporter = OTLPSpanExporter(endpoint=endpoint, timeout=2)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=50))
    return provider


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with otlp_receiver() as found:
        yield found


@pytest.fixture
def tracing(receiver: Receiver) -> Iterator[TracerProvider]:
    provider = tracer_provider(receiver.url)
    observe.configure(provider, audit_log=False)
    yield provider
    observe.configure(None, audit_log=False)
    provider.shutdown()


def setup_pools(slow_url: str, fast_url: str) -> dict[str, str]:
    """`replicas`: the slow replica first (weight 9: round robin asks it first), then the fast
    one; `single`: the fast one alone, its calls stored with arguments up to 64 bytes."""
    pool = services.save(Pool(name="Replicas", slug="replicas", call_timeout=CALL_TIMEOUT))
    services.save(Server(pool=pool, name="slow", transport="streamable_http", url=slow_url,
                         weight=9))  # fmt: skip
    services.save(Server(pool=pool, name="fast", transport="streamable_http", url=fast_url))
    single = services.save(Pool(name="Single", slug="single"))
    services.save(Server(pool=single, name="fast", transport="streamable_http", url=fast_url))
    PoolAuditSettings.objects.create(pool=single, store_calls=True, payload_bytes=64)
    PoolAuditSettings.objects.create(pool=pool, store_calls=True, payload_bytes=0)
    return {
        "app": add_key("app", ["replicas", "single"]),
        "admin": add_key("admin", all_pools=True, is_admin=True),
    }


@pytest.fixture
async def gateway(
    slow_replica: procs.UpstreamProcess, faulty_json: procs.UpstreamProcess
) -> AsyncIterator[Gateway]:
    keys = await sync_to_async(setup_pools)(slow_replica.url, faulty_json.url)
    async with serve_gateway() as gw:
        gw.keys.update(keys)
        yield gw


@pytest.fixture
def audit_lines() -> Iterator[io.StringIO]:
    """The JSON audit stream, switched on and captured."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(LOGGER_NAME)
    logger.addHandler(handler)
    previous = trail.log_enabled
    trail.log_enabled = True
    yield stream
    trail.log_enabled = previous
    logger.removeHandler(handler)
