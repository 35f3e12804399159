"""The MCP endpoint with the official SDK client: both eras, shared and sticky pools."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2
import mcp_types as types
import pytest
from asgiref.sync import sync_to_async
from mcp import Client, ClientSession
from mcp.shared.exceptions import MCPError

from balancing.errors_http import GATEWAY_TIMEOUT
from servers import services
from servers.models import ApiKey
from tests.api.gateway import Gateway, add_key
from tests.helpers.wait import wait_until
from tests.mcp.conftest import INIT, post_rpc, sampled, transport

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.upstream]


def _text(result: Any) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def test_handshake_client_lists_and_calls_tools_on_shared_pool(gateway: Gateway) -> None:
    async with transport(gateway, "echo") as (read, write), ClientSession(read, write) as session:
        init = await session.initialize()
        assert init.server_info.name == "mcppool/echo"
        tools = {t.name: t for t in (await session.list_tools()).tools}
        assert tools["echo"].annotations is not None
        assert tools["echo"].annotations.read_only_hint
        result = await session.call_tool("echo", {"text": "hello"})
        assert _text(result) == "hello"
        assert not result.is_error
        failed = await session.call_tool("fail", {})
        assert failed.is_error
    assert await gateway.sessions_idle()
    assert len(gateway.host.client_sessions) == 0  # the client's DELETE ended its session


async def test_modern_client_discovers_and_calls_tools_on_shared_pool(gateway: Gateway) -> None:
    async with Client(transport(gateway, "echo")) as client:
        assert client.protocol_version == "2026-07-28"
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"echo", "add"} <= names
        result = await client.call_tool("add", {"a": 2, "b": 3})
        assert result.structured_content == {"result": 5.0}
    assert len(gateway.host.client_sessions) == 0  # the modern era keeps no session


async def test_legacy_mode_client_gets_gateway_session_id(gateway: Gateway) -> None:
    async with Client(transport(gateway, "echo"), mode="legacy") as client:
        assert client.protocol_version == "2025-11-25"
        assert _text(await client.call_tool("echo", {"text": "x"})) == "x"
        (session,) = list(gateway.host.client_sessions)
        assert len(session.id) > 40
        # sealed: this process (or any other) opens it, naming the pool and the key
        token = gateway.host.session_sealer.open("echo", session.id)
        assert token.key_id == session.key_id


async def test_progress_notifications_reach_the_client_on_shared_pool(gateway: Gateway) -> None:
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async with Client(transport(gateway, "stream"), mode="legacy") as client:
        result = await client.call_tool("progress", {"steps": 3}, progress_callback=on_progress)
    assert _text(result) == "done 3"
    assert seen == [1, 2, 3]
    assert await gateway.sessions_idle()


async def test_sticky_pool_relays_progress_and_logging(gateway: Gateway) -> None:
    reported: list[float] = []
    logs: list[Any] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reported.append(progress)

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params.data)

    async with Client(transport(gateway, "sticky"), mode="legacy", logging_callback=on_log) as c:
        (session,) = list(gateway.host.client_sessions)
        assert session.sticky
        result = await c.call_tool("progress", {"steps": 2}, progress_callback=on_progress)
        assert _text(result) == "done 2"
        # the upstream session is this client's own: not the gateway's session id
        assert session.upstream.alive
    assert reported == [1, 2]
    assert any("progress done" in str(d) for d in logs)
    assert not session.upstream.alive  # DELETE closed the client's upstream session


async def test_sticky_pool_relays_sampling_to_the_client(gateway: Gateway) -> None:
    async with Client(transport(gateway, "sticky"), mode="legacy", sampling_callback=sampled) as c:
        result = await c.call_tool("sample", {"prompt": "hi"})
    assert _text(result) == "sampled:hi"


async def test_sticky_pool_passes_the_clients_refusal_to_the_server_as_sent(
    gateway: Gateway,
) -> None:
    async def refuse(context: Any, params: types.CreateMessageRequestParams) -> types.ErrorData:
        return types.ErrorData(code=-1, message="User rejected the sampling request")

    async with Client(transport(gateway, "sticky"), mode="legacy", sampling_callback=refuse) as c:
        with pytest.raises(MCPError) as caught:
            await c.call_tool("sample", {"prompt": "hi"})
    # the server got the client's own error and failed the call with it; that error came back
    # unchanged too (not the gateway's -32603 "client handler failed" nor an upstream_rejected)
    assert (caught.value.error.code, caught.value.error.message) == (
        -1,
        "User rejected the sampling request",
    )


async def test_sticky_sessions_get_their_own_upstream_sessions(gateway: Gateway) -> None:
    async with (
        Client(transport(gateway, "sticky"), mode="legacy") as one,
        Client(transport(gateway, "sticky"), mode="legacy") as two,
    ):
        await one.call_tool("echo", {"text": "1"})
        await two.call_tool("echo", {"text": "2"})
        sessions = list(gateway.host.client_sessions)
        assert len(sessions) == 2
        assert sessions[0].upstream is not sessions[1].upstream
        assert sessions[0].id != sessions[1].id


async def test_unknown_session_is_404_and_delete_ends_a_session(gateway: Gateway) -> None:
    auth = gateway.auth()
    answer = await post_rpc(gateway, "echo", INIT, **auth)
    assert answer.status_code == 200
    assert answer.json()["result"]["protocolVersion"] == "2025-06-18"
    sid = answer.headers["mcp-session-id"]
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    assert (
        await post_rpc(gateway, "echo", ping, **auth, **{"Mcp-Session-Id": sid})
    ).status_code == 200
    forged = sid[:-4] + "0000"
    assert (
        await post_rpc(gateway, "echo", ping, **auth, **{"Mcp-Session-Id": forged})
    ).status_code == 404
    async with httpx2.AsyncClient() as http:
        deleted = await http.delete(
            f"{gateway.url}/mcp/echo/", headers={**auth, "Mcp-Session-Id": sid}
        )
    assert deleted.status_code == 200
    assert (
        await post_rpc(gateway, "echo", ping, **auth, **{"Mcp-Session-Id": sid})
    ).status_code == 404


async def test_session_of_another_key_is_404(gateway: Gateway) -> None:
    sid = (await post_rpc(gateway, "echo", INIT, **gateway.auth())).headers["mcp-session-id"]
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    other = await post_rpc(
        gateway, "echo", ping, **gateway.auth("limited"), **{"Mcp-Session-Id": sid}
    )
    assert other.status_code == 404


async def test_session_id_of_another_pool_is_404(gateway: Gateway) -> None:
    # given a session of pool echo (its id is sealed with the pool bound in)
    sid = (await post_rpc(gateway, "echo", INIT, **gateway.auth())).headers["mcp-session-id"]
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    # when the same key presents it to another of its pools, then it is unknown there
    other = await post_rpc(gateway, "stream", ping, **gateway.auth(), **{"Mcp-Session-Id": sid})
    assert other.status_code == 404


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "missing_api_key"),
        ({"Origin": "http://evil.example"}, 403, "origin_forbidden"),
        ({"Host": "evil.example"}, 403, "origin_forbidden"),
    ],
)
async def test_endpoint_refusals(
    gateway: Gateway, headers: dict[str, str], status: int, code: str
) -> None:
    auth = gateway.auth() if headers else {}
    answer = await post_rpc(gateway, "echo", INIT, **auth, **headers)
    assert answer.status_code == status
    assert answer.json()["error"]["data"]["code"] == code
    assert len(gateway.host.client_sessions) == 0


async def test_endpoint_forbidden_pool_is_403(gateway: Gateway) -> None:
    answer = await post_rpc(gateway, "other", INIT, **gateway.auth())
    assert answer.status_code == 403


async def test_endpoint_bad_json_is_400_parse_error(gateway: Gateway) -> None:
    async with httpx2.AsyncClient() as http:
        answer = await http.post(f"{gateway.url}/mcp/echo/", content=b"{", headers=gateway.auth())
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == -32700


async def test_endpoint_upstream_timeout_is_a_jsonrpc_error(
    gateway: Gateway, settings: Any
) -> None:
    async with Client(transport(gateway, "echo"), mode="legacy") as client:
        with pytest.raises(Exception) as caught:  # noqa: PT011  # the SDK raises its own types
            await client.call_tool("slow", {"seconds": 5}, read_timeout_seconds=30)
    assert "no answer" in str(caught.value) or "timeout" in str(caught.value).lower()


def _modern_call(tool: str, arguments: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {}}  # fmt: skip
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments, "_meta": meta}}  # fmt: skip
    headers = {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": tool}
    return body, headers


async def test_endpoint_upstream_timeout_carries_the_rest_code(gateway: Gateway) -> None:
    body, headers = _modern_call("slow", {"seconds": 5})
    answer = await post_rpc(gateway, "echo", body, **gateway.auth(), **headers)
    assert answer.status_code == 200
    error = answer.json()["error"]
    assert (error["code"], error["data"]["code"]) == (GATEWAY_TIMEOUT, "upstream_timeout")
    assert await gateway.sessions_idle()


async def test_endpoint_client_that_leaves_cancels_its_call_upstream(gateway: Gateway) -> None:
    # given a 2026 client's tool call that runs long upstream
    body, headers = _modern_call("slow", {"seconds": 20})
    call = asyncio.ensure_future(post_rpc(gateway, "echo", body, **gateway.auth(), **headers))
    await wait_until(lambda: not gateway._idle())

    # when the client goes away (the 2026 era's way to cancel)
    call.cancel()

    # then the gateway abandons the call upstream at once: nothing stays in flight, and the call
    # is counted as cancelled, not as an error of the server
    await wait_until(lambda: gateway._idle())
    calls = gateway.host.runtime.metrics.calls
    assert sum(n for (pool, _, label), n in calls.items() if label == "cancelled") == 1


async def test_endpoint_unknown_tool_is_invalid_params(gateway: Gateway) -> None:
    await gateway.host.runtime.list_tools("echo")
    body, headers = _modern_call("no-such-tool", {})
    answer = await post_rpc(gateway, "echo", body, **gateway.auth(), **headers)
    assert answer.json()["error"]["code"] == -32602


async def test_endpoint_rate_limit_is_429_with_retry_after(gateway: Gateway) -> None:
    body, headers = _modern_call("echo", {"text": "x"})
    first = await post_rpc(gateway, "echo", body, **gateway.auth("limited"), **headers)
    assert first.status_code == 200
    second = await post_rpc(gateway, "echo", body, **gateway.auth("limited"), **headers)
    assert second.status_code == 429
    assert int(second.headers["retry-after"]) >= 1
    assert second.json()["error"]["data"]["code"] == "rate_limited"


async def test_endpoint_body_over_limit_is_413(gateway: Gateway, settings: Any) -> None:
    settings.MCPPOOL_MAX_BODY_BYTES = 1024
    body, headers = _modern_call("echo", {"text": "x" * 4000})
    answer = await post_rpc(gateway, "echo", body, **gateway.auth(), **headers)
    assert answer.status_code == 413
    assert await gateway.sessions_idle()


async def test_endpoint_header_body_mismatch_is_refused(gateway: Gateway) -> None:
    body, headers = _modern_call("echo", {"text": "x"})
    headers["Mcp-Method"] = "tools/list"
    answer = await post_rpc(gateway, "echo", body, **gateway.auth(), **headers)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == -32020


async def test_session_stream_of_a_revoked_key_ends(gateway: Gateway) -> None:
    # given a sticky session of a key, with its GET stream open
    secret = await sync_to_async(add_key)("brief", ["sticky"])
    auth = {"Authorization": f"Bearer {secret}"}
    sid = (await post_rpc(gateway, "sticky", INIT, **auth)).headers["mcp-session-id"]
    headers = {**auth, "Mcp-Session-Id": sid, "Accept": "text/event-stream"}
    async with (
        httpx2.AsyncClient(timeout=30) as http,
        http.stream("GET", f"{gateway.url}/mcp/sticky/", headers=headers) as stream,
    ):
        assert stream.status_code == 200
        # when the key is revoked
        await sync_to_async(_revoke)("brief")
        await gateway.settle()
        # then the stream ends (within seconds: the bound is for a loaded machine)
        async with asyncio.timeout(20):
            async for _ in stream.aiter_bytes():
                pass
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    again = await post_rpc(gateway, "sticky", ping, **auth, **{"Mcp-Session-Id": sid})
    assert again.status_code == 401


def _revoke(name: str) -> None:
    services.revoke_api_key(ApiKey.objects.get(name=name))
