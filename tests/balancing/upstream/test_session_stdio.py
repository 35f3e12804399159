"""UpstreamSession over stdio against our faulty server: multiplexing, faults, process lifecycle."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from balancing.engine.config import Era, ServerConfig, Transport
from balancing.engine.errors import ConnectFailed, SessionGone, UpstreamClosed, UpstreamTimeout
from tests.balancing.upstream.conftest import Connect
from tests.balancing.upstream.test_session_http import text_of, tool
from tests.helpers.wait import wait_until
from tests.upstreams import procs

pytestmark = pytest.mark.upstream


def process_gone(pid: int) -> bool:
    """True once the child is reaped: no /proc entry, so no zombie either."""
    return not Path(f"/proc/{pid}").exists()


async def pid_of(session: Any) -> int:
    result = await session.request("tools/call", tool("whoami"), timeout=10)
    pid: int = result["structuredContent"]["pid"]
    return pid


@pytest.mark.parametrize(
    ("era", "negotiated"), [(Era.AUTO, Era.MODERN), (Era.HANDSHAKE, Era.HANDSHAKE)]
)
async def test_stdio_session_era_negotiated_echo_round_trips(
    connect: Connect, era: Era, negotiated: Era
) -> None:
    session = await connect(procs.faulty_stdio_config(era=era))

    result = await session.request("tools/call", tool("echo", text="héllo"), timeout=10)

    assert session.era is negotiated
    assert session.server_info["name"] == "faulty"
    assert text_of(result) == "héllo"


@pytest.mark.parametrize("era", [Era.MODERN, Era.HANDSHAKE])
async def test_stdio_session_300_concurrent_calls_each_caller_gets_its_own_answer(
    connect: Connect, era: Era
) -> None:
    session = await connect(procs.faulty_stdio_config(era=era))
    texts = [f"payload-{i}" for i in range(300)]

    results = await asyncio.gather(
        *(session.request("tools/call", tool("echo", text=t), timeout=60) for t in texts)
    )

    assert [text_of(r) for r in results] == texts
    assert session.in_flight == 0


async def test_stdio_session_progress_reaches_only_its_call(connect: Connect) -> None:
    # A pooled session (no single owner): calls of different clients may share a token, which
    # the session rewrites on the wire and restores on the way back (a sticky session forwards
    # its one client's tokens as they are; the spec makes that client keep them unique).
    session = await connect(procs.faulty_stdio_config(era=Era.HANDSHAKE), listen=False)
    seen: dict[str, list[Any]] = {"a": [], "b": []}

    def collector(who: str) -> Any:
        async def on_message(message: dict[str, Any]) -> None:
            seen[who].append(message["params"])

        return on_message

    def progress_call(steps: int) -> dict[str, Any]:
        return {**tool("progress", steps=steps), "_meta": {"progressToken": "same"}}

    await asyncio.gather(
        session.request("tools/call", progress_call(2), timeout=20, on_message=collector("a")),
        session.request("tools/call", progress_call(4), timeout=20, on_message=collector("b")),
        *(session.request("tools/call", tool("echo", text=str(i)), timeout=20) for i in range(20)),
    )

    assert [(p["progressToken"], p["progress"]) for p in seen["a"]] == [("same", 1), ("same", 2)]
    assert [p["progress"] for p in seen["b"]] == [1, 2, 3, 4]


async def test_stdio_session_event_outside_any_call_goes_to_on_event(connect: Connect) -> None:
    events: list[dict[str, Any]] = []

    async def on_event(message: dict[str, Any]) -> None:
        events.append(message)

    session = await connect(procs.faulty_stdio_config(era=Era.HANDSHAKE), on_event=on_event)

    await session.request("tools/call", tool("announce"), timeout=10)
    await wait_until(lambda: events)

    assert events[0]["method"] == "notifications/tools/list_changed"


async def test_stdio_session_cancelled_and_timed_out_calls_free_their_slots(
    connect: Connect,
) -> None:
    session = await connect(procs.faulty_stdio_config())
    waiting = asyncio.create_task(session.request("tools/call", tool("hang"), timeout=60))
    await wait_until(lambda: session.in_flight == 1)

    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    with pytest.raises(UpstreamTimeout):
        await session.request("tools/call", tool("hang"), timeout=0.5)

    assert session.in_flight == 0
    assert text_of(await session.request("tools/call", tool("echo", text="ok"), timeout=10)) == "ok"


async def test_stdio_session_garbage_line_on_stdout_is_skipped(connect: Connect) -> None:
    session = await connect(procs.faulty_stdio_config())

    result = await session.request("tools/call", tool("garble", text="still fine"), timeout=10)

    assert text_of(result) == "still fine"
    assert session.alive


async def test_stdio_session_process_dies_in_flight_calls_fail_and_child_is_reaped(
    connect: Connect,
) -> None:
    # given a call hanging on a live server
    session = await connect(procs.faulty_stdio_config(era=Era.HANDSHAKE))
    pid = await pid_of(session)
    hanging = asyncio.create_task(session.request("tools/call", tool("hang"), timeout=30))
    await wait_until(lambda: session.in_flight == 1)

    # when the server dies hard in the middle of another call
    with pytest.raises(UpstreamClosed) as crashed:
        await session.request("tools/call", tool("crash"), timeout=30)

    # then every in-flight call failed as delivered, the session is dead, the child reaped
    with pytest.raises(UpstreamClosed):
        await hanging
    assert crashed.value.delivered
    assert not session.alive
    with pytest.raises(SessionGone) as refused:
        await session.request("tools/call", tool("echo", text="x"), timeout=5)
    assert not refused.value.delivered
    await wait_until(lambda: process_gone(pid))


async def test_stdio_session_close_leaves_no_child_process(connect: Connect) -> None:
    session = await connect(procs.faulty_stdio_config())
    pid = await pid_of(session)
    hanging = asyncio.create_task(session.request("tools/call", tool("hang"), timeout=30))
    await wait_until(lambda: session.in_flight == 1)

    await session.close()

    assert process_gone(pid)
    with pytest.raises(UpstreamClosed):
        await hanging


async def test_stdio_session_child_that_ignores_stdin_close_and_sigterm_is_killed(
    connect: Connect, tmp_path: Path
) -> None:
    # given a server that answers the handshake but ignores SIGTERM and never reads EOF
    script = tmp_path / "stubborn.py"
    script.write_text(
        "import json, signal, sys\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "for line in sys.stdin:\n"
        "    msg = json.loads(line)\n"
        "    if msg.get('method') == 'initialize':\n"
        "        result = {'protocolVersion': '2025-11-25', 'capabilities': {},\n"
        "                  'serverInfo': {'name': 'stubborn', 'version': '1'}}\n"
        "        print(json.dumps({'jsonrpc': '2.0', 'id': msg['id'], 'result': result}),\n"
        "              flush=True)\n"
        "    elif 'id' in msg:\n"
        "        print(json.dumps({'jsonrpc': '2.0', 'id': msg['id'], 'error':\n"
        "              {'code': -32601, 'message': 'no'}}), flush=True)\n"
        "import time\n"
        "while True: time.sleep(1)\n"
    )
    config = ServerConfig(
        id=3,
        name="stubborn",
        transport=Transport.STDIO,
        command=sys.executable,
        args=(str(script),),
    )
    session = await connect(config)
    pid = session._transport.pid  # type: ignore[attr-defined]

    await session.close()

    assert session.era is Era.HANDSHAKE
    assert process_gone(pid)


async def test_stdio_session_missing_command_raises_connect_failed(connect: Connect) -> None:
    config = ServerConfig(
        id=4, name="missing", transport=Transport.STDIO, command="/nonexistent/mcp-server"
    )

    with pytest.raises(ConnectFailed) as caught:
        await connect(config)

    assert not caught.value.delivered


async def test_stdio_session_child_sees_only_configured_and_allowlisted_env(
    connect: Connect, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a secret in our environment and a server that reports its own environment
    monkeypatch.setenv("MCPPOOL_SECRET", "do-not-leak")
    script = tmp_path / "envdump.py"
    script.write_text(
        "import json, os, sys\n"
        "for line in sys.stdin:\n"
        "    msg = json.loads(line)\n"
        "    if 'id' not in msg: continue\n"
        "    result = {'protocolVersion': '2025-11-25', 'capabilities': {},\n"
        "              'serverInfo': {'name': 'env', 'version': '1'}, 'env': dict(os.environ)}\n"
        "    print(json.dumps({'jsonrpc': '2.0', 'id': msg['id'], 'result': result}), flush=True)\n"
    )
    config = ServerConfig(
        id=5,
        name="env",
        transport=Transport.STDIO,
        command=sys.executable,
        args=(str(script),),
        env=(("API_TOKEN", "configured"),),
        era=Era.HANDSHAKE,
    )
    session = await connect(config)

    env = (await session.request("anything", None, timeout=10))["env"]

    assert env["API_TOKEN"] == "configured"
    assert "MCPPOOL_SECRET" not in env
    assert env.get("PATH") == os.environ.get("PATH")
