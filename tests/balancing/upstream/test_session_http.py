"""UpstreamSession over Streamable HTTP against our faulty server (SSE and JSON answers)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from balancing.engine import transport_http
from balancing.engine.config import Era, ServerConfig, Transport
from balancing.engine.errors import CallRejected, ConnectFailed, SessionGone, UpstreamTimeout
from balancing.engine.upstream import UpstreamSession
from tests.balancing.upstream.conftest import Connect, open_session
from tests.helpers import assert_measures_a_round_trip, timed
from tests.helpers.wait import wait_until
from tests.upstreams import procs

pytestmark = pytest.mark.upstream


def tool(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


def text_of(result: dict[str, Any]) -> str:
    text: str = result["content"][0]["text"]
    return text


@pytest.fixture(params=["sse", "json"])
def faulty(request: pytest.FixtureRequest) -> procs.UpstreamProcess:
    server: procs.UpstreamProcess = request.getfixturevalue(f"faulty_{request.param}")
    return server


@pytest.mark.parametrize(
    ("era", "negotiated", "version"),
    [(Era.AUTO, Era.MODERN, "2026-07-28"), (Era.HANDSHAKE, Era.HANDSHAKE, "2025-11-25")],
)
async def test_http_session_era_negotiated_echo_round_trips(
    connect: Connect, faulty: procs.UpstreamProcess, era: Era, negotiated: Era, version: str
) -> None:
    # given
    session = await connect(faulty.config(era=era))

    # when
    result = await session.request("tools/call", tool("echo", text="héllo"), timeout=10)

    # then
    assert (session.era, session.protocol_version) == (negotiated, version)
    assert session.server_info["name"] == "faulty"
    assert "tools" in session.server_capabilities
    assert text_of(result) == "héllo"
    assert session.alive
    assert session.in_flight == 0


@pytest.mark.parametrize("era", [Era.MODERN, Era.HANDSHAKE])
async def test_http_session_300_concurrent_calls_each_caller_gets_its_own_answer(
    connect: Connect, faulty_json: procs.UpstreamProcess, era: Era
) -> None:
    session = await connect(faulty_json.config(era=era))
    texts = [f"payload-{i}" for i in range(300)]

    results = await asyncio.gather(
        *(session.request("tools/call", tool("echo", text=t), timeout=60) for t in texts)
    )

    assert [text_of(r) for r in results] == texts
    assert session.in_flight == 0


@pytest.mark.parametrize("era", [Era.MODERN, Era.HANDSHAKE])
async def test_http_session_same_client_progress_token_progress_never_crosses(
    connect: Connect, faulty_sse: procs.UpstreamProcess, era: Era
) -> None:
    # given two callers that both picked progress token 1, and unrelated calls in between
    # (an SSE server: a JSON-answering one has no stream to send progress on)
    session = await connect(faulty_sse.config(era=era))
    seen: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}

    def collector(who: str) -> Any:
        async def on_message(message: dict[str, Any]) -> None:
            seen[who].append(message)

        return on_message

    def progress_call(steps: int) -> dict[str, Any]:
        # The modern era delivers log messages only to requests that opt in.
        meta = {"progressToken": 1, "io.modelcontextprotocol/logLevel": "info"}
        return {**tool("progress", steps=steps), "_meta": meta}

    # when
    a, b, *echoes = await asyncio.gather(
        session.request("tools/call", progress_call(3), timeout=20, on_message=collector("a")),
        session.request("tools/call", progress_call(5), timeout=20, on_message=collector("b")),
        *(session.request("tools/call", tool("echo", text=str(i)), timeout=20) for i in range(20)),
    )

    # then each caller sees exactly its own progress, under its own token, plus its log line
    assert (text_of(a), text_of(b)) == ("done 3", "done 5")
    assert [text_of(e) for e in echoes] == [str(i) for i in range(20)]
    for who, steps in (("a", 3), ("b", 5)):
        progress = [m["params"] for m in seen[who] if m["method"] == "notifications/progress"]
        assert [(p["progressToken"], p["progress"], p["total"]) for p in progress] == [
            (1, step, steps) for step in range(1, steps + 1)
        ]
        logs = [m["params"]["data"] for m in seen[who] if m["method"] == "notifications/message"]
        assert logs == [f"progress done after {steps} steps"]


async def test_http_session_cancelled_call_frees_its_slot_and_session_keeps_working(
    connect: Connect, faulty: procs.UpstreamProcess
) -> None:
    session = await connect(faulty.config())
    waiting = asyncio.create_task(session.request("tools/call", tool("hang"), timeout=60))
    await wait_until(lambda: session.in_flight == 1)

    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting

    assert session.in_flight == 0
    result = await session.request("tools/call", tool("echo", text="after"), timeout=10)
    assert text_of(result) == "after"


@pytest.mark.parametrize("era", [Era.MODERN, Era.HANDSHAKE])
async def test_http_session_hanging_call_times_out_without_blocking_others(
    connect: Connect, faulty: procs.UpstreamProcess, era: Era
) -> None:
    session = await connect(faulty.config(era=era))
    hanging = asyncio.create_task(session.request("tools/call", tool("hang"), timeout=1.0))

    quick = await session.request("tools/call", tool("echo", text="quick"), timeout=10)

    assert text_of(quick) == "quick"
    with pytest.raises(UpstreamTimeout) as caught:
        await hanging
    assert caught.value.delivered
    assert caught.value.server_failure
    assert session.in_flight == 0
    assert session.alive


async def test_http_session_failing_tool_is_a_result_not_an_error(
    connect: Connect, faulty: procs.UpstreamProcess
) -> None:
    session = await connect(faulty.config())

    result = await session.request("tools/call", tool("fail"), timeout=10)

    assert result["isError"] is True
    assert "failed on purpose" in text_of(result)


@pytest.mark.parametrize("era", [Era.MODERN, Era.HANDSHAKE])
async def test_http_session_unknown_method_raises_call_rejected_not_a_server_failure(
    connect: Connect, faulty: procs.UpstreamProcess, era: Era
) -> None:
    session = await connect(faulty.config(era=era))

    with pytest.raises(CallRejected) as caught:
        await session.request("nonexistent/method", {}, timeout=10)

    assert caught.value.code == -32601
    assert not caught.value.server_failure
    assert session.alive


async def test_http_session_sampling_request_answered_by_the_calls_handler(
    connect: Connect, faulty_sse: procs.UpstreamProcess
) -> None:
    # given a caller that can sample (the server asks mid-call, on the call's own stream)
    session = await connect(faulty_sse.config(era=Era.HANDSHAKE), capabilities={"sampling": {}})
    asked: list[dict[str, Any]] = []

    async def on_message(message: dict[str, Any]) -> dict[str, Any] | None:
        if message.get("method") != "sampling/createMessage":
            return None
        asked.append(message)
        return {
            "role": "assistant",
            "content": {"type": "text", "text": "sampled!"},
            "model": "test-model",
        }

    # when
    result = await session.request(
        "tools/call", tool("sample", prompt="hi"), timeout=20, on_message=on_message
    )

    # then
    assert text_of(result) == "sampled!"
    assert asked[0]["params"]["messages"][0]["content"]["text"] == "hi"


async def test_http_session_ping_measures_a_round_trip(
    connect: Connect, faulty_json: procs.UpstreamProcess
) -> None:
    for era in (Era.MODERN, Era.HANDSHAKE):
        session = await connect(faulty_json.config(era=era))
        assert_measures_a_round_trip(await timed(session.ping(5)))


async def test_http_session_forgotten_by_server_raises_session_gone_undelivered(
    connect: Connect, faulty_private: procs.UpstreamProcess
) -> None:
    # given a handshake-era session the server then forgets (as after a restart)
    session = await connect(faulty_private.config(era=Era.HANDSHAKE))
    await session.request("tools/call", tool("forget_sessions"), timeout=10)

    # when
    with pytest.raises(SessionGone) as caught:
        await session.request("tools/call", tool("echo", text="x"), timeout=10)

    # then the call never ran, the session is dead, and a new one works
    assert not caught.value.delivered
    assert not session.alive
    fresh = await connect(faulty_private.config(era=Era.HANDSHAKE))
    assert text_of(await fresh.request("tools/call", tool("echo", text="y"), timeout=10)) == "y"


async def test_http_session_call_after_the_servers_keep_alive_ran_out_succeeds(
    faulty_json: procs.UpstreamProcess,
) -> None:
    # given a session over the runtime's own connection pool to a uvicorn server (which closes a
    # connection idle for 5 s), and a call that left its connection idle in the pool
    async with transport_http.client_session() as http:
        session = await open_session(http, faulty_json.config(era=Era.AUTO), listen=False)
        try:
            await session.request("tools/call", tool("echo", text="a"), timeout=10)
            # when this process is busy past the moment the server closes that connection, so it
            # has not yet seen the close when the next call goes out
            time.sleep(5.5)  # noqa: ASYNC251 - blocks the loop on purpose (the server times out)
            result = await session.request("tools/call", tool("echo", text="b"), timeout=10)
        finally:
            await session.close()

    # then the call went out on a fresh connection, not on the one being closed
    assert text_of(result) == "b"


async def test_http_session_connection_refused_raises_connect_failed_undelivered(
    connect: Connect,
) -> None:
    config = ServerConfig(
        id=9,
        name="nobody",
        transport=Transport.STREAMABLE_HTTP,
        url=f"http://127.0.0.1:{procs.free_port()}/mcp",
    )

    with pytest.raises(ConnectFailed) as caught:
        await connect(config)

    assert not caught.value.delivered
    assert caught.value.server == "nobody"


async def test_http_session_server_dies_mid_call_fails_the_call_as_delivered(
    connect: Connect, faulty_private: procs.UpstreamProcess
) -> None:
    session = await connect(faulty_private.config(era=Era.HANDSHAKE))

    from balancing.engine.errors import UpstreamClosed

    with pytest.raises(UpstreamClosed) as caught:
        await session.request("tools/call", tool("crash"), timeout=10)

    assert isinstance(caught.value, UpstreamClosed)
    assert caught.value.delivered
    faulty_private.process.wait(10)


async def test_http_session_close_ends_the_session_upstream(
    connect: Connect, faulty_private: procs.UpstreamProcess
) -> None:
    session: UpstreamSession = await connect(faulty_private.config(era=Era.HANDSHAKE))

    await session.close()

    assert not session.alive
    with pytest.raises(SessionGone):
        await session.request("tools/call", tool("echo", text="x"), timeout=5)
