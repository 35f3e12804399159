"""Sticky client sessions: ids, expiry, and what happens when the bound server goes away."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from balancing.engine.sticky import ClientSession, SessionTable, close_sessions
from tests.api.gateway import Gateway, add_key, add_pool
from tests.helpers.fakes import Clock
from tests.mcp.conftest import INIT, post_rpc
from tests.upstreams import procs


def _session(session_id: str, now: float = 0.0) -> ClientSession:
    return ClientSession(id=session_id, pool="p", key_id=1, protocol_version="2025-11-25",
                         created_at=now, last_used=now)  # fmt: skip


def test_session_table_expires_idle_sessions_but_not_busy_ones() -> None:
    clock = Clock(0.0)
    table = SessionTable(idle_timeout=60, clock=clock, sweep_every=10)
    idle, busy = _session("idle"), _session("busy")
    busy.in_flight = 1
    table.add(idle)
    table.add(busy)
    clock.now = 61
    swept = table.add(_session("new", now=61))
    assert [s.id for s in swept] == ["idle"]
    assert table.get("busy") is busy
    assert table.get("idle") is None


async def test_close_sessions_fails_waiting_relays() -> None:
    session = _session("s")
    waiting: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    session.pending["mcppool-1"] = waiting
    await close_sessions([session])
    assert waiting.cancelled()
    assert not session.pending


@pytest.mark.django_db(transaction=True)
@pytest.mark.upstream
async def test_sticky_session_whose_server_dies_gets_404_and_frees_its_upstream(
    gateway: Gateway,
) -> None:
    # given a sticky pool whose only server we can kill, and a client session bound to it
    mortal = procs.start_faulty_http(name="mortal")
    try:
        await sync_to_async(add_pool)("mortal", [("m", mortal.url)], session_mode="sticky")
        secret = await sync_to_async(add_key)("mortal-key", ["mortal"])
        await gateway.settle()
        auth = {"Authorization": f"Bearer {secret}"}
        answer = await post_rpc(gateway, "mortal", INIT, **auth)
        assert answer.status_code == 200
        sid = answer.headers["mcp-session-id"]
        (session,) = [s for s in gateway.host.client_sessions if s.pool == "mortal"]
        # the client's id is the gateway's own, never the upstream's
        assert sid != session.upstream._transport._session_id
        # when the server dies
        mortal.stop()
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": "x"}}}  # fmt: skip
        answer = await post_rpc(gateway, "mortal", call, **auth, **{"Mcp-Session-Id": sid})
        # then the client is told its session is gone, so it re-initializes
        assert answer.status_code == 404
        assert answer.json()["error"]["data"]["code"] == "unknown_session"
        assert session.id not in {s.id for s in gateway.host.client_sessions}
        for _ in range(100):
            if not session.upstream.alive:
                break
            await asyncio.sleep(0.02)
        assert not session.upstream.alive
        again = await post_rpc(gateway, "mortal", call, **auth, **{"Mcp-Session-Id": sid})
        assert again.status_code == 404
    finally:
        mortal.stop()
