"""Faithful forwarding in both protocol eras: what a client sends reaches the server, what the
server answers reaches the client, and what only the gateway may say is the gateway's.

Real clients (the mcp SDK 2.3.0 `Client` in both modes) and real upstreams: three replicas of
`tests.mcp.upstream` (an SDK server whose `requestState` only its own process can open) and the
faulty test server.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any, Literal

import httpx2
import mcp_types as types
import orjson
import pytest
from asgiref.sync import sync_to_async
from mcp import Client
from mcp.shared.exceptions import MCPError

from balancing.engine.request_state import StateSealer
from tests.api.gateway import Gateway, add_key, add_pool, serve_gateway
from tests.mcp.conftest import ENVELOPE, modern_request, post_rpc, sampled, transport
from tests.upstreams import procs

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.upstream]


def _setup(urls: list[str], faulty_a: str, faulty_b: str) -> dict[str, str]:
    add_pool("proto", [(f"r{i + 1}", url) for i, url in enumerate(urls)])
    add_pool("one", [("r1", urls[0])])
    add_pool("one-sticky", [("r1", urls[0])], session_mode="sticky")
    add_pool("mixed", [("r1", urls[0]), ("faulty", faulty_a)])
    add_pool("sick", [("a", faulty_a), ("b", faulty_b)], session_mode="sticky", call_timeout=0.5)
    pools = ["proto", "one", "one-sticky", "mixed", "sick"]
    return {"app": add_key("app", pools), "other": add_key("other", pools)}


@pytest.fixture
async def gw(
    replicas: list[procs.UpstreamProcess],
    faulty_json: procs.UpstreamProcess,
    faulty_sse: procs.UpstreamProcess,
) -> AsyncIterator[Gateway]:
    urls = [r.url for r in replicas]
    keys = await sync_to_async(_setup)(urls, faulty_json.url, faulty_sse.url)
    async with serve_gateway() as gateway:
        gateway.keys.update(keys)
        yield gateway


async def _counts(gw: Gateway, pool: str = "one") -> dict[str, int]:
    async with Client(transport(gw, pool)) as client:
        result = await client.call_tool("counts", {})
    assert isinstance(result.structured_content, dict)
    return dict(result.structured_content)


# ---- errors pass through -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_upstream_resource_not_found_reaches_mcp_clients_unchanged(
    gw: Gateway, mode: Literal["auto", "legacy"]
) -> None:
    async with Client(transport(gw, "one"), mode=mode) as client:
        with pytest.raises(MCPError) as caught:
            await client.read_resource("missing://thing")
        with pytest.raises(MCPError) as tool_caught:
            await client.call_tool("gone", {"uri": "file:///x"})
    assert (caught.value.error.code, caught.value.error.message) == (-32002, "Resource not found")
    assert caught.value.error.data == {"uri": "missing://thing"}
    assert tool_caught.value.error.code == -32002
    assert tool_caught.value.error.data == {"uri": "file:///x"}


async def test_upstream_resource_not_found_over_rest_keeps_code_and_adds_upstream_error(
    gw: Gateway,
) -> None:
    async with httpx2.AsyncClient(timeout=30) as http:
        answer = await http.post(
            f"{gw.url}/api/v1/pools/one/tools/gone/call",
            json={"arguments": {"uri": "file:///x"}},
            headers=gw.auth(),
        )
    error = answer.json()["error"]
    assert answer.status_code == 404
    assert error["code"] == "unknown_resource"
    assert error["upstream"] == {
        "code": -32002, "message": "Resource not found", "data": {"uri": "file:///x"},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("code", "status"), [(-32602, 400), (-32601, 404), (-32002, 200), (-32603, 200)]
)
async def test_upstream_error_status_on_the_modern_wire_follows_the_spec(
    gw: Gateway, code: int, status: int
) -> None:
    body, headers = modern_request("tools/call", {"name": "reject", "arguments": {"code": code}})
    answer = await post_rpc(gw, "one", body, **gw.auth(), **headers)
    error = answer.json()["error"]
    assert error == {"code": code, "message": f"rejected with {code}", "data": {"asked": code}}
    assert answer.status_code == status


# ---- 2026-07-28 wire rules ---------------------------------------------------------------


def _without_capabilities(body: dict[str, Any]) -> None:
    del body["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"]


def _without_meta(body: dict[str, Any]) -> None:
    del body["params"]["_meta"]


def _unsupported_version(body: dict[str, Any]) -> None:
    body["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = "v999.0.0"


@pytest.mark.parametrize(
    ("change", "headers", "status", "code"),
    [
        (_without_meta, {}, 400, -32602),
        (_without_capabilities, {}, 400, -32602),
        (_unsupported_version, {"MCP-Protocol-Version": "v999.0.0"}, 400, -32022),
        (None, {"Mcp-Name": "other"}, 400, -32020),
        (None, {"Mcp-Method": "tools/list"}, 400, -32020),
    ],
)
async def test_modern_wire_rules_refuse_like_a_server(
    gw: Gateway, change: Any, headers: dict[str, str], status: int, code: int
) -> None:
    before = await _counts(gw)
    body, base = modern_request("tools/call", {"name": "whoami", "arguments": {}})
    if change is not None:
        change(body)
    answer = await post_rpc(gw, "one", body, **gw.auth(), **{**base, **headers})
    assert (answer.status_code, answer.json()["error"]["code"]) == (status, code)
    after = await _counts(gw)
    assert after.get("tools/call", 0) == before.get("tools/call", 0) + 1  # only `counts` itself


async def test_modern_wire_version_header_must_match_meta(gw: Gateway) -> None:
    body, headers = modern_request("tools/call", {"name": "whoami", "arguments": {}})
    body["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = "2099-01-01"
    answer = await post_rpc(gw, "one", body, **gw.auth(), **headers)
    assert (answer.status_code, answer.json()["error"]["code"]) == (400, -32020)


async def test_modern_wire_accepts_base64_mcp_name(gw: Gateway) -> None:
    body, headers = modern_request("tools/call", {"name": "whoami", "arguments": {}})
    headers["Mcp-Name"] = "=?base64?" + base64.b64encode(b"whoami").decode() + "?="
    answer = await post_rpc(gw, "one", body, **gw.auth(), **headers)
    assert answer.status_code == 200
    assert answer.json()["result"]["structuredContent"]["name"] == "r1"


@pytest.mark.parametrize(
    "method", ["initialize", "ping", "logging/setLevel", "resources/subscribe", "no/such"]
)
async def test_modern_wire_removed_methods_are_404_method_not_found(
    gw: Gateway, method: str
) -> None:
    body, headers = modern_request(method, {"level": "info", "uri": "static://hello"})
    if method == "resources/subscribe":
        headers.pop("Mcp-Name", None)
    answer = await post_rpc(gw, "one", body, **gw.auth(), **headers)
    assert (answer.status_code, answer.json()["error"]["code"]) == (404, -32601)


# ---- what the client sends reaches the server --------------------------------------------


async def test_modern_client_meta_and_trace_context_reach_the_upstream(gw: Gateway) -> None:
    meta: dict[str, Any] = {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "vendor=1",
        "example.com/custom": {"x": 1},
        "progressToken": "tok-1",
    }
    body, headers = modern_request("tools/call", {"name": "whoami", "arguments": {}, "_meta": meta})
    headers["traceparent"] = meta["traceparent"]
    answer = await post_rpc(gw, "proto", body, **gw.auth(), **headers)
    seen = answer.json()["result"]["structuredContent"]
    # the client's own, every key, as sent (the SDK server names the token its own way)
    token = seen["meta"].pop("progress_token", seen["meta"].pop("progressToken", None))
    assert token == meta.pop("progressToken")
    assert seen["meta"] == {**ENVELOPE, **meta}
    assert seen["headers"]["traceparent"] == meta["traceparent"]


async def test_modern_sdk_client_info_and_capabilities_reach_the_upstream(gw: Gateway) -> None:
    info = types.Implementation(name="probe-client", version="9.9")
    async with Client(transport(gw, "proto"), client_info=info, sampling_callback=sampled) as c:
        result = await c.call_tool("whoami", {})
    assert isinstance(result.structured_content, dict)
    meta = result.structured_content["meta"]
    assert meta["io.modelcontextprotocol/clientInfo"]["name"] == "probe-client"
    assert "sampling" in meta["io.modelcontextprotocol/clientCapabilities"]


async def test_tool_with_x_mcp_header_parameter_works_through_the_gateway(gw: Gateway) -> None:
    async with Client(transport(gw, "proto")) as client:
        # the SDK mirrors a parameter into its header once it has listed the tool (its documented
        # use; an unlisted tool takes the -32020 re-list round trip, which the SDK owns)
        await client.list_tools()
        result = await client.call_tool("regional", {"region": "eu-west"})
    assert not result.is_error
    assert "region eu-west" in str(result.content)


@pytest.mark.parametrize("sent", [True, False])
async def test_mcp_param_header_reaches_the_upstream_as_sent(gw: Gateway, sent: bool) -> None:
    body, headers = modern_request(
        "tools/call", {"name": "regional", "arguments": {"region": "eu-west"}}
    )
    if sent:
        headers["Mcp-Param-Region"] = "eu-west"
    answer = await post_rpc(gw, "proto", body, **gw.auth(), **headers)
    if sent:  # the upstream saw the header: it checks it against the argument
        assert answer.status_code == 200, answer.text
        assert "region eu-west" in str(answer.json()["result"]["content"])
    else:  # the upstream's own refusal, passed on unchanged
        assert (answer.status_code, answer.json()["error"]["code"]) == (400, -32020)


async def test_sticky_session_speaks_as_the_client(gw: Gateway) -> None:
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "raw-sticky", "version": "3"}}}  # fmt: skip
    answer = await post_rpc(gw, "one-sticky", init, **gw.auth())
    assert answer.json()["result"]["protocolVersion"] == "2025-06-18"
    sid = answer.headers["mcp-session-id"]
    params = {"name": "whoami", "arguments": {}, "_meta": {"progressToken": "p-7"}}
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params}
    seen = await post_rpc(
        gw, "one-sticky", call, **gw.auth(), **{"Mcp-Session-Id": sid,
                                                 "MCP-Protocol-Version": "2025-06-18"}
    )  # fmt: skip
    who = seen.json()["result"]["structuredContent"]
    assert (who["client_name"], who["protocol_version"]) == ("raw-sticky", "2025-06-18")
    assert who["meta"].get("progress_token", who["meta"].get("progressToken")) == "p-7"


# ---- era leaks -----------------------------------------------------------------------------


async def test_handshake_client_never_sees_2026_fields(gw: Gateway) -> None:
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "old", "version": "1"}}}  # fmt: skip
    answer = await post_rpc(gw, "one", init, **gw.auth())
    headers = {"Mcp-Session-Id": answer.headers["mcp-session-id"],
               "MCP-Protocol-Version": "2025-11-25", **gw.auth()}  # fmt: skip
    for request_id, method in enumerate(("tools/list", "prompts/list", "resources/list"), 2):
        body = {"jsonrpc": "2.0", "id": request_id, "method": method}
        result = (await post_rpc(gw, "one", body, **headers)).json()["result"]
        leaked = {"resultType", "ttlMs", "cacheScope"} & set(result)
        assert not leaked, (method, leaked)
        meta = result.get("_meta", {})
        assert not [k for k in meta if k.startswith("io.modelcontextprotocol/")], meta


async def test_merged_tool_list_carries_hints_only_from_the_servers(gw: Gateway) -> None:
    async with Client(transport(gw, "proto")) as client:
        listed = await client.list_tools()
    # the replicas give tools/list no hints: nothing may be cached, nothing invented
    assert (listed.ttl_ms, listed.cache_scope) == (0, "private")


# ---- server/discover -------------------------------------------------------------------------


async def test_discover_offers_what_every_server_of_the_pool_offers(gw: Gateway) -> None:
    async with Client(transport(gw, "one")) as one, Client(transport(gw, "mixed")) as mixed:
        alone = one.server_capabilities
        both = mixed.server_capabilities
    assert alone is not None
    assert alone.prompts is not None
    assert alone.resources is not None
    faulty = await _faulty_capabilities(gw)
    assert both is not None
    for feature in ("prompts", "resources", "completions", "logging", "tools"):
        expected = feature in faulty and getattr(alone, feature) is not None
        assert (getattr(both, feature) is not None) == expected, feature


async def _faulty_capabilities(gw: Gateway) -> dict[str, Any]:
    live = gw.host.runtime.pools["mixed"]
    faulty_id = next(e.id for e in live.endpoints.values() if e.config.name == "faulty")
    return live.capabilities[faulty_id]


# ---- bad input stops at the gateway --------------------------------------------------------


async def test_non_object_arguments_never_reach_a_replica_nor_eject_one(gw: Gateway) -> None:
    before = await _counts(gw)
    for i in range(100):
        body, headers = modern_request("tools/call", {"name": "whoami", "arguments": ["x", i]})
        answer = await post_rpc(gw, "one", body, **gw.auth(), **headers)
        assert (answer.status_code, answer.json()["error"]["code"]) == (400, -32602)
    after = await _counts(gw)
    assert after.get("tools/call", 0) == before.get("tools/call", 0) + 1  # only `counts` itself
    runtime = gw.host.runtime
    assert not runtime.metrics.ejections
    assert all(
        not e.outlier.ejected(runtime.clock()) for e in runtime.pools["one"].endpoints.values()
    )


async def test_large_integer_id_is_echoed_exactly(gw: Gateway) -> None:
    body, headers = modern_request("tools/list", request_id=10**30)
    raw = orjson.dumps({**body, "id": 0}).replace(b'"id":0', b'"id":' + str(10**30).encode())
    async with httpx2.AsyncClient(timeout=30) as http:
        answer = await http.post(
            f"{gw.url}/mcp/one/", content=raw,
            headers={**gw.auth(), **headers, "Content-Type": "application/json",
                     "Accept": "application/json, text/event-stream"},
        )  # fmt: skip
    assert answer.status_code == 200
    assert b'"id":1000000000000000000000000000000,' in answer.content


@pytest.mark.parametrize("bad_id", [{"a": 1}, [1], 1.5, True, None])
async def test_ids_json_rpc_forbids_are_refused(gw: Gateway, bad_id: Any) -> None:
    body, headers = modern_request("tools/list", request_id=bad_id)
    answer = await post_rpc(gw, "one", body, **gw.auth(), **headers)
    assert (answer.status_code, answer.json()["error"]["code"]) == (400, -32600)
    assert answer.json()["id"] is None


async def test_batch_is_refused_as_invalid_request(gw: Gateway) -> None:
    body, headers = modern_request("tools/list")
    answer = await post_rpc(gw, "one", [body, body], **gw.auth(), **headers)
    assert (answer.status_code, answer.json()["error"]["code"]) == (400, -32600)


# ---- multi-round-trip requests -------------------------------------------------------------


async def test_input_required_round_trip_completes_on_any_of_three_replicas(gw: Gateway) -> None:
    answered_by: set[str] = set()
    async with Client(transport(gw, "proto"), sampling_callback=sampled) as client:
        for i in range(9):
            result = await client.call_tool("sampled", {"prompt": f"q{i}"})
            assert not result.is_error, result
            text = "".join(c.text for c in result.content if isinstance(c, types.TextContent))
            replica, _, answer = text.partition(":")
            assert answer == f"sampled:q{i}"
            answered_by.add(replica)
    assert len(answered_by) > 1  # balanced across replicas, every retry where it began


async def _first_round(gw: Gateway) -> dict[str, Any]:
    meta: dict[str, Any] = {"io.modelcontextprotocol/clientCapabilities": {"sampling": {}}}
    params = {"name": "sampled", "arguments": {"prompt": "p"}, "_meta": meta}
    body, headers = modern_request("tools/call", params)
    answer: dict[str, Any] = (await post_rpc(gw, "proto", body, **gw.auth(), **headers)).json()
    result: dict[str, Any] = answer["result"]
    return result


@pytest.mark.parametrize("tamper", ["flip", "other-pool", "foreign"])
async def test_tampered_request_state_is_refused(gw: Gateway, tamper: str) -> None:
    first = await _first_round(gw)
    assert first["resultType"] == "input_required"
    state: str = first["requestState"]
    if tamper == "flip":
        state = state[:-3] + ("AAA" if state[-3:] != "AAA" else "BBB")
    elif tamper == "other-pool":
        state = StateSealer(["another deployment"]).seal("proto", 1, None)
    else:
        state = "v1.an-upstream-state-not-sealed-by-the-gateway"
    body, headers = modern_request("tools/call", {"name": "sampled", "arguments": {"prompt": "p"},
                            "requestState": state, "inputResponses": {}})  # fmt: skip
    answer = await post_rpc(gw, "proto", body, **gw.auth(), **headers)
    error = answer.json()["error"]
    assert (answer.status_code, error["code"]) == (400, -32602)
    assert error["message"] == "Invalid or expired requestState"


# ---- cache hints -----------------------------------------------------------------------------


async def test_public_result_is_served_from_memory_within_its_ttl(gw: Gateway) -> None:
    before = (await _counts(gw)).get("prompts/list", 0)
    for key in ("app", "other", "app"):
        async with Client(transport(gw, "one", key)) as client:
            listed = await client.list_prompts()
            assert [p.name for p in listed.prompts] == ["greet"]
            assert listed.cache_scope == "public"
            assert 0 < listed.ttl_ms <= 60_000
    assert (await _counts(gw)).get("prompts/list", 0) == before + 1


async def test_private_result_is_never_shared_across_api_keys(gw: Gateway) -> None:
    before = (await _counts(gw)).get("resources/list", 0)
    for key in ("app", "other", "app", "other"):
        async with Client(transport(gw, "one", key)) as client:
            listed = await client.list_resources()
            assert listed.cache_scope == "private"
    assert (await _counts(gw)).get("resources/list", 0) == before + 2  # once per key


# ---- one call path ---------------------------------------------------------------------------


async def test_sticky_pool_ejects_a_replica_that_fails_live_calls(gw: Gateway) -> None:
    runtime = gw.host.runtime
    live = runtime.pools["sick"]
    async with Client(transport(gw, "sick"), mode="legacy") as client:
        (session,) = [s for s in gw.host.client_sessions if s.pool == "sick"]
        bound = live.endpoints[session.server_id]
        for _ in range(live.config.consecutive_failures):
            with pytest.raises(MCPError):
                await client.call_tool("hang", {})
    assert bound.outlier.ejected(runtime.clock())
    assert runtime.metrics.ejections[("sick", bound.config.name)] == 1
    assert runtime.metrics.calls[("sick", bound.config.name, "timeout")] >= 5
    # a new client session is bound to the healthy replica
    async with Client(transport(gw, "sick"), mode="legacy") as client:
        fresh = [s for s in gw.host.client_sessions if s.pool == "sick"]
        assert [s.server_id for s in fresh] != [bound.id]
