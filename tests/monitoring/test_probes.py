"""Probes against real upstream processes: each era, stdio, hanging and dead servers, tools."""

from __future__ import annotations

import os
import signal
from dataclasses import replace

import pytest

from balancing.engine.config import Era, PoolConfig, ServerConfig, Transport
from balancing.engine.upstream import UpstreamSession
from monitoring import probes
from monitoring.probes import Prober, tools_hash
from tests.balancing.upstream.conftest import require_everything
from tests.helpers.mcp_client import listed_tool_names
from tests.upstreams import procs

pytestmark = pytest.mark.upstream

POOL = PoolConfig(id=1, slug="p", check_timeout=2.0)


async def probe_started(
    prober: Prober, server: ServerConfig, *, list_tools: bool = False
) -> probes.ProbeResult:
    """Probe until the server's process has started (a stdio start may outlast one probe:
    it answers "starting" meanwhile, and the next probe waits for the same process)."""
    for _ in range(60):
        result = await prober.probe(POOL, server, list_tools=list_tools)
        if not result.starting:
            return result
    raise AssertionError(f"{server.name} never started: {result.error}")


async def test_probe_modern_server_is_asked_server_discover(
    prober: Prober, replica: procs.UpstreamProcess
) -> None:
    result = await prober.probe(POOL, replica.config())

    assert result.ok, result.error
    assert result.era == "modern"
    assert result.protocol_version == "2026-07-28"
    assert result.latency_ms is not None
    assert result.latency_ms > 0


async def test_probe_handshake_server_is_pinged_on_a_kept_session(
    prober: Prober, replica: procs.UpstreamProcess
) -> None:
    server = replica.config(era=Era.HANDSHAKE)

    first = await prober.probe(POOL, server)
    session = prober.session_of(server.id)
    second = await prober.probe(POOL, server)

    assert first.ok
    assert second.ok
    assert first.era == "handshake"
    assert prober.session_of(server.id) is session  # no new initialize per probe


async def test_probe_session_forgotten_by_server_reinitializes_and_passes(
    prober: Prober, replica: procs.UpstreamProcess
) -> None:
    # given a kept handshake-era probe session the server then forgets (as after a restart)
    server = replica.config(era=Era.HANDSHAKE)
    await prober.probe(POOL, server)
    kept = prober.session_of(server.id)
    await _call_tool(replica.config(era=Era.HANDSHAKE), "forget_sessions")

    # when the next probe runs
    result = await prober.probe(POOL, server)

    # then it re-initialized: the server is up, it had only lost our session
    assert result.ok, result.error
    assert prober.session_of(server.id) is not kept


async def test_probe_stdio_server_is_probed_through_its_own_process(prober: Prober) -> None:
    server = procs.faulty_stdio_config()

    first = await probe_started(prober, server)
    kept = prober.session_of(server.id)
    assert kept is not None
    # when the probe process dies between probes
    with pytest.raises(Exception):  # noqa: B017, PT011 - the crash kills the answer
        await kept.request("tools/call", {"name": "crash", "arguments": {}}, timeout=5)
    second = await probe_started(prober, server)

    # then the next probe spawns another and passes
    assert first.ok, second.error
    assert second.ok, second.error
    assert prober.session_of(server.id) is not kept


async def test_probe_hanging_server_times_out_instead_of_blocking(
    prober: Prober, replica: procs.UpstreamProcess
) -> None:
    # given a kept session to a server that then freezes (SIGSTOP: connections accepted by the
    # kernel, never answered)
    server = replica.config(era=Era.HANDSHAKE)
    pool = replace(POOL, check_timeout=0.5)
    assert (await prober.probe(pool, server)).ok
    kept = prober.session_of(server.id)
    os.killpg(replica.pid, signal.SIGSTOP)
    try:
        result = await prober.probe(pool, server)
        one_shot = Prober(keep_sessions=False)
        fresh = await one_shot.probe(pool, server)  # and a new session too
        await one_shot.close()
    finally:
        os.killpg(replica.pid, signal.SIGCONT)

    assert not result.ok
    assert "0.5s" in result.error
    assert not fresh.ok
    assert "0.5s" in fresh.error
    # a slow answer leaves the session usable: once the server answers again, the kept session
    # passes (no new initialize per slow probe)
    assert (await prober.probe(pool, server)).ok
    assert prober.session_of(server.id) is kept


