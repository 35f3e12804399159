"""REST tool calls (the raw-ASGI hot path): results, streaming, and every error of the contract.

Every error case also checks that nothing changed or leaked: no database write, and every
borrowed upstream session back in its pool.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from asgiref.sync import sync_to_async

from servers import services
from servers.models import ApiKey
from tests.api.conftest import error_of
from tests.api.gateway import Gateway, add_pool, db_state
from tests.upstreams import procs

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.upstream]


async def _call(
    gw: Gateway,
    pool: str,
    tool: str,
    body: Any = None,
    *,
    key: str | None = "app",
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, Any, dict[str, str]]:
    hdrs = {**(gw.auth(key) if key else {}), **(headers or {})}
    data = raw if raw is not None else orjson.dumps(body if body is not None else {})
    url = f"{gw.url}/api/v1/pools/{pool}/tools/{tool}/call"
    async with gw.http.post(url, data=data, headers=hdrs) as response:
        payload = await response.read()
        try:
            parsed = orjson.loads(payload)
        except orjson.JSONDecodeError:
            parsed = payload
        return response.status, parsed, dict(response.headers)


async def _refused(gw: Gateway, status: int, code: str, *args: Any, **kwargs: Any) -> None:
    """Assert one refused call: its status and code, no DB write, no session leaked."""
    before = await sync_to_async(db_state)()
    got_status, body, _ = await _call(gw, *args, **kwargs)
    assert (got_status, error_of(body)) == (status, code), body
    assert await sync_to_async(db_state)() == before
    assert await gw.sessions_idle()


async def test_call_tool_returns_the_upstream_result(gateway: Gateway) -> None:
    status, body, headers = await _call(gateway, "echo", "echo", {"arguments": {"text": "hi"}})
    assert status == 200, body
    assert headers["Content-Type"] == "application/json"
    assert body["content"] == [{"type": "text", "text": "hi"}]
    assert body["isError"] is False
    assert await gateway.sessions_idle()


async def test_call_tool_that_fails_is_200_with_is_error(gateway: Gateway) -> None:
    status, body, _ = await _call(gateway, "echo", "fail")
    assert status == 200
    assert body["isError"] is True
    assert "failed on purpose" in body["content"][0]["text"]


async def test_call_tool_concurrent_callers_each_get_their_own_answer(gateway: Gateway) -> None:
    texts = [f"caller-{i}" for i in range(40)]
    answers = await asyncio.gather(
        *(_call(gateway, "echo", "echo", {"arguments": {"text": t}}) for t in texts)
    )
    assert [a[1]["content"][0]["text"] for a in answers] == texts
    assert await gateway.sessions_idle()


async def _progress_call(gateway: Gateway, steps: int) -> list[tuple[str, Any]]:
    url = f"{gateway.url}/api/v1/pools/stream/tools/progress/call"
    headers = {**gateway.auth(), "Accept": "text/event-stream"}
    body = orjson.dumps({"arguments": {"steps": steps}})
    async with gateway.http.post(url, data=body, headers=headers) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        text = (await response.read()).decode()
    return [
        (block.split("\n")[0].removeprefix("event: "), orjson.loads(block.split("data: ", 1)[1]))
        for block in text.strip().split("\n\n")
    ]


async def test_call_tool_streams_progress_and_log_as_sse(gateway: Gateway) -> None:
    events = await _progress_call(gateway, 3)
    progress = [data for name, data in events if name == "progress"]
    assert [p["progress"] for p in progress] == [1, 2, 3]
    assert all("progressToken" not in p for p in progress)
    assert events[-1][0] == "result"
    assert events[-1][1]["content"][0]["text"] == "done 3"
    assert await gateway.sessions_idle()


async def test_call_tool_concurrent_sse_calls_each_get_their_own_progress(
    gateway: Gateway,
) -> None:
    # more calls than the pool has sessions: several share one upstream session
    runs = await asyncio.gather(*(_progress_call(gateway, steps) for steps in range(2, 10)))
    for steps, events in zip(range(2, 10), runs, strict=True):
        progress = [data["progress"] for name, data in events if name == "progress"]
        assert progress == list(range(1, steps + 1))
        assert events[-1][1]["content"][0]["text"] == f"done {steps}"


async def test_call_tool_sse_error_before_any_event_is_a_plain_json_error(
    gateway: Gateway,
) -> None:
    headers = {"Accept": "text/event-stream"}
    await _refused(gateway, 504, "upstream_timeout", "echo", "slow",
                   {"arguments": {"seconds": 3}, "timeout": 0.3}, headers=headers)  # fmt: skip


async def test_call_tool_with_bad_json_is_400(gateway: Gateway) -> None:
    await _refused(gateway, 400, "invalid_json", "echo", "echo", raw=b'{"arguments": ')


@pytest.mark.parametrize(
    "body",
    [[1, 2], {"arguments": "text"}, {"arguments": [1]}, {"timeout": "soon"}, {"timeout": -1},
     {"affinity_key": 5}, {"argumnets": {}}],
)  # fmt: skip
async def test_call_tool_with_wrong_types_is_400(gateway: Gateway, body: Any) -> None:
    before = await sync_to_async(db_state)()
    status, answer, _ = await _call(gateway, "echo", "echo", body)
    assert status == 400
    assert error_of(answer) in ("invalid_request", "invalid_arguments")
    assert await sync_to_async(db_state)() == before


async def test_call_tool_in_unknown_pool_is_404(gateway: Gateway) -> None:
    await _refused(gateway, 404, "unknown_pool", "nope", "echo", key="admin")


async def test_call_unknown_tool_is_404(gateway: Gateway) -> None:
    await gateway.host.runtime.list_tools("echo")  # the pool has listed its tools
    await _refused(gateway, 404, "unknown_tool", "echo", "no-such-tool")


async def test_call_tool_without_key_is_401(gateway: Gateway) -> None:
    await _refused(gateway, 401, "missing_api_key", "echo", "echo", key=None)


async def test_call_tool_with_bad_key_is_401(gateway: Gateway) -> None:
    headers = {"Authorization": "Bearer mcp_deadbeef_not-a-real-key"}
    await _refused(gateway, 401, "invalid_api_key", "echo", "echo", key=None, headers=headers)
    headers = {"Authorization": "Basic dXNlcjpwYXNz"}
    await _refused(gateway, 401, "missing_api_key", "echo", "echo", key=None, headers=headers)


async def test_call_tool_with_wrong_secret_of_a_real_prefix_is_401(gateway: Gateway) -> None:
    real = gateway.keys["app"]
    forged = real[: len("mcp_12345678_")] + "x" * 20
    headers = {"Authorization": f"Bearer {forged}"}
    await _refused(gateway, 401, "invalid_api_key", "echo", "echo", key=None, headers=headers)


async def test_call_tool_with_revoked_key_is_401(gateway: Gateway) -> None:
    await _refused(gateway, 401, "api_key_revoked", "echo", "echo", key="revoked")


async def test_call_tool_with_expired_key_is_401(gateway: Gateway) -> None:
    await _refused(gateway, 401, "api_key_expired", "echo", "echo", key="expired")


async def test_call_tool_key_revoked_while_running_is_refused_after_reload(
    gateway: Gateway,
) -> None:
    # given a key that works
    status, _, _ = await _call(gateway, "echo", "echo", {"arguments": {"text": "x"}})
    assert status == 200
    # when an operator revokes it (bumps the config version; the host reloads)
    await sync_to_async(services.revoke_api_key)(await ApiKey.objects.aget(name="app"))
    await gateway.settle()
    # then its next call is refused
    status, body, _ = await _call(gateway, "echo", "echo", {"arguments": {"text": "x"}})
    assert (status, error_of(body)) == (401, "api_key_revoked")


async def test_call_tool_with_key_created_after_start_works(gateway: Gateway) -> None:
    # the key cache has not reloaded: the prefix miss is looked up once in the database
    _, secret = await sync_to_async(services.create_api_key)("late", all_pools=True)
    headers = {"Authorization": f"Bearer {secret}"}
    status, body, _ = await _call(gateway, "echo", "echo", {"arguments": {"text": "late"}},
                                  key=None, headers=headers)  # fmt: skip
    assert status == 200, body


async def test_call_tool_in_a_pool_the_key_may_not_use_is_403(gateway: Gateway) -> None:
    await _refused(gateway, 403, "pool_forbidden", "other", "echo")
    # and the same for a pool that does not exist: a restricted key learns nothing
    await _refused(gateway, 403, "pool_forbidden", "nope", "echo")


async def test_call_tool_with_body_over_limit_is_413_before_reading(
    gateway: Gateway, settings: Any
) -> None:
    settings.MCPPOOL_MAX_BODY_BYTES = 2048
    big = orjson.dumps({"arguments": {"text": "x" * 5000}})
    await _refused(gateway, 413, "body_too_large", "echo", "echo", raw=big)


async def test_call_tool_with_chunked_body_over_limit_is_413(
    gateway: Gateway, settings: Any
) -> None:
    settings.MCPPOOL_MAX_BODY_BYTES = 2048

    async def chunks() -> Any:
        yield b'{"arguments": {"text": "'
        for _ in range(100):
            yield b"x" * 100
        yield b'"}}'

    url = f"{gateway.url}/api/v1/pools/echo/tools/echo/call"
    async with gateway.http.post(url, data=chunks(), headers=gateway.auth()) as response:
        assert response.status == 413
        assert error_of(await response.json()) == "body_too_large"
    assert await gateway.sessions_idle()


async def test_call_tool_over_the_key_rate_is_429_with_retry_after(gateway: Gateway) -> None:
    body = {"arguments": {"text": "x"}}
    assert (await _call(gateway, "echo", "echo", body, key="limited"))[0] == 200
    assert (await _call(gateway, "echo", "echo", body, key="limited"))[0] == 200
    before = await sync_to_async(db_state)()
    status, answer, headers = await _call(gateway, "echo", "echo", body, key="limited")
    assert (status, error_of(answer)) == (429, "rate_limited")
    assert int(headers["Retry-After"]) >= 1
    assert gateway.host.runtime.metrics.rate_limited["echo"] == 1
    assert await sync_to_async(db_state)() == before
    # other keys are not limited by this one's bucket
    assert (await _call(gateway, "echo", "echo", body))[0] == 200


async def test_call_tool_over_the_pool_rate_is_429_for_every_key(gateway: Gateway) -> None:
    # given a pool limited to 2 calls a minute, whoever calls
    body = {"arguments": {"text": "x"}}
    assert (await _call(gateway, "capped", "echo", body))[0] == 200
    assert (await _call(gateway, "capped", "echo", body, key="admin"))[0] == 200
    # when a third call comes, from either key
    status, answer, headers = await _call(gateway, "capped", "echo", body)
    # then it is refused: the bucket is the pool's, shared by all keys
    assert (status, error_of(answer)) == (429, "rate_limited")
    assert int(headers["Retry-After"]) >= 1
    assert gateway.host.runtime.metrics.rate_limited["capped"] == 1
    # and other pools are not limited by it
    assert (await _call(gateway, "echo", "echo", body))[0] == 200


async def test_call_tool_when_upstream_is_down_is_503(gateway: Gateway) -> None:
    await _refused(gateway, 503, "no_healthy_server", "dead", "anything",
                   {"arguments": {}})  # fmt: skip


async def test_call_tool_upstream_timeout_is_504(gateway: Gateway) -> None:
    await _refused(gateway, 504, "upstream_timeout", "echo", "slow",
                   {"arguments": {"seconds": 3}, "timeout": 0.3})  # fmt: skip


async def test_call_tool_upstream_protocol_error_is_502(gateway: Gateway) -> None:
    await _refused(gateway, 502, "upstream_error", "garbage", "boom")


async def test_call_tool_on_a_server_that_dies_mid_call_is_502(gateway: Gateway) -> None:
    # given a pool whose only server is a process we can kill
    upstream = procs.start_faulty_http(name="mortal", json_response=True)
    try:
        await sync_to_async(add_pool)("mortal", [("m", upstream.url)], retry_policy="never")
        await gateway.settle()
        # when the tool kills the server while the call is in flight
        status, body, _ = await _call(gateway, "mortal", "crash", key="admin")
        # then the app hears of an upstream failure, and no slot stays borrowed
        assert (status, error_of(body)) == (502, "upstream_error")
        assert await gateway.sessions_idle()
    finally:
        upstream.stop()


async def test_call_route_get_is_405(gateway: Gateway) -> None:
    async with gateway.http.get(
        f"{gateway.url}/api/v1/pools/echo/tools/echo/call", headers=gateway.auth()
    ) as response:
        assert response.status == 405
        assert error_of(await response.json()) == "method_not_allowed"
