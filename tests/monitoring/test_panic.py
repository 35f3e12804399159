"""Panic is a state people can see (REST status function, dashboard banner, metric, log line), and
a call in panic reaches a live server instead of failing on the first dead one it was given."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from django.test import Client

from balancing.api.views import health_summary
from balancing.engine.config import Health, PoolConfig, ServerConfig, Snapshot, Strategy
from balancing.engine.errors import ConnectFailed
from balancing.engine.runtime import NoHealthyServer, Runtime
from balancing.errors_http import from_upstream
from balancing.host import RuntimeHost
from monitoring import live
from monitoring.metrics import RuntimeCollector
from servers import services
from servers.models import Flip, Pool, Server
from tests.helpers.fakes import Clock, FakeServers, FakeSession, server

DEAD = ("a", "b")


def pool_config(*servers: ServerConfig) -> PoolConfig:
    return PoolConfig(
        id=1, slug="p", name="P", strategy=Strategy.ROUND_ROBIN, panic_threshold=50.0,
        servers=servers,
    )  # fmt: skip


def runtime_with_dead(dead: tuple[str, ...], clock: Clock) -> Runtime:
    """Servers named in `dead` refuse connections; the others answer."""
    servers = FakeServers()

    async def open_session(pool: PoolConfig, config: ServerConfig) -> FakeSession:
        if config.name in dead:
            raise ConnectFailed("connection refused", server=config.name)
        return FakeSession(config.name, servers)

    return Runtime(clock=clock, open_session=open_session)


@pytest.fixture
async def panicking() -> AsyncIterator[Runtime]:
    """A pool of three: a and b down and unreachable, c up (1 of 3 healthy: panic at 50 %)."""
    clock = Clock()
    runtime = runtime_with_dead(DEAD, clock)
    down = {"health": Health.DOWN}
    config = pool_config(server(1, "a", **down), server(2, "b", **down), server(3, "c"))
    await runtime.start(Snapshot(1, (config,)))
    yield runtime
    await runtime.close(grace=0)


async def test_call_in_panic_failing_undelivered_is_retried_until_a_reachable_server(
    panicking: Runtime,
) -> None:
    # when calls flow while the pool panics (the balancer also picks the two dead servers)
    results = [await panicking.call_tool("p", "echo", {}) for _ in range(12)]
    # then every call reached c, and they were made in panic
    assert all(r["content"][0]["text"] == "c" for r in results)
    assert panicking.metrics.panics["p"] == 12 + panicking.metrics.retries["p"]
    assert panicking.metrics.retries["p"] > 0


async def test_call_failing_on_every_server_is_a_503_naming_each_and_why() -> None:
    clock = Clock()
    runtime = runtime_with_dead(("a", "b", "c"), clock)
    await runtime.start(Snapshot(1, (pool_config(server(1, "a"), server(2, "b"), server(3, "c")),)))
    try:
        with pytest.raises(NoHealthyServer) as raised:
            await runtime.call_tool("p", "echo", {})
    finally:
        await runtime.close(grace=0)
    error = from_upstream(raised.value)
    assert error.status == 503
    message = str(raised.value)
    for name in ("a", "b", "c"):
        assert f"{name}: " in message
    assert message.count("connection refused") == 3


async def test_pool_panic_metric_is_1_in_panic_and_0_when_healthy(panicking: Runtime) -> None:
    def gauge(runtime: Runtime) -> float:
        families = {m.name: m for m in RuntimeCollector(lambda: runtime).collect()}
        [sample] = families["mcppool_pool_panic"].samples
        assert sample.labels == {"pool": "p"}
        return sample.value

    assert gauge(panicking) == 1.0
    healthy = pool_config(server(1, "a"), server(2, "b"), server(3, "c"))
    await panicking.apply(Snapshot(2, (healthy,)))
    assert gauge(panicking) == 0.0


async def test_rest_pool_status_says_panic_with_the_reason_and_clears_when_healthy(
    panicking: Runtime,
) -> None:
    # the REST pool status (`GET /api/v1/pools/<slug>`'s `health`), as the view builds it
    summary = health_summary(panicking.pools["p"], panicking.clock())
    assert summary.panic
    assert "1 of 3 servers healthy" in summary.panic_reason
    healthy = pool_config(server(1, "a"), server(2, "b"), server(3, "c"))
    await panicking.apply(Snapshot(2, (healthy,)))
    summary = health_summary(panicking.pools["p"], panicking.clock())
    assert not summary.panic
    assert summary.panic_reason == ""


async def test_pool_numbers_in_panic_carry_the_reason(panicking: Runtime) -> None:
    [numbers] = live.all_numbers(live.runtime_configs(panicking), panicking, live.Sampler())
    assert numbers.panic
    assert "1 of 3 servers healthy" in numbers.panic_reason
    assert numbers.as_json()["panic_reason"] == numbers.panic_reason  # the live update has it


async def test_host_logs_entering_and_leaving_panic_once(
    panicking: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    host = RuntimeHost()
    host.runtime = panicking
    caplog.set_level(logging.INFO, logger="balancing.host")
    host.watch_panic()
    host.watch_panic()  # still in panic: said once
    healthy = pool_config(server(1, "a"), server(2, "b"), server(3, "c"))
    await panicking.apply(Snapshot(2, (healthy,)))
    host.watch_panic()
    lines = [r.getMessage() for r in caplog.records if "panic" in r.getMessage()]
    assert len(lines) == 2
    assert lines[0].startswith("pool p in panic: 1 of 3 servers healthy")
    assert lines[1] == "pool p out of panic: 3 of 3 servers healthy"


# ---- pages (stored health: this test process runs no runtime) --------------------------------
@pytest.fixture
def pool(db: Any) -> Pool:
    pool = services.save(Pool(name="Search", slug="search", panic_threshold=50.0))
    for name in ("s1", "s2", "s3"):
        services.save(
            Server(pool=pool, name=name, transport="streamable_http", url="http://127.0.0.1:9/mcp")
        )
    services.save(Pool(name="Calm", slug="calm"))
    return pool


def mark_down(pool: Pool, *names: str) -> None:
    for s in pool.servers.filter(name__in=names):
        services.flip_health(
            s.pk, expected=[Health.UNKNOWN], new=Health.DOWN, reason="3 failed checks",
            source=Flip.Source.CHECK,
        )  # fmt: skip


def test_dashboard_panic_banner_on_overview_and_pool_page(admin_client: Client, pool: Pool) -> None:
    # given two of three servers down: the pool is below its 50 % panic threshold
    mark_down(pool, "s2", "s3")
    # when on-call opens the overview and the pool's page
    overview = admin_client.get("/dashboard/").content.decode()
    page = admin_client.get("/dashboard/pools/search/").content.decode()
    # then both say panic, and why
    assert '<div class="banner" id="panic">' in overview
    assert '<li data-pool="search"><b>Search</b>: 1 of 3 servers healthy' in overview
    assert 'data-pool="calm"><b>' not in overview
    assert '<p class="banner" id="panic" data-panic="true">' in page
    assert "1 of 3 servers healthy (33% &lt; panic threshold 50%)" in page


def test_dashboard_no_panic_banner_when_healthy_enough(admin_client: Client, pool: Pool) -> None:
    mark_down(pool, "s3")
    overview = admin_client.get("/dashboard/").content.decode()
    page = admin_client.get("/dashboard/pools/search/").content.decode()
    assert '<div class="banner" id="panic" hidden>' in overview
    assert 'data-panic="false" hidden>' in page