async def test_probe_stopped_server_fails_with_the_connection_error(
    prober: Prober, replica: procs.UpstreamProcess
) -> None:
    server = replica.config()
    replica.stop()

    result = await prober.probe(POOL, server)

    assert not result.ok
    assert result.era == ""
    assert result.latency_ms is None
    assert "127.0.0.1" in result.error or "connect" in result.error.lower()


async def test_probe_server_that_does_not_exist_fails_without_raising(prober: Prober) -> None:
    server = ServerConfig(id=7, name="ghost", transport=Transport.STDIO, command="/nonexistent")

    result = await prober.probe(POOL, server)

    assert not result.ok
    assert "/nonexistent" in result.error


async def test_probe_tools_hash_matches_replicas_and_tells_other_servers_apart(
    prober: Prober, replica: procs.UpstreamProcess
) -> None:
    other = procs.start_faulty_http(name="other")
    try:
        servers = [
            (replica.config(server_id=1), True),
            (other.config(server_id=2), True),
            (procs.time_stdio_config(server_id=3), True),
        ]
        a, b, _ = await prober.probe_pool(POOL, servers, jitter=0.05)
        time_server = await probe_started(prober, servers[2][0], list_tools=True)
    finally:
        other.stop()

    assert a.ok, (a.error, b.error, time_server.error)
    assert b.ok, (a.error, b.error, time_server.error)
    assert time_server.ok, (a.error, b.error, time_server.error)
    # the counts are what each server lists when asked directly
    replica_tools = await listed_tool_names(servers[0][0])
    assert a.tools_count == b.tools_count == len(replica_tools)
    assert time_server.tools_count == len(await listed_tool_names(servers[2][0]))
    assert a.tools_hash == b.tools_hash  # replicas: same build, same tools
    assert time_server.tools_hash != a.tools_hash


async def test_probe_without_tool_listing_reports_no_tools(
    prober: Prober, replica: procs.UpstreamProcess
) -> None:
    result = await prober.probe(POOL, replica.config(), list_tools=False)

    assert result.ok
    assert result.tools_count is None
    assert result.tools_hash == ""


async def test_probe_handshake_only_server_everything_over_http(prober: Prober) -> None:
    require_everything()
    server = procs.start_everything_http()
    try:
        result = await prober.probe(POOL, server.config(), list_tools=True)
    finally:
        server.stop()

    assert result.ok, result.error
    assert result.era == "handshake"
    assert result.tools_count
    assert len(result.tools_hash) == 64


def test_tools_hash_ignores_order_descriptions_and_titles() -> None:
    one = [
        {"name": "b", "inputSchema": {"type": "object"}, "description": "Bee"},
        {"name": "a", "inputSchema": {"type": "object", "required": ["x"]}, "title": "A"},
    ]
    reworded = [
        {"name": "a", "inputSchema": {"required": ["x"], "type": "object"}, "title": "Ay"},
        {"name": "b", "inputSchema": {"type": "object"}, "description": "B, reworded"},
    ]
    changed = [{**one[0], "annotations": {"readOnlyHint": True}}, one[1]]

    assert tools_hash(one) == tools_hash(reworded)
    assert tools_hash(one) != tools_hash(changed)


def test_run_once_closes_its_sessions_and_the_process_loop_keeps_them(
    replica: procs.UpstreamProcess,
) -> None:
    server = replica.config(era=Era.HANDSHAKE)

    async def probe_and_report(prober: Prober) -> tuple[bool, set[int]]:
        result = await prober.probe(POOL, server)
        return result.ok, prober.kept

    assert probes.run_once(probe_and_report, timeout=10) == (True, set())
    assert probes.run_in_process_loop(probe_and_report, timeout=10) == (True, {server.id})
    assert probes.run_in_process_loop(probe_and_report, timeout=10) == (True, {server.id})


async def _call_tool(server: ServerConfig, name: str) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        session = await UpstreamSession.open(
            server, http=http, client_info={"name": "t", "version": "0"}, capabilities={},
            timeout=10,
        )  # fmt: skip
        try:
            await session.request("tools/call", {"name": name, "arguments": {}}, timeout=10)
        finally:
            await session.close()
