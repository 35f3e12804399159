"""Checking a stdio server costs no process of its own, even when it starts slower than the
check interval (issue 15: a loaded machine took 19 s to start Python; the probe killed its copy at
10 s and spawned another every interval, and the pool never became healthy)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from balancing.engine.config import Health
from balancing.host import RuntimeHost
from monitoring import checks
from monitoring.models import HealthCheck
from servers import services
from servers.models import Pool, RuntimeReport, Server
from tests.helpers.wait import until
from tests.monitoring.conftest import make_pool

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.upstream]

ROOT = Path(__file__).resolve().parents[2]
START_DELAY = 2.5  # seconds before the server reads anything: longer than the 1 s interval
ROUNDS_AFTER_UP = 6


def add_slow_stdio(pool: Pool, spawn_log: Path) -> Server:
    return services.save(
        Server(
            pool=pool, name="slow", transport="stdio", command=sys.executable, cwd=str(ROOT),
            args=["-m", "tests.upstreams.bad_stdio", "ok", "--spawn-log", str(spawn_log),
                  "--start-delay", str(START_DELAY)],
        )
    )  # fmt: skip


def spawns(spawn_log: Path) -> int:
    return len(spawn_log.read_text().split()) if spawn_log.exists() else 0


def health_of(server: Server) -> str:
    return Server.objects.values_list("health", flat=True).get(pk=server.pk)


@pytest.fixture
async def host() -> AsyncIterator[RuntimeHost]:
    h = RuntimeHost()
    yield h
    await h.stop()
    await sync_to_async(connections.close_all)()


async def check_round(pool: Pool) -> None:
    """What beat + a worker do once per interval (the worker's kept probe loop included)."""
    await sync_to_async(checks.run_pool_checks)(pool.pk)
    await asyncio.sleep(pool.check_interval)


async def test_stdio_check_slow_start_served_by_runtime_spawns_no_probe_process(
    host: RuntimeHost, tmp_path: Path
) -> None:
    # given a stdio server slower to start than the check interval, run by the web runtime
    spawn_log = tmp_path / "spawns"

    @sync_to_async
    def setup() -> tuple[Pool, Server]:
        pool = make_pool(
            "slow", check_interval=1.0, check_timeout=0.5, start_timeout=20.0, fall=2, rise=2,
            sessions_per_server=1,
        )  # fmt: skip
        return pool, add_slow_stdio(pool, spawn_log)

    pool, server = await setup()
    await host.start()
    # the runtime reports what it is doing (starting) before the first round of checks
    assert await until(sync_to_async(RuntimeReport.objects.filter(server=server).exists), 20)

    # when checks run every interval while the server starts
    for _ in range(60):
        await check_round(pool)
        if await sync_to_async(health_of)(server) == Health.UP:
            break

    # then the pool becomes healthy, from the runtime's own session
    assert await sync_to_async(health_of)(server) == Health.UP
    started = spawns(spawn_log)
    assert started == 1, "the health check spawned a process of its own"

    # and stays so while calls flow, with no process started since
    for _ in range(ROUNDS_AFTER_UP):
        result = await host.runtime.call_tool("slow", "echo", {"text": "hi"})
        assert result["content"][0]["text"] == "hi"
        await check_round(pool)
        assert await sync_to_async(health_of)(server) == Health.UP
    assert spawns(spawn_log) == started
    assert await sync_to_async(HealthCheck.objects.filter(server=server, ok=False).count)() == 0


async def test_stdio_probe_slow_start_starts_once_and_counts_no_failure(tmp_path: Path) -> None:
    # given a stdio server slower to start than the interval, and no runtime running it: the
    # worker probes it with a process of its own (fall=1: one failed check would mark it down)
    spawn_log = tmp_path / "spawns"

    @sync_to_async
    def setup() -> tuple[Pool, Server]:
        pool = make_pool(
            "alone", check_interval=1.0, check_timeout=0.5, start_timeout=20.0, fall=1, rise=1
        )
        return pool, add_slow_stdio(pool, spawn_log)

    pool, server = await setup()

    # when checks run every interval
    for _ in range(60):
        await check_round(pool)
        if await sync_to_async(health_of)(server) == Health.UP:
            break

    # then the start was waited for across rounds (one process), never counted as a failure
    assert await sync_to_async(health_of)(server) == Health.UP
    for _ in range(ROUNDS_AFTER_UP):
        await check_round(pool)
        assert await sync_to_async(health_of)(server) == Health.UP
    assert spawns(spawn_log) == 1
    assert await sync_to_async(HealthCheck.objects.filter(server=server, ok=False).count)() == 0
    await sync_to_async(connections.close_all)()
