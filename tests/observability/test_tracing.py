"""Traces of calls through a live gateway, read back from a real OTLP/HTTP receiver."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import mcp_types as types
import orjson
import pytest
from asgiref.sync import sync_to_async
from mcp import Client
from opentelemetry.sdk.trace import TracerProvider

from balancing import observe
from balancing.engine.config import PoolConfig
from monitoring.probes import Prober
from tests.api.gateway import Gateway, add_key, add_pool
from tests.mcp.conftest import transport
from tests.observability.conftest import tracer_provider
from tests.observability.receiver import ReceivedSpan, Receiver, otlp_receiver
from tests.upstreams import procs

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.upstream]

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


async def _tools_known(gw: Gateway, pool: str) -> None:
    """The runtime has read the pool's tool list (annotations decide whether a call retries)."""
    live = gw.host.runtime.pools[pool]
    for _ in range(200):
        if "whoami" in live.tools:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the pool's tools were never listed")


async def _rest_whoami(gw: Gateway, pool: str, **headers: str) -> tuple[int, Any]:
    async with gw.http.post(
        f"{gw.url}/api/v1/pools/{pool}/tools/whoami/call",
        json={"arguments": {}},
        headers={**gw.auth(), **headers},
    ) as response:
        return response.status, await response.json()


def _gateway_spans(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    return [s for s in spans if s.trace_id == CLIENT_TRACE]


def _retried(spans: list[ReceivedSpan]) -> bool:
    return sum(s.kind == "CLIENT" for s in _gateway_spans(spans)) >= 2 and any(
        s.kind == "SERVER" for s in _gateway_spans(spans)
    )


async def test_trace_of_retried_rest_call_shows_both_attempts_under_the_clients_span(
    tracing: TracerProvider,
    receiver: Receiver,
    gateway: Gateway,
    faulty_json: procs.UpstreamProcess,
) -> None:
    # given: a pool whose first pick (the slow replica) times out on a read-only tool
    await _tools_known(gateway, "replicas")
    # when
    status, body = await _rest_whoami(gateway, "replicas", traceparent=TRACEPARENT)
    # then: the fast replica answered, after one retry
    assert status == 200, body
    answer = orjson.loads(body["content"][0]["text"])
    assert answer["name"] == faulty_json.name  # the fast replica's own name for itself
    spans = _gateway_spans(await receiver.wait_for(_retried))
    (server,) = [s for s in spans if s.kind == "SERVER"]
    assert server.name == "tools/call whoami"
    assert server.parent_span_id == CLIENT_SPAN  # the client's traceparent is the parent
    assert server.attributes["mcp.method.name"] == "tools/call"
    assert server.attributes["gen_ai.tool.name"] == "whoami"
    assert server.attributes["mcppool.attempts"] == 2
    children = sorted((s for s in spans if s.parent_span_id == server.span_id),
                      key=lambda s: s.start_ns)  # fmt: skip
    assert [s.name for s in children] == [
        "mcppool.pick",
        "tools/call whoami",
        "mcppool.pick",
        "tools/call whoami",
    ]
    first, second = children[1], children[3]
    assert first.kind == second.kind == "CLIENT"  # siblings, each an attempt
    assert first.attributes["mcppool.server"] == "slow"
    assert first.attributes["error.type"] == "timeout"
    assert first.status_code == 2
    assert second.attributes["mcppool.server"] == "fast"
    assert second.attributes["mcppool.outcome"] == "ok"
    assert second.status_code != 2
    assert children[2].attributes["mcppool.retry"] is True
    # the upstream saw the gateway's attempt span as its parent, in _meta and as a header
    expected = f"00-{CLIENT_TRACE}-{second.span_id}-01"
    assert answer["meta_traceparent"] == expected
    assert answer["header_traceparent"] == expected


async def test_trace_parent_comes_from_meta_on_the_mcp_endpoint(
    tracing: TracerProvider, receiver: Receiver, gateway: Gateway
) -> None:
    # given: a modern-era tools/call carrying the client's trace context in _meta
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {},
            "traceparent": TRACEPARENT}  # fmt: skip
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "whoami", "arguments": {}, "_meta": meta}}  # fmt: skip
    headers = {**gateway.auth(), "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call",
               "Mcp-Name": "whoami", "Accept": "application/json, text/event-stream"}  # fmt: skip
    # when
    async with gateway.http.post(f"{gateway.url}/mcp/single/", json=body, headers=headers) as r:
        assert r.status == 200
        answer = orjson.loads((await r.json())["result"]["content"][0]["text"])
    # then
    spans = _gateway_spans(
        await receiver.wait_for(lambda got: any(s.kind == "CLIENT" for s in _gateway_spans(got)))
    )
    (server,) = [s for s in spans if s.kind == "SERVER"]
    (attempt,) = [s for s in spans if s.kind == "CLIENT"]
    assert server.parent_span_id == CLIENT_SPAN
    assert server.attributes["jsonrpc.request.id"] == "7"
    assert server.attributes["mcppool.transport"] == "mcp"
    assert attempt.parent_span_id == server.span_id
    assert answer["meta_traceparent"] == f"00-{CLIENT_TRACE}-{attempt.span_id}-01"


async def test_calls_succeed_while_the_collector_is_down(gateway: Gateway) -> None:
    # given: tracing on, exporting to a port nobody listens on
    provider = tracer_provider(f"http://127.0.0.1:{procs.free_port()}/v1/traces")
    gateway.host.runtime.observer = observe.configure(provider)
    try:
        # when
        results = await asyncio.gather(*(_rest_whoami(gateway, "single") for _ in range(20)))
    finally:
        observe.configure(None)
        gateway.host.runtime.observer = observe.refresh()
        provider.shutdown()
    # then: every call answered
    assert [status for status, _ in results] == [200] * 20


