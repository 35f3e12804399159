"""Issue 13, attacks 4 and 5: MCP `initialize` was neither rate-limited nor capped (a key limited
to 5 calls a minute made 60 sessions; 15 initializes on a sticky stdio pool made 17 processes),
and sticky sessions outlived their pool. Sessions now cost what calls cost, a sticky pool caps
its sessions (total and per key: 429 with Retry-After), and deleting or disabling a pool or
server ends its sessions and their child processes within seconds."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

import aiohttp
import pytest
from asgiref.sync import sync_to_async

from servers import services
from servers.choices import ServerState
from servers.models import Pool, Server
from tests.api.gateway import Gateway, add_key, add_pool, add_stdio_server, serve_gateway
from tests.helpers.wait import until
from tests.upstreams import procs

pytestmark = pytest.mark.django_db(transaction=True)

INIT: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "attacker", "version": "1"},
    },
}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def processes(marker: str) -> int:
    """Live processes whose command line carries `marker` (zombies have none)."""
    count = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if marker.encode() in cmdline.read():
                    count += 1
        except OSError:
            continue
    return count


async def initialize(gw: Gateway, pool: str, key: str) -> aiohttp.ClientResponse:
    headers = {**HEADERS, "Authorization": f"Bearer {key}"}
    async with gw.http.post(f"{gw.url}/mcp/{pool}/", json=INIT, headers=headers) as response:
        await response.read()
        return response


def _dead_url() -> str:
    return f"http://127.0.0.1:{procs.free_port()}/mcp"


async def test_initialize_is_charged_to_the_keys_rate_limit() -> None:
    await sync_to_async(add_pool)("shared", [("a", _dead_url())])
    key = await sync_to_async(add_key)("limited", ["shared"], rate_limit_per_minute=5)
    async with serve_gateway() as gw:
        answers = [await initialize(gw, "shared", key) for _ in range(12)]
    assert [r.status for r in answers] == [200] * 5 + [429] * 7
    assert all(int(r.headers["Retry-After"]) >= 1 for r in answers[5:])


async def test_initialize_is_charged_to_the_pools_rate_limit() -> None:
    await sync_to_async(add_pool)("shared", [("a", _dead_url())], rate_limit_per_minute=3)
    key = await sync_to_async(add_key)("app", ["shared"])
    async with serve_gateway() as gw:
        statuses = [(await initialize(gw, "shared", key)).status for _ in range(6)]
    assert statuses == [200] * 3 + [429] * 3


def _sticky_stdio_pool(marker: str, **caps: int) -> Server:
    pool = add_pool("sticky", [], session_mode="sticky", sessions_per_server=1, **caps)
    return add_stdio_server(pool, "s1", procs.faulty_stdio_config(name=marker))


async def test_200_initializes_stay_at_the_cap_and_children_end_with_the_pool() -> None:
    marker = f"cap-{uuid.uuid4().hex[:12]}"
    await sync_to_async(_sticky_stdio_pool)(
        marker, max_sticky_sessions=10, max_sticky_sessions_per_key=3
    )
    key = await sync_to_async(add_key)("app", ["sticky"])
    async with serve_gateway() as gw:
        # the pool's own session (sessions_per_server=1) before any client comes
        assert await until(lambda: processes(marker) == 1, 20.0)
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, processes(marker))
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch())
        answers = await asyncio.gather(*(initialize(gw, "sticky", key) for _ in range(200)))
        statuses = [r.status for r in answers]
        assert statuses.count(200) == 3, statuses
        assert statuses.count(429) == 197
        refused = [r for r in answers if r.status == 429]
        assert all(r.headers["Retry-After"] == "10" for r in refused)
        assert processes(marker) == 1 + 3
        watcher.cancel()
        assert peak <= 1 + 3

        # when the pool is deleted, every child ends within seconds, with no request coming in
        pool = await Pool.objects.aget(slug="sticky")
        await sync_to_async(services.delete)(pool)
        assert await until(lambda: processes(marker) == 0, 20.0), processes(marker)
        assert len(gw.host.client_sessions) == 0


async def test_pool_total_cap_holds_across_keys() -> None:
    marker = f"total-{uuid.uuid4().hex[:12]}"
    await sync_to_async(_sticky_stdio_pool)(
        marker, max_sticky_sessions=2, max_sticky_sessions_per_key=2
    )
    one = await sync_to_async(add_key)("one", ["sticky"])
    two = await sync_to_async(add_key)("two", ["sticky"])
    async with serve_gateway() as gw:
        assert (await initialize(gw, "sticky", one)).status == 200
        assert (await initialize(gw, "sticky", two)).status == 200
        refused = await initialize(gw, "sticky", two)
        assert refused.status == 429
        assert refused.headers["Retry-After"] == "10"
        await sync_to_async(services.delete)(await Pool.objects.aget(slug="sticky"))
        assert await until(lambda: processes(marker) == 0, 20.0)


async def test_disabling_a_server_ends_its_sticky_sessions_and_children() -> None:
    marker = f"disable-{uuid.uuid4().hex[:12]}"
    server = await sync_to_async(_sticky_stdio_pool)(marker)
    key = await sync_to_async(add_key)("app", ["sticky"])
    async with serve_gateway() as gw:
        for _ in range(2):
            assert (await initialize(gw, "sticky", key)).status == 200
        assert processes(marker) == 1 + 2
        await sync_to_async(services.set_server_state)([server], ServerState.DISABLED)
        assert await until(lambda: processes(marker) == 0, 20.0), processes(marker)
        assert len(gw.host.client_sessions) == 0
