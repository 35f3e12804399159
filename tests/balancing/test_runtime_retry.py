"""Retry safety where it happens: the runtime, with a pool of three servers.

Server `first` is the only one of priority 0, so every call goes there first; it breaks after the
call was delivered (a connection reset mid-call). Whether the call is then sent to `second` or
`third` depends only on what the tool's annotations promise and on the pool's retry budget.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from balancing.engine.config import Health, PoolConfig, RetryPolicy, Snapshot
from balancing.engine.errors import UpstreamClosed
from balancing.engine.runtime import Runtime
from tests.helpers.fakes import Clock, FakeServers, fake_runtime, server

SCHEMA = {"type": "object"}
TOOLS = [
    {"name": "read", "inputSchema": SCHEMA, "annotations": {"readOnlyHint": True}},
    {"name": "idempotent", "inputSchema": SCHEMA, "annotations": {"idempotentHint": True}},
    {"name": "write", "inputSchema": SCHEMA, "annotations": {"readOnlyHint": False}},
    {"name": "plain", "inputSchema": SCHEMA},
]
NAMES = ("first", "second", "third")


StartRuntime = Callable[..., Awaitable[Runtime]]


@pytest.fixture
def servers() -> FakeServers:
    # every server lists the same tools; `first` resets every connection mid-call
    return FakeServers({name: TOOLS for name in NAMES}, broken={"first"})


@pytest.fixture
async def start(servers: FakeServers) -> AsyncIterator[StartRuntime]:
    """`await start(**pool_fields)`: a started runtime over `servers`, closed after the test."""
    started: list[Runtime] = []

    async def start_(**pool: Any) -> Runtime:
        configs = tuple(
            server(i, name, priority=0 if name == "first" else 1, health=Health.UP)
            for i, name in enumerate(NAMES, start=1)
        )
        runtime = fake_runtime(Clock(), servers=servers)
        started.append(runtime)
        pool.setdefault("retry_policy", RetryPolicy.SAFE)
        await runtime.start(Snapshot(1, (PoolConfig(id=1, slug="p", servers=configs, **pool),)))
        # as a client does before calling: the pool learns the tools' annotations from the list
        assert {t["name"] for t in await runtime.list_tools("p")} == {t["name"] for t in TOOLS}
        return runtime

    yield start_
    for runtime in started:
        await runtime.close(grace=0)


@pytest.mark.parametrize("tool", ["read", "idempotent"])
async def test_delivered_call_to_a_safe_tool_is_retried_on_another_server(
    servers: FakeServers, start: StartRuntime, tool: str
) -> None:
    runtime = await start()
    result = await runtime.call_tool("p", tool, {})
    # the call reached `first`, which failed it, and was answered by another server
    reached = servers.received(tool)
    assert reached[0] == "first"
    assert result["content"][0]["text"] in ("second", "third")
    assert reached == ["first", result["content"][0]["text"]]
    assert runtime.metrics.retries["p"] == 1


@pytest.mark.parametrize("tool", ["write", "plain"])
async def test_delivered_call_to_a_tool_with_side_effects_is_never_retried(
    servers: FakeServers, start: StartRuntime, tool: str
) -> None:
    runtime = await start()
    with pytest.raises(UpstreamClosed):
        await runtime.call_tool("p", tool, {})
    # the app sees the failure; no other server ran the call a second time
    assert servers.received(tool) == ["first"]
    assert runtime.metrics.retries["p"] == 0


async def test_retry_budget_refuses_a_retry_of_a_safe_tool(
    servers: FakeServers, start: StartRuntime
) -> None:
    # given a pool whose budget allows no retry in progress
    runtime = await start(retry_budget_percent=0.0, retry_budget_min=0)
    with pytest.raises(UpstreamClosed):
        await runtime.call_tool("p", "read", {})
    assert servers.received("read") == ["first"]
    assert runtime.metrics.retries_refused["p"] == 1


async def test_retry_policy_never_does_not_retry_a_safe_tool(
    servers: FakeServers, start: StartRuntime
) -> None:
    runtime = await start(retry_policy=RetryPolicy.NEVER)
    with pytest.raises(UpstreamClosed):
        await runtime.call_tool("p", "read", {})
    assert servers.received("read") == ["first"]