async def test_config_reload_is_traced(
    tracing: TracerProvider, receiver: Receiver, gateway: Gateway
) -> None:
    # when
    await gateway.host.reload()
    # then
    spans = await receiver.wait_for(lambda got: any(s.name == "mcppool.config.reload" for s in got))
    (reload,) = [s for s in spans if s.name == "mcppool.config.reload"]
    assert reload.attributes["mcppool.config.version"] >= 1


async def test_receiver_decodes_what_the_sdk_exports() -> None:
    # a self-check of the test's own receiver: one span in, the same span out
    async with otlp_receiver() as receiver:
        provider = tracer_provider(receiver.url)
        with provider.get_tracer("t").start_as_current_span("hello", attributes={"n": 3}):
            pass
        spans = await receiver.wait_for(lambda got: len(got) == 1)
        provider.shutdown()
    assert (spans[0].name, spans[0].attributes["n"]) == ("hello", 3)


def _add_sticky_pool(url: str) -> str:
    add_pool("sticky", [("fast", url)], session_mode="sticky")
    return add_key("sticky-app", ["sticky"])


async def test_sticky_call_traces_its_attempt_on_the_bound_server(
    tracing: TracerProvider,
    receiver: Receiver,
    gateway: Gateway,
    faulty_json: procs.UpstreamProcess,
) -> None:
    # given: a client session bound to a server of a sticky pool
    secret = await sync_to_async(_add_sticky_pool)(faulty_json.url)
    await gateway.settle()
    url = f"{gateway.url}/mcp/sticky/"
    headers = {"Authorization": f"Bearer {secret}", "Accept": "application/json"}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "raw", "version": "1"}}}  # fmt: skip
    async with gateway.http.post(url, json=init, headers=headers) as response:
        assert response.status == 200
        headers["Mcp-Session-Id"] = response.headers["mcp-session-id"]
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "whoami", "arguments": {}}}  # fmt: skip
    # when
    traced = {**headers, "traceparent": TRACEPARENT}
    async with gateway.http.post(url, json=call, headers=traced) as r:
        answer = orjson.loads((await r.json())["result"]["content"][0]["text"])
    # then: the attempt is a child of the server span, on the bound server, and its parent upstream
    spans = _gateway_spans(
        await receiver.wait_for(lambda got: any(s.kind == "CLIENT" for s in _gateway_spans(got)))
    )
    (server,) = [s for s in spans if s.kind == "SERVER"]
    (attempt,) = [s for s in spans if s.kind == "CLIENT"]
    assert attempt.parent_span_id == server.span_id
    assert attempt.attributes["mcppool.server"] == "fast"
    assert "mcp.session.id" in server.attributes
    assert headers["Mcp-Session-Id"] not in str(server.attributes)  # only a hash of the id
    assert answer["meta_traceparent"] == f"00-{CLIENT_TRACE}-{attempt.span_id}-01"


async def test_health_probe_is_traced(
    tracing: TracerProvider, receiver: Receiver, faulty_json: procs.UpstreamProcess
) -> None:
    # given
    prober = Prober(keep_sessions=False)
    # when
    try:
        result = await prober.probe(PoolConfig(id=1, slug="probed"), faulty_json.config())
    finally:
        await prober.close()
    # then
    assert result.ok
    spans = await receiver.wait_for(lambda got: any(s.name == "mcppool.health.probe" for s in got))
    (probe,) = [s for s in spans if s.name == "mcppool.health.probe"]
    assert probe.attributes["mcppool.pool"] == "probed"
    assert probe.attributes["mcppool.ok"] is True


async def test_relayed_sampling_request_is_a_span_of_the_call(
    tracing: TracerProvider,
    receiver: Receiver,
    gateway: Gateway,
    faulty_sse: procs.UpstreamProcess,
) -> None:
    # given: a sticky pool whose tool asks the client for a sampling completion mid-call
    def add_relay_pool() -> str:
        add_pool("relay", [("sse", faulty_sse.url)], session_mode="sticky")
        return add_key("relay-app", ["relay"])

    gateway.keys["relay-app"] = await sync_to_async(add_relay_pool)()
    await gateway.settle()

    async def sample(context: Any, params: types.CreateMessageRequestParams) -> Any:
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="sampled"),
            model="test", stop_reason="endTurn",
        )  # fmt: skip

    # when
    client = Client(transport(gateway, "relay", "relay-app"), mode="legacy",
                    sampling_callback=sample)  # fmt: skip
    async with client as c:
        result = await c.call_tool("sample", {"prompt": "hi"})
    assert not result.is_error
    # then: the relayed request is a span inside the call's server span (each is exported when
    # it ends, the call's after the relayed request's, perhaps in a later batch: wait for both)
    spans = await receiver.wait_for(
        lambda got: (
            any(s.name == "sampling/createMessage" for s in got)
            and any(s.name == "tools/call sample" and s.kind == "SERVER" for s in got)
        )
    )
    (relay,) = [s for s in spans if s.name == "sampling/createMessage"]
    (server,) = [s for s in spans if s.name == "tools/call sample" and s.kind == "SERVER"]
    assert relay.trace_id == server.trace_id
    assert relay.parent_span_id == server.span_id
    assert relay.attributes["mcppool.relayed"] is True


def test_off_by_default_the_runtime_holds_no_observer(monkeypatch: pytest.MonkeyPatch) -> None:
    # given: no OTEL_* variables, no audit log, no pool auditing to the database
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    # when
    observe.configure_from_environment()
    # then: nothing wraps the hot path and the runtime's hooks are bare None checks
    assert observe.refresh() is None
    assert observe.observer() is None
