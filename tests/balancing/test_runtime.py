"""The runtime against real upstream processes: pooling, balancing, failures, config diffs."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import replace
from typing import Any

import pytest

from balancing.engine.config import (
    AdminState,
    Era,
    PoolConfig,
    ServerConfig,
    Snapshot,
    Strategy,
    Transport,
)
from balancing.engine.errors import UpstreamClosed, UpstreamRefused, UpstreamTimeout
from balancing.engine.request_state import InvalidState, StateSealer
from balancing.engine.runtime import NoHealthyServer, Runtime, UnknownPool
from tests.helpers.wait import wait_until
from tests.upstreams import procs

pytestmark = pytest.mark.upstream


def text_of(result: dict[str, Any]) -> str:
    return "".join(c.get("text", "") for c in result.get("content", []) if c.get("type") == "text")


def whoami(result: dict[str, Any]) -> str:
    return str(json.loads(text_of(result))["name"])


@pytest.fixture(scope="module")
def replicas() -> Iterator[list[procs.UpstreamProcess]]:
    started = [procs.start_faulty_http(name=f"r{i}", json_response=True) for i in range(3)]
    yield started
    for p in started:
        p.stop()


def pool_of(servers: list[ServerConfig], **knobs: Any) -> PoolConfig:
    return PoolConfig(id=1, slug="p", servers=tuple(servers), **knobs)


def http_servers(replicas: list[procs.UpstreamProcess], n: int = 3) -> list[ServerConfig]:
    return [replace(r.config(server_id=i + 1), name=r.name) for i, r in enumerate(replicas[:n])]


@pytest.fixture
async def runtime() -> AsyncIterator[Runtime]:
    rt = Runtime()
    yield rt
    await rt.close(grace=1)


async def test_runtime_round_robin_spreads_calls_over_replicas(
    runtime: Runtime, replicas: list[procs.UpstreamProcess]
) -> None:
    await runtime.start(Snapshot(1, (pool_of(http_servers(replicas)),)))
    answers = Counter([whoami(await runtime.call_tool("p", "whoami", {})) for _ in range(30)])
    assert answers == {"r0": 10, "r1": 10, "r2": 10}


async def test_runtime_hundreds_of_concurrent_calls_get_their_own_answers(
    runtime: Runtime, replicas: list[procs.UpstreamProcess]
) -> None:
    pool = pool_of(http_servers(replicas, 2), sessions_per_server=2, calls_per_session=8)
    await runtime.start(Snapshot(1, (pool,)))

    async def call(i: int) -> str:
        return text_of(await runtime.call_tool("p", "echo", {"text": f"caller-{i}"}))

    answers = await asyncio.gather(*(call(i) for i in range(400)))
    assert answers == [f"caller-{i}" for i in range(400)]
    live = runtime.pool("p")
    for server_id, sp in live.sessions.items():
        counts = sp.counts()
        assert counts["idle"] + counts["busy"] + counts["retiring"] <= 2
        assert live.endpoints[server_id].stats.in_flight == 0  # every call gave its slot back


async def test_runtime_cancelled_call_frees_its_slot(
    runtime: Runtime, replicas: list[procs.UpstreamProcess]
) -> None:
    pool = pool_of(http_servers(replicas, 1), sessions_per_server=1, calls_per_session=1)
    await runtime.start(Snapshot(1, (pool,)))
    task = asyncio.create_task(runtime.call_tool("p", "slow", {"seconds": 30}))
    await wait_until(lambda: runtime.pool("p").sessions[1].in_flight == 1)  # the call is out
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert text_of(await runtime.call_tool("p", "echo", {"text": "after"})) == "after"
    assert runtime.pool("p").sessions[1].in_flight == 0


async def test_runtime_unreachable_replica_call_is_retried_on_another(
    runtime: Runtime, replicas: list[procs.UpstreamProcess]
) -> None:
    dead = ServerConfig(
        id=9, name="dead", transport=http_servers(replicas)[0].transport,
        url=f"http://127.0.0.1:{procs.free_port()}/mcp",
    )  # fmt: skip
    pool = pool_of([dead, *http_servers(replicas, 1)])
    await runtime.start(Snapshot(1, (pool,)))
    results = [await runtime.call_tool("p", "echo", {"text": str(i)}) for i in range(6)]
    assert [text_of(r) for r in results] == [str(i) for i in range(6)]
    assert runtime.metrics.retries["p"] >= 1  # the calls that picked `dead` went elsewhere


async def test_runtime_forgotten_session_reinitializes_transparently(
    runtime: Runtime, replicas: list[procs.UpstreamProcess]
) -> None:
    server = replace(http_servers(replicas, 1)[0], era=Era.HANDSHAKE)  # sessions exist only there
    await runtime.start(Snapshot(1, (pool_of([server], sessions_per_server=1),)))
    await runtime.list_tools("p")  # upkeep's first tool listing done: it won't meet the 404 first
    await runtime.call_tool("p", "forget_sessions", {})  # the server now answers 404 for us
    result = await runtime.call_tool("p", "echo", {"text": "still here"})
    assert text_of(result) == "still here"
    assert runtime.metrics.reinitialized[("p", "r0")] == 1


async def test_runtime_unknown_pool_is_refused(runtime: Runtime) -> None:
    await runtime.start(Snapshot(1, ()))
    with pytest.raises(UnknownPool):
        await runtime.call_tool("nope", "echo", {})


async def test_runtime_drained_server_takes_no_new_calls(
    runtime: Runtime, replicas: list[procs.UpstreamProcess]
) -> None:
    servers = http_servers(replicas, 2)
    await runtime.start(Snapshot(1, (pool_of(servers),)))
    drained = [servers[0], replace(servers[1], state=AdminState.DRAINING)]
    await runtime.apply(Snapshot(2, (pool_of(drained),)))
    answers = {whoami(await runtime.call_tool("p", "whoami", {})) for _ in range(10)}
    assert answers == {"r0"}


async def test_runtime_removed_server_finishes_calls_in_flight(
    runtime: Runtime, replicas: list[procs.UpstreamProcess]
) -> None:
    servers = http_servers(replicas, 2)
    await runtime.start(Snapshot(1, (pool_of(servers, strategy=Strategy.ROUND_ROBIN),)))
    # Start slow calls on both servers, then remove the second server from the config.
    slow = [asyncio.create_task(runtime.call_tool("p", "slow", {"seconds": 0.5})) for _ in range(4)]
    await asyncio.sleep(0.1)
    await runtime.apply(Snapshot(2, (pool_of(servers[:1]),)))
    results = await asyncio.gather(*slow)
    assert all(not r.get("isError") for r in results)
    assert set(runtime.pool("p").endpoints) == {1}
    answers = {whoami(await runtime.call_tool("p", "whoami", {})) for _ in range(4)}
    assert answers == {"r0"}


async def test_runtime_added_server_opens_sessions_and_takes_calls(
    runtime: Runtime, replicas: list[procs.UpstreamProcess]
) -> None:
    servers = http_servers(replicas, 2)
    await runtime.start(Snapshot(1, (pool_of(servers[:1], slow_start_window=0.0),)))
    await runtime.apply(Snapshot(2, (pool_of(servers, slow_start_window=0.0),)))
    await runtime.maintain()
    counts = runtime.pool("p").sessions[2].counts()
    assert counts["idle"] + counts["busy"] == 2  # opened ahead of need (K = 2)
    answers = Counter([whoami(await runtime.call_tool("p", "whoami", {})) for _ in range(10)])
    assert answers["r1"] == 5


async def test_runtime_tool_only_on_some_servers_routes_there(runtime: Runtime) -> None:
    time_server = procs.time_stdio_config(server_id=1)
    faulty = procs.faulty_stdio_config(server_id=2)
    await runtime.start(Snapshot(1, (pool_of([time_server, faulty]),)))
    names = {t["name"] for t in await runtime.list_tools("p")}
    assert {"get_current_time", "echo"} <= names
    for _ in range(4):
        result = await runtime.call_tool("p", "get_current_time", {"timezone": "UTC"})
        assert not result.get("isError")
        assert "UTC" in text_of(result)
    with pytest.raises(NoHealthyServer, match="offering tool 'nope'"):
        await runtime.call_tool("p", "nope", {})


async def test_runtime_stdio_process_killed_is_replaced(runtime: Runtime) -> None:
    pool = pool_of([procs.faulty_stdio_config(server_id=1)], sessions_per_server=1)
    await runtime.start(Snapshot(1, (pool,)))
    first = json.loads(text_of(await runtime.call_tool("p", "whoami", {})))["pid"]
    with pytest.raises(UpstreamClosed):
        await runtime.call_tool("p", "crash", {})  # the call that killed it fails (one server)
    second = json.loads(text_of(await runtime.call_tool("p", "whoami", {})))["pid"]
    assert second != first
    assert not _is_child_zombie(first)  # the dead child was reaped


async def test_runtime_close_leaves_no_child_process() -> None:
    rt = Runtime()
    await rt.start(Snapshot(1, (pool_of([procs.faulty_stdio_config(server_id=1)]),)))
    pid = json.loads(text_of(await rt.call_tool("p", "whoami", {})))["pid"]
    await rt.close(grace=1)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def _is_child_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] == "Z"
    except FileNotFoundError:
        return False


async def test_runtime_undelivered_retries_do_not_spend_the_retry_budget(
    runtime: Runtime, replicas: list[procs.UpstreamProcess]
) -> None:
    # given a pool whose retry budget allows no retries at all, and a replica that refuses
    dead = replace(http_servers(replicas, 1)[0], id=9, name="dead",
                   url=f"http://127.0.0.1:{procs.free_port()}/mcp")  # fmt: skip
    pool = pool_of([dead, *http_servers(replicas, 1)], retry_budget_percent=0, retry_budget_min=0)
    await runtime.start(Snapshot(1, (pool,)))
    # when many calls run at once, some picking the refusing replica
    results = await asyncio.gather(
        *(runtime.call_tool("p", "echo", {"text": str(i)}) for i in range(40))
    )
    # then every call succeeds: a call that reached no server is always sent elsewhere
    assert [text_of(r) for r in results] == [str(i) for i in range(40)]
    assert runtime.metrics.retries["p"] >= 1
    assert runtime.metrics.retries_refused["p"] == 0


# ---- one call path, client faults, multi-round-trip state (fake upstream sessions) ------------


class FakeUpstream:
    """An upstream session whose answers the test decides; remembers what it was sent."""

    def __init__(self, server: ServerConfig, answer: Any) -> None:
        self.server = server
        self.answer = answer
        self.sent: list[tuple[str, dict[str, Any] | None]] = []
        self.alive = True

    async def request(
        self,
        method: str,
        params: dict[str, Any] | None,
        *,
        timeout: float,
        on_message: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        self.sent.append((method, params))
        result: dict[str, Any] = await self.answer(self.server, method, params)
        return result

    async def ping(self, timeout: float) -> float:
        return 0.0

    async def close(self) -> None:
        self.alive = False


def fake_servers(n: int = 2) -> list[ServerConfig]:
    return [
        ServerConfig(
            id=i + 1,
            name=f"s{i + 1}",
            transport=Transport.STREAMABLE_HTTP,
            url=f"http://127.0.0.1:1/{i}",
        )
        for i in range(n)
    ]


async def fake_runtime(answer: Any, n: int = 2, **knobs: Any) -> tuple[Runtime, list[FakeUpstream]]:
    opened: list[FakeUpstream] = []

    async def open_session(pool: PoolConfig, server: ServerConfig) -> FakeUpstream:
        session = FakeUpstream(server, answer)
        opened.append(session)
        return session

    runtime = Runtime(open_session=open_session, sealer=StateSealer(["test key"]))
    await runtime.start(Snapshot(1, (pool_of(fake_servers(n), **knobs),)))
    return runtime, opened


async def test_runtime_bound_session_failures_eject_its_server_and_are_labelled() -> None:
    async def hangs(server: ServerConfig, method: str, params: Any) -> dict[str, Any]:
        raise UpstreamTimeout("no answer", server=server.name)

    runtime, _ = await fake_runtime(hangs)
    try:
        live = runtime.pool("p")
        live, pick = runtime.pick_binding("p")
        upstream = FakeUpstream(pick.endpoint.config, hangs)
        for _ in range(live.config.consecutive_failures):
            with pytest.raises(UpstreamTimeout):
                await runtime.request_bound("p", pick.endpoint.id, upstream, "tools/call", None)  # type: ignore[arg-type]
        assert pick.endpoint.outlier.ejected(runtime.clock())
        name = pick.endpoint.config.name
        assert runtime.metrics.calls[("p", name, "timeout")] == live.config.consecutive_failures
        assert runtime.metrics.ejections[("p", name)] == 1
    finally:
        await runtime.close(grace=1)


async def test_runtime_cancelled_bound_call_is_counted_cancelled_not_ok() -> None:
    started = asyncio.Event()

    async def waits(server: ServerConfig, method: str, params: Any) -> dict[str, Any]:
        started.set()
        await asyncio.Event().wait()
        return {}

    runtime, _ = await fake_runtime(waits)
    try:
        _, pick = runtime.pick_binding("p")
        upstream = FakeUpstream(pick.endpoint.config, waits)
        call = asyncio.create_task(
            runtime.request_bound("p", pick.endpoint.id, upstream, "tools/call", None)  # type: ignore[arg-type]
        )
        await started.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        name = pick.endpoint.config.name
        assert runtime.metrics.calls[("p", name, "cancelled")] == 1
        assert runtime.metrics.calls[("p", name, "ok")] == 0
    finally:
        await runtime.close(grace=1)


async def test_runtime_upstream_refusing_bad_input_is_never_ejected_nor_retried() -> None:
    async def refuses(server: ServerConfig, method: str, params: Any) -> dict[str, Any]:
        raise UpstreamRefused("HTTP 400", status=400, server=server.name)

    runtime, opened = await fake_runtime(refuses, retry_policy="always")
    try:
        for _ in range(100):
            with pytest.raises(UpstreamRefused):
                await runtime.request("p", "tools/call", {"name": "t", "arguments": {}})
        live = runtime.pool("p")
        assert not runtime.metrics.ejections
        assert all(not e.outlier.ejected(runtime.clock()) for e in live.endpoints.values())
        assert sum(len(s.sent) for s in opened) == 100  # each call went to one server only
        assert runtime.metrics.calls[("p", "s1", "rejected")] > 0
    finally:
        await runtime.close(grace=1)


async def test_runtime_input_required_retry_goes_to_the_server_that_asked() -> None:
    async def asks(server: ServerConfig, method: str, params: Any) -> dict[str, Any]:
        state = (params or {}).get("requestState")
        if state is None:
            return {"resultType": "input_required", "requestState": f"inner-{server.name}"}
        return {"content": [], "state_seen": state, "server": server.name}

    runtime, _ = await fake_runtime(asks, n=3)
    try:
        for _ in range(6):
            first = await runtime.request("p", "tools/call", {"name": "t"})
            sealed = first["requestState"]
            assert "inner" not in sealed  # the client never sees the upstream's own state
            retry = {"name": "t", "requestState": sealed, "inputResponses": {}}
            done = await runtime.request("p", "tools/call", retry)
            assert done["state_seen"] == f"inner-{done['server']}"
        with pytest.raises(InvalidState):
            await runtime.request("p", "tools/call", {"name": "t", "requestState": sealed[:-2]})
        other = StateSealer(["another key"]).seal("p", 1, "inner-s1")
        with pytest.raises(InvalidState):
            await runtime.request("p", "tools/call", {"name": "t", "requestState": other})
    finally:
        await runtime.close(grace=1)


async def test_runtime_bound_session_retry_gets_its_servers_own_state_back() -> None:
    async def asks(server: ServerConfig, method: str, params: Any) -> dict[str, Any]:
        state = (params or {}).get("requestState")
        if state is None:
            return {"resultType": "input_required", "requestState": f"inner-{server.name}"}
        return {"content": [], "state_seen": state}

    runtime, _ = await fake_runtime(asks)
    try:
        _, pick = runtime.pick_binding("p")
        upstream = FakeUpstream(pick.endpoint.config, asks)
        server_id = pick.endpoint.id
        first = await runtime.request_bound("p", server_id, upstream, "tools/call", {"name": "t"})  # type: ignore[arg-type]
        retry = {"name": "t", "requestState": first["requestState"], "inputResponses": {}}
        done = await runtime.request_bound("p", server_id, upstream, "tools/call", retry)  # type: ignore[arg-type]
        assert done["state_seen"] == f"inner-{pick.endpoint.config.name}"
    finally:
        await runtime.close(grace=1)


async def test_runtime_never_sends_a_held_calls_state_to_a_server() -> None:
    async def answers(server: ServerConfig, method: str, params: Any) -> dict[str, Any]:
        return {"content": []}

    runtime, opened = await fake_runtime(answers)
    try:
        assert runtime.sealer is not None
        held = runtime.sealer.seal_held("p", "process.call")
        assert runtime.sealer.open("p", held).held == "process.call"
        with pytest.raises(InvalidState):
            await runtime.request("p", "tools/call", {"name": "t", "requestState": held})
        assert not any(s.sent for s in opened)
    finally:
        await runtime.close(grace=1)


async def test_runtime_merged_tool_list_carries_the_strictest_hints_of_its_servers() -> None:
    hints = {"s1": (60_000, "public"), "s2": (5_000, "public"), "s3": (90_000, "private")}

    async def lists(server: ServerConfig, method: str, params: Any) -> dict[str, Any]:
        ttl, scope = hints[server.name]
        return {"tools": [{"name": f"t-{server.name}"}], "ttlMs": ttl, "cacheScope": scope}

    runtime, _ = await fake_runtime(lists, n=3)
    try:
        tools = await runtime.list_tools("p")
        assert {t["name"] for t in tools} == {"t-s1", "t-s2", "t-s3"}
        assert runtime.pool("p").tools_hints == (5_000, "private")
    finally:
        await runtime.close(grace=1)
