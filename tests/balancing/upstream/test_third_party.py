"""UpstreamSession against real MCP servers nobody here wrote: PyPI mcp-server-time (stdio) and
npm @modelcontextprotocol/server-everything (stdio and Streamable HTTP)."""

from __future__ import annotations

import asyncio

import pytest

from balancing.engine.config import Era
from tests.balancing.upstream.conftest import Connect, require_everything
from tests.balancing.upstream.test_session_http import text_of, tool
from tests.helpers import assert_measures_a_round_trip, timed
from tests.upstreams import procs

pytestmark = pytest.mark.upstream


@pytest.mark.parametrize(
    ("era", "negotiated"), [(Era.AUTO, Era.MODERN), (Era.HANDSHAKE, Era.HANDSHAKE)]
)
async def test_time_server_lists_and_calls_get_current_time(
    connect: Connect, era: Era, negotiated: Era
) -> None:
    # mcp-server-time runs on the installed mcp 2.3.0 server, which speaks both eras
    session = await connect(procs.time_stdio_config(era=era))

    tools = await session.request("tools/list", None, timeout=10)
    result = await session.request(
        "tools/call", tool("get_current_time", timezone="Europe/Paris"), timeout=10
    )

    assert session.era is negotiated
    assert "get_current_time" in {t["name"] for t in tools["tools"]}
    assert result.get("isError") is not True
    assert "Europe/Paris" in text_of(result)


async def test_everything_stdio_negotiates_handshake_and_echoes(connect: Connect) -> None:
    require_everything()
    # it speaks only the handshake era: `auto` must fall back from server/discover
    session = await connect(procs.everything_stdio_config())

    tools = await session.request("tools/list", None, timeout=10)
    results = await asyncio.gather(
        *(
            session.request("tools/call", tool("echo", message=f"m{i}"), timeout=20)
            for i in range(50)
        )
    )

    assert session.era is Era.HANDSHAKE
    assert session.protocol_version in ("2025-06-18", "2025-11-25")
    assert "echo" in {t["name"] for t in tools["tools"]}
    assert [text_of(r) for r in results] == [f"Echo: m{i}" for i in range(50)]


async def test_everything_http_negotiates_handshake_and_echoes(
    connect: Connect, everything_http: procs.UpstreamProcess
) -> None:
    session = await connect(everything_http.config())

    tools = await session.request("tools/list", None, timeout=10)
    results = await asyncio.gather(
        *(
            session.request("tools/call", tool("echo", message=f"m{i}"), timeout=20)
            for i in range(50)
        )
    )

    assert session.era is Era.HANDSHAKE
    assert "echo" in {t["name"] for t in tools["tools"]}
    assert [text_of(r) for r in results] == [f"Echo: m{i}" for i in range(50)]
    assert_measures_a_round_trip(await timed(session.ping(5)))
