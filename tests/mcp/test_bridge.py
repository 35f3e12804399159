"""The era bridge: a client of one protocol era gets input from a server of the other, and gets
what a client of the server's own era gets directly.

Real clients (the mcp SDK 2.3.0 `Client`, default 2026-07-28 mode and `legacy`) and real
upstreams: `tests.mcp.upstream` (an SDK server whose tools ask for input through resolvers) and
npm server-everything (handshake era only).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Literal

import httpx2
import mcp_types as types
import orjson
import pytest
from asgiref.sync import sync_to_async
from mcp import Client
from mcp.shared.exceptions import MCPError
from pydantic import FileUrl

from balancing.mcpserver import bridge
from tests.api.gateway import Gateway, add_key, add_pool, serve_gateway
from tests.mcp.conftest import (
    bridge_quiet,
    modern_request,
    post_rpc,
    sampled,
    transport,
)
from tests.upstreams import procs

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.upstream]

Mode = Literal["auto", "legacy"]


POOLS = ["new-shared", "new-sticky", "dual-sticky", "old-sticky", "old-shared", "old-brief",
         "old-capped", "dual-shared"]  # fmt: skip


def _setup(new_url: str, old_url: str) -> dict[str, str]:
    add_pool("new-shared", [("r1", new_url)])
    # a sticky session speaks the handshake era upstream unless the server is set to 2026
    add_pool("new-sticky", [("r", new_url)], session_mode="sticky", era="modern")
    # the same SDK server, spoken to in the handshake era only: it asks mid-call
    add_pool("old-sticky", [("r", old_url)], session_mode="sticky", era="handshake")
    add_pool("old-shared", [("r", old_url)], era="handshake")
    # a server of both eras, negotiated: a sticky session speaks the client's (handshake) era
    add_pool("dual-sticky", [("r", old_url)], session_mode="sticky")
    add_pool("dual-shared", [("r", old_url)])  # pooled sessions speak 2026 to it
    add_pool("old-brief", [("r", old_url)], session_mode="sticky", era="handshake",
             call_timeout=1.0)  # fmt: skip
    add_pool("old-capped", [("r", old_url)], session_mode="sticky", era="handshake",
             max_sticky_sessions_per_key=1)  # fmt: skip
    return {"app": add_key("app", POOLS), "other": add_key("other", POOLS)}


@pytest.fixture
async def gw(
    replicas: list[procs.UpstreamProcess], handshake_sse: procs.UpstreamProcess
) -> AsyncIterator[Gateway]:
    keys = await sync_to_async(_setup)(replicas[0].url, handshake_sse.url)
    async with serve_gateway() as gateway:
        gateway.keys.update(keys)
        yield gateway
    assert await bridge_quiet()


async def _accept(context: Any, params: Any) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"name": "ada"})


async def _decline(context: Any, params: Any) -> types.ElicitResult:
    return types.ElicitResult(action="decline")


async def _roots(context: Any) -> types.ListRootsResult:
    return types.ListRootsResult(roots=[types.Root(uri=FileUrl("file:///srv/data"), name="data")])


async def _refuse(context: Any, params: Any) -> types.ErrorData:
    return types.ErrorData(code=-1, message="User rejected sampling")


CALLBACKS: dict[str, dict[str, Any]] = {
    "accepting": {"sampling_callback": sampled, "elicitation_callback": _accept,
                  "list_roots_callback": _roots},
    "declining": {"sampling_callback": sampled, "elicitation_callback": _decline,
                  "list_roots_callback": _roots},
}  # fmt: skip
# tool, arguments, which client answers
CASES = [
    ("sampled", {"prompt": "hi"}, "accepting"),  # one round, sampling
    ("asked", {}, "accepting"),  # elicitation, accepted
    ("asked", {}, "declining"),  # elicitation, declined: an answer, not an error
    ("interview", {}, "accepting"),  # two rounds: elicitation, then sampling from its answer
    ("interview", {}, "declining"),
    ("rooted", {}, "accepting"),  # roots
]


async def _call(target: Any, mode: Mode, tool: str, args: dict[str, Any], who: str) -> Any:
    async with Client(target, mode=mode, **CALLBACKS[who]) as client:
        result = await client.call_tool(tool, args)
    return result.model_dump(exclude={"meta"}, by_alias=True, exclude_none=True)


# ---- new server, old client ----------------------------------------------------------------


@pytest.mark.parametrize(("tool", "args", "who"), CASES)
async def test_old_client_on_shared_pool_gets_what_a_new_client_gets_from_a_new_server(
    gw: Gateway, replicas: list[procs.UpstreamProcess], tool: str, args: dict[str, Any], who: str
) -> None:
    # given what a 2026 client gets from the 2026 server directly (input_required rounds)
    direct = await _call(replicas[0].url, "auto", tool, args, who)
    assert direct["isError"] is False, direct
    # when a handshake-era client calls it through a shared pool, whose upstream sessions speak
    # 2026-07-28 to that server (so the server answers input_required to the gateway)
    through = await _call(transport(gw, "new-shared"), "legacy", tool, args, who)
    # then the client was asked as the handshake era asks, and got the same result
    assert through == direct


async def test_old_client_on_sticky_pool_of_a_2026_server_gets_input_required_bridged(
    gw: Gateway, replicas: list[procs.UpstreamProcess]
) -> None:
    # given a sticky pool whose server is set to the 2026 era: the client's own upstream
    # session speaks 2026-07-28, so the server answers it input_required
    direct = await _call(replicas[0].url, "auto", "interview", {}, "accepting")
    # when a handshake-era client runs a two-round tool on it, then it is asked and answered
    through = await _call(transport(gw, "new-sticky"), "legacy", "interview", {}, "accepting")
    assert through == direct
    assert through["content"][0]["text"] == "r1:sampled:greet accepted ada"


async def test_old_client_on_sticky_pool_of_a_dual_era_server_is_asked_by_the_server(
    gw: Gateway, handshake_sse: procs.UpstreamProcess
) -> None:
    # a server of both eras, era negotiated: the client's own session speaks the handshake era,
    # so the server itself asks mid-call and the gateway relays (no bridge needed)
    direct = await _call(handshake_sse.url, "auto", "interview", {}, "accepting")
    through = await _call(transport(gw, "dual-sticky"), "legacy", "interview", {}, "accepting")
    assert through == direct


async def test_old_clients_refusal_ends_the_call_with_its_error_as_a_new_clients_does(
    gw: Gateway, replicas: list[procs.UpstreamProcess]
) -> None:
    errors = []
    for target, mode in ((replicas[0].url, "auto"), (transport(gw, "new-shared"), "legacy")):
        async with Client(target, mode=mode, sampling_callback=_refuse) as client:
            with pytest.raises(MCPError) as raised:
                await client.call_tool("sampled", {"prompt": "hi"})
        errors.append((raised.value.error.code, raised.value.error.message))
    assert errors[0] == errors[1] == (-1, "User rejected sampling")


# ---- old server, new client ----------------------------------------------------------------


@pytest.mark.parametrize(("tool", "args", "who"), CASES)
async def test_new_client_on_sticky_pool_gets_what_an_old_client_gets_from_an_old_server(
    gw: Gateway, handshake_sse: procs.UpstreamProcess, tool: str, args: dict[str, Any], who: str
) -> None:
    # given what a handshake-era client gets from the server directly (asked mid-call)
    direct = await _call(handshake_sse.url, "legacy", tool, args, who)
    assert direct["isError"] is False, direct
    # when a 2026 client calls it through a sticky pool that speaks the handshake era to it
    through = await _call(transport(gw, "old-sticky"), "auto", tool, args, who)
    # then the gateway held the call, asked in input_required rounds, and the result is the same
    assert through == direct


CAPS: dict[str, Any] = {"io.modelcontextprotocol/clientCapabilities": {"sampling": {}}}


def _events(answer: httpx2.Response) -> list[dict[str, Any]]:
    """The JSON-RPC messages of an answer: one JSON body, or each event of an SSE stream."""
    if answer.headers["content-type"].startswith("application/json"):
        return [answer.json()]
    lines = answer.text.splitlines()
    return [orjson.loads(line[len("data: ") :]) for line in lines if line.startswith("data: ")]


async def _round(
    gw: Gateway, pool: str, extra: dict[str, Any], key: str = "app", request_id: int = 7
) -> tuple[int, list[dict[str, Any]]]:
    params = {"name": "chatty", "arguments": {"prompt": "hi"}, **extra}
    params["_meta"] = {**CAPS, **extra.get("_meta", {})}
    body, headers = modern_request("tools/call", params, request_id)
    answer = await post_rpc(gw, pool, body, **gw.auth(key), **headers)
    return answer.status_code, _events(answer)


def _input_required(events: list[dict[str, Any]]) -> tuple[str, str]:
    (last,) = events
    result = last["result"]
    assert result["resultType"] == "input_required", result
    ((key, request),) = result["inputRequests"].items()
    assert request["method"] == "sampling/createMessage"
    return key, result["requestState"]


def _sampled(key: str, text: str) -> dict[str, Any]:
    content = {"type": "text", "text": text}
    return {key: {"role": "assistant", "content": content, "model": "m"}}


async def test_held_call_passes_progress_and_the_logs_the_client_asked_for(gw: Gateway) -> None:
    # given a 2026 client's call that opts in to logs and asks for progress
    meta = {"progressToken": "p-1", "io.modelcontextprotocol/logLevel": "info"}
    _, first = await _round(gw, "old-sticky", {"_meta": meta})
    key, state = _input_required(first)
    # when it answers the server's request
    extra = {"inputResponses": _sampled(key, "fine"), "requestState": state, "_meta": meta}
    _, events = await _round(gw, "old-sticky", extra, request_id=8)
    # then what the server said meanwhile reaches it on its retry's stream, then the result
    methods = [e.get("method") for e in events[:-1]]
    assert methods == ["notifications/message", "notifications/progress"]
    assert events[0]["params"]["data"] == "the model said fine"
    assert events[1]["params"]["progressToken"] == "p-1"
    assert events[-1]["result"]["content"][0]["text"] == "h1:fine"


async def test_held_call_abandoned_past_the_call_timeout_is_cancelled(gw: Gateway) -> None:
    # given a held call on a pool with a 1 s call timeout
    _, first = await _round(gw, "old-brief", {})
    key, state = _input_required(first)
    # when its client does not come back, then the call ends and its upstream session closes
    assert await bridge_quiet()
    # and a late retry is told why it cannot go on
    extra = {"inputResponses": _sampled(key, "late"), "requestState": state}
    status, (answer,) = await _round(gw, "old-brief", extra, request_id=8)
    assert (status, answer["error"]["code"]) == (400, -32602)
    assert answer["error"]["data"]["reason"] == "held_call_ended"


async def test_held_call_resumes_only_for_the_key_that_started_it(gw: Gateway) -> None:
    _, first = await _round(gw, "old-sticky", {})
    key, state = _input_required(first)
    extra = {"inputResponses": _sampled(key, "mine"), "requestState": state}
    status, (answer,) = await _round(gw, "old-sticky", extra, key="other", request_id=8)
    assert (status, answer["error"]["data"]["reason"]) == (400, "held_call_ended")
    _, (mine,) = await _round(gw, "old-sticky", extra, request_id=9)
    assert mine["result"]["content"][0]["text"] == "h1:mine"


async def test_retry_of_a_call_held_by_another_process_names_the_cause(gw: Gateway) -> None:
    # given a state sealed by this deployment for a call that another web process holds
    sealer = gw.host.runtime.sealer
    assert sealer is not None
    state = sealer.seal_held("old-sticky", "0123456789ab.some-call")
    # when the retry reaches this process
    extra = {"inputResponses": _sampled("mcppool-1", "x"), "requestState": state}
    status, (answer,) = await _round(gw, "old-sticky", extra)
    # then it is refused, naming the cause
    assert (status, answer["error"]["code"]) == (400, -32602)
    assert answer["error"]["data"]["reason"] == "held_by_another_process"
    assert "another web process (0123456789ab)" in answer["error"]["message"]


async def test_held_calls_upstream_session_speaks_as_the_client(gw: Gateway) -> None:
    info = types.Implementation(name="bridged-client", version="7")
    async with Client(transport(gw, "old-sticky"), client_info=info, **CALLBACKS["accepting"]) as c:
        result = await c.call_tool("whoami", {})
    assert result.structured_content is not None
    who = result.structured_content
    # its own session, opened with the client's clientInfo in the handshake era
    assert (who["client_name"], who["protocol_version"]) == ("bridged-client", "2025-11-25")


async def test_new_client_on_sticky_pool_of_a_2026_server_gets_its_input_required(
    gw: Gateway, replicas: list[procs.UpstreamProcess]
) -> None:
    # the server speaks 2026 itself: its input_required reaches the client, state sealed
    direct = await _call(replicas[0].url, "auto", "interview", {}, "accepting")
    through = await _call(transport(gw, "new-sticky"), "auto", "interview", {}, "accepting")
    assert through == direct


async def test_new_client_on_shared_pool_of_an_old_server_cannot_be_asked(gw: Gateway) -> None:
    # a shared pool's upstream sessions serve many clients: they declare no capability, so a
    # handshake-era server refuses what needs one (a sticky pool is the way to be asked)
    async with Client(transport(gw, "old-shared"), **CALLBACKS["accepting"]) as client:
        with pytest.raises(MCPError, match="did not declare the sampling capability"):
            await client.call_tool("sampled", {"prompt": "hi"})


async def test_held_calls_count_against_the_pools_session_caps(gw: Gateway) -> None:
    # given a pool allowing each key one session, and one held call of this key
    _, first = await _round(gw, "old-capped", {})
    key, state = _input_required(first)
    # when the key starts another, then it is refused as over its cap, retry later
    status, (refused,) = await _round(gw, "old-capped", {}, request_id=8)
    assert (status, refused["error"]["data"]["code"]) == (429, "session_limit")
    # and once the held call completes, its place is free again
    extra = {"inputResponses": _sampled(key, "done"), "requestState": state}
    _, (done,) = await _round(gw, "old-capped", extra, request_id=9)
    assert done["result"]["content"][0]["text"] == "h1:done"
    assert await bridge_quiet()
    _, again = await _round(gw, "old-capped", {}, request_id=10)
    _input_required(again)


@pytest.mark.filterwarnings("ignore:The logging capability is deprecated")
async def test_old_client_gets_progress_and_logs_of_the_rounds_after_its_answers(
    gw: Gateway,
) -> None:
    reported: list[float] = []
    logs: list[Any] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reported.append(progress)

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params.data)

    # given a handshake-era client that asked for logs, on a shared pool of a server that
    # streams (SSE) what it says during a call
    async with Client(transport(gw, "dual-shared"), mode="legacy", sampling_callback=sampled,
                      logging_callback=on_log) as client:  # fmt: skip
        await client.set_logging_level("info")
        # when the 2026 server asks it for sampling, then logs and reports progress
        result = await client.call_tool("chatty", {"prompt": "hi"}, progress_callback=on_progress)
    # then what the server said after the answer reached the client with the result
    assert result.content[0].model_dump()["text"] == "h1:sampled:hi"
    assert logs == ["the model said sampled:hi"]
    assert reported == [1]


async def test_held_call_that_ends_between_rounds_gives_the_retry_its_result(gw: Gateway) -> None:
    # given a held call whose server stops waiting for the answer and finishes on its own
    body, headers = modern_request("tools/call", {"name": "impatient", "arguments": {},
                                                  "_meta": CAPS})  # fmt: skip
    key, state = _input_required(_events(await post_rpc(gw, "old-sticky", body, **gw.auth(),
                                                        **headers)))  # fmt: skip
    for _ in range(500):
        if not bridge.running():
            break
        await asyncio.sleep(0.02)
    assert not bridge.running()
    # when the client's answer comes after that, then its retry gets the call's outcome
    params = {"name": "impatient", "arguments": {}, "_meta": CAPS,
              "inputResponses": _sampled(key, "late"), "requestState": state}  # fmt: skip
    body, headers = modern_request("tools/call", params, 8)
    answer = await post_rpc(gw, "old-sticky", body, **gw.auth(), **headers)
    # (the server's withdrawal of its request means nothing on the 2026 wire: not passed on)
    (done,) = _events(answer)
    assert done["result"]["content"][0]["text"] == "h1:gave up waiting"
