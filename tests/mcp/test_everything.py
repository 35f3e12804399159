"""server-everything (npm, not ours) through the gateway: every tool gives the same result as
when called directly, and a sticky pool relays progress, logging, sampling and elicitation."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters
from pydantic import FileUrl

from tests.api.gateway import Gateway
from tests.mcp.conftest import bridge_quiet, needs_everything, transport
from tests.upstreams import procs

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.upstream]

ARGUMENTS: dict[str, dict[str, Any]] = {
    "echo": {"message": "through the gateway"},
    "get-annotated-message": {"messageType": "success", "includeImage": True},
    "get-structured-content": {"location": "Chicago"},
    "get-sum": {"a": 2, "b": 40},
    "trigger-long-running-operation": {"duration": 0.3, "steps": 3},
    "trigger-sampling-request": {"prompt": "hello"},
    "trigger-url-elicitation": {"url": "https://example.invalid/approve"},
    "simulate-research-query": {"topic": "pools"},
    "gzip-file-as-resource": {"name": "x.gz", "data": "data:text/plain;base64,aGVsbG8="},
}
# Session ids and clocks differ between two sessions; everything else must be equal.
_VOLATILE = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"|\d{4}-\d\d-\d\dT[0-9:.]+Z?|\b\d{13}\b|\d{1,2}:\d\d:\d\d ?[AP]M"
)


async def _sample(
    context: Any, params: types.CreateMessageRequestParams
) -> types.CreateMessageResult:
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(type="text", text="a sampled answer"),
        model="test-model", stop_reason="endTurn",
    )  # fmt: skip


async def _elicit(context: Any, params: Any) -> types.ElicitResult:
    return types.ElicitResult(action="decline")


async def _roots(context: Any) -> types.ListRootsResult:
    return types.ListRootsResult(roots=[types.Root(uri=FileUrl("file:///srv/data"), name="data")])


def _callbacks(full: bool) -> dict[str, Any]:
    if not full:
        return {}
    return {"sampling_callback": _sample, "elicitation_callback": _elicit,
            "list_roots_callback": _roots}  # fmt: skip


def _normal(result: types.CallToolResult) -> str:
    dumped = result.model_dump_json(exclude={"meta"}, by_alias=True)
    return _VOLATILE.sub("<volatile>", dumped)


async def _all_results(client: Client, names: list[str]) -> dict[str, str]:
    results = {}
    for name in names:
        result = await asyncio.wait_for(client.call_tool(name, ARGUMENTS.get(name, {})), 30)
        results[name] = _normal(result)
    return results


def _direct(everything_http: procs.UpstreamProcess | None, over: str) -> Any:
    if over == "http":
        assert everything_http is not None
        return everything_http.url
    config = procs.everything_stdio_config()
    return StdioServerParameters(command=config.command, args=list(config.args))


# The sticky case runs over stdio; over HTTP the roots request outside any call travels on the
# upstream's GET stream (test_everything_on_sticky_http_pool_relays_session_roots_and_logging).
@pytest.mark.parametrize(
    ("pool", "over", "full"), [("ev-stdio", "stdio", True), ("everything", "http", False)]
)
async def test_every_everything_tool_answers_as_directly(
    gateway: Gateway,
    everything_http: procs.UpstreamProcess | None,
    pool: str,
    over: str,
    full: bool,
) -> None:
    needs_everything(gateway)
    target = _direct(everything_http, over)
    async with Client(target, mode="legacy", **_callbacks(full)) as direct:
        direct_tools = sorted(t.name for t in (await direct.list_tools()).tools)
        expected = await _all_results(direct, direct_tools)
    async with Client(transport(gateway, pool), mode="legacy", **_callbacks(full)) as through:
        gateway_tools = sorted(t.name for t in (await through.list_tools()).tools)
        assert gateway_tools == direct_tools
        got = await _all_results(through, gateway_tools)
    assert len(got) >= 10
    for name in direct_tools:
        if name == "get-env":  # the two server processes differ in environment, by design
            assert '"isError":false' in got[name]
            continue
        assert got[name] == expected[name], name
    assert await gateway.sessions_idle()


async def test_everything_on_sticky_pool_relays_progress(gateway: Gateway) -> None:
    needs_everything(gateway)
    reported: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reported.append(progress)

    async with Client(transport(gateway, "ev-sticky"), mode="legacy") as client:
        await client.call_tool("trigger-long-running-operation", {"duration": 0.3, "steps": 3},
                               progress_callback=on_progress)  # fmt: skip
    assert reported == [1, 2, 3]


async def test_everything_on_sticky_stdio_pool_relays_session_logging(gateway: Gateway) -> None:
    needs_everything(gateway)
    logs: asyncio.Queue[Any] = asyncio.Queue()

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        await logs.put(params)

    async with Client(transport(gateway, "ev-stdio"), mode="legacy", logging_callback=on_log) as c:
        await c.set_logging_level("debug")
        await c.call_tool("toggle-simulated-logging", {})
        # session-level messages (no call running) arrive on the client's GET stream
        first = await asyncio.wait_for(logs.get(), 20)
        await c.call_tool("toggle-simulated-logging", {})
    assert first.level in ("debug", "info", "notice", "warning", "error", "critical", "alert",
                           "emergency")  # fmt: skip


async def test_everything_on_sticky_http_pool_relays_session_roots_and_logging(
    gateway: Gateway,
) -> None:
    needs_everything(gateway)
    asked = asyncio.Event()
    logs: asyncio.Queue[Any] = asyncio.Queue()

    async def roots(context: Any) -> types.ListRootsResult:
        asked.set()
        return await _roots(context)

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        await logs.put(params)

    # given a client with roots on a sticky pool whose server-everything is reached over HTTP
    async with Client(transport(gateway, "ev-sticky"), mode="legacy", list_roots_callback=roots,
                      logging_callback=on_log):  # fmt: skip
        async with asyncio.timeout(20):
            # when the server asks for roots right after initialize, outside any call (on its
            # GET stream to the gateway), then the client is asked and answers
            await asked.wait()
            # and the server's session-level log of what it got reaches the client too
            while "Roots updated: 1 root" not in str((await logs.get()).data):
                pass


# The tools that ask the client, which server-everything offers to a client that declares the
# capability: through the era bridge a 2026 client answers them in `inputResponses`.
ASKING = ["trigger-sampling-request", "trigger-elicitation-request", "get-roots-list"]


@pytest.mark.parametrize(("pool", "over"), [("ev-sticky", "http"), ("ev-stdio", "stdio")])
async def test_new_client_on_sticky_pool_answers_a_handshake_servers_requests(
    gateway: Gateway, everything_http: procs.UpstreamProcess | None, pool: str, over: str
) -> None:
    needs_everything(gateway)
    # given what a handshake-era client gets from server-everything directly, asked mid-call
    async with Client(_direct(everything_http, over), mode="legacy", **_callbacks(True)) as direct:
        offered = sorted(t.name for t in (await direct.list_tools()).tools)
        expected = await _all_results(direct, ASKING)
    # when a 2026 client (the SDK's default) lists and runs the same tools through a sticky pool
    async with Client(transport(gateway, pool), **_callbacks(True)) as through:
        listed = sorted(t.name for t in (await through.list_tools()).tools)
        got = await _all_results(through, ASKING)
    # then it is offered what the server offers a client that can be asked
    assert set(ASKING) <= set(listed)
    assert listed == offered
    # and the gateway held each call, asked with input_required and resumed it: same results
    assert got == expected
    assert await gateway.sessions_idle()
    assert await bridge_quiet()  # each held call's own upstream session closed with it
