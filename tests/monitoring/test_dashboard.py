"""Dashboard pages: staff only; pools, servers, rules, flips and history with the right numbers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from balancing.engine.config import Health, PoolConfig, Snapshot, Strategy
from balancing.engine.errors import UpstreamTimeout
from balancing.engine.runtime import Runtime
from monitoring import live, views
from monitoring.models import HealthCheck
from monitoring.templatetags.dashboard import ms, target
from servers import services
from servers.choices import ServerState
from servers.models import AffinityRule, Flip, Pool, Server
from tests.helpers.fakes import Clock, fake_runtime, server


# ---- numbers (no database) -------------------------------------------------------------------
@pytest.fixture
async def clocked() -> AsyncIterator[tuple[Runtime, Clock]]:
    clock = Clock()
    runtime = fake_runtime(clock)
    pool = PoolConfig(
        id=1, slug="p", name="P", strategy=Strategy.ROUND_ROBIN,
        servers=(server(1, "a"), server(2, "b"), server(3, "c", health=Health.DOWN)),
    )  # fmt: skip
    await runtime.start(Snapshot(1, (pool,)))
    yield runtime, clock
    await runtime.close(grace=0)


async def test_pool_numbers_after_calls_give_rates_errors_p99_and_shares(
    clocked: tuple[Runtime, Clock],
) -> None:
    # given a sample before any call
    runtime, clock = clocked
    sampler = live.Sampler()
    sampler.record(runtime, clock.now)
    # when, over 4 seconds, 18 calls answer (2 as tool errors) and 2 time out
    for name in ["echo"] * 16 + ["fail"] * 2:
        await runtime.call_tool("p", name, {})
    for _ in range(2):
        with pytest.raises(UpstreamTimeout):
            await runtime.call_tool("p", "hang", {})
    clock.now += 4.0
    [pool] = live.all_numbers(live.runtime_configs(runtime), runtime, sampler)
    # then the pool shows 5 calls/s, 10 % errors (tool errors are answers), a p99 and its servers
    assert (pool.healthy, pool.total, pool.status) == (2, 3, "degraded")
    assert pool.calls_per_s == 5.0
    assert pool.error_rate == 0.1
    assert pool.p99_ms is not None
    assert pool.p99_ms <= 1.0
    a, b, c = pool.servers
    assert (a.name, a.health, a.up, b.up, c.health, c.up) == (
        "a",
        "unknown",
        True,
        True,
        "down",
        False,
    )
    assert a.share == b.share == 0.5
    assert c.share == 0.0
    assert a.calls_per_s == b.calls_per_s == 2.5
    assert a.sessions["idle"] + a.sessions["busy"] >= 1


async def test_pool_numbers_without_history_show_no_rates(clocked: tuple[Runtime, Clock]) -> None:
    runtime, _ = clocked
    [pool] = live.all_numbers(live.runtime_configs(runtime), runtime, live.Sampler())
    assert pool.calls_per_s is None
    assert pool.error_rate is None
    assert pool.p99_ms is None


async def test_server_latency_is_a_dash_until_it_served_a_call_and_once_idle(
    clocked: tuple[Runtime, Clock],
) -> None:
    # given a round-robin pool where one call went to one server
    runtime, clock = clocked
    await runtime.call_tool("p", "echo", {})
    [pool] = live.all_numbers(live.runtime_configs(runtime), runtime, live.Sampler())
    served, never = sorted(pool.servers[:2], key=lambda s: s.latency_ms is None)
    # then the server that served it has a latency and the other shows none ("—"), not 0.0 ms
    assert served.latency_ms is not None
    assert never.latency_ms is None
    assert ms(never.latency_ms) == "—"
    # and once idle for a minute, its decayed estimate is not shown as a latency either
    clock.now += 60.0
    [pool] = live.all_numbers(live.runtime_configs(runtime), runtime, live.Sampler())
    assert [s.latency_ms for s in pool.servers] == [None, None, None]


def test_p99_ms_is_the_bucket_holding_the_99th_percentile() -> None:
    buckets = [0] * 16
    buckets[2] = 98  # ≤ 5 ms
    buckets[9] = 2  # ≤ 1 s
    assert live.p99_ms(buckets) == 1000.0
    assert live.p99_ms([0] * 16) is None


# ---- pages -----------------------------------------------------------------------------------
@pytest.fixture
def pool(db: Any) -> Pool:
    pool = services.save(Pool(name="Search", slug="search", strategy="health_based"))
    for name in ("s1", "s2"):
        services.save(
            Server(pool=pool, name=name, transport="streamable_http", url="http://127.0.0.1:9/mcp")
        )
    return pool


def test_dashboard_anonymous_is_sent_to_login(client: Client, pool: Pool) -> None:
    for url in ("/dashboard/", "/dashboard/pools/search/", "/dashboard/pools/search/servers/s1/"):
        response = client.get(url)
        assert response.status_code == 302
        assert "/admin/login/" in response["Location"]


def test_dashboard_non_staff_user_is_sent_to_login(
    client: Client, pool: Pool, django_user_model: Any
) -> None:
    client.force_login(django_user_model.objects.create_user("app", password="x" * 12))
    assert client.get("/dashboard/").status_code == 302


def test_overview_down_server_counts_against_its_pool(admin_client: Client, pool: Pool) -> None:
    # given one of two servers marked down by a check
    s2 = pool.servers.get(name="s2")
    services.flip_health(
        s2.pk,
        expected=[Health.UNKNOWN],
        new=Health.DOWN,
        reason="3 failed checks",
        source=Flip.Source.CHECK,
    )
    # when on-call opens the overview
    page = admin_client.get("/dashboard/").content.decode()
    # then the pool row says 1 of 2 healthy, the down server is marked, with no CDN in sight
    assert 'data-pool="search" data-status="degraded"' in page
    assert ">1/2<" in page
    assert 'data-server="s2" data-health="down"' in page
    assert 'data-ws="/ws/dashboard/"' in page
    assert "/static/monitoring/dashboard.js" in page
    assert "https://" not in page


def test_pool_page_shows_servers_rules_and_flips(admin_client: Client, pool: Pool) -> None:
    s1 = pool.servers.get(name="s1")
    services.save(
        AffinityRule(
            pool=pool,
            order=1,
            match_on="api_key",
            pattern="billing",
            action="pin",
            pin_server=s1,
            description="billing stays put",
        )
    )
    services.flip_health(
        s1.pk,
        expected=[Health.UNKNOWN],
        new=Health.UP,
        reason="first check passed",
        source=Flip.Source.CHECK,
    )
    services.set_server_state(pool.servers.filter(name="s2"), ServerState.DISABLED)
    page = admin_client.get("/dashboard/pools/search/").content.decode()
    assert 'data-server="s1" data-health="up"' in page
    assert 'data-server="s2" data-health="disabled"' in page  # disabled servers still listed
    assert "pin → s1" in page
    assert "billing stays put" in page
    assert "first check passed" in page
    assert 'data-ws="/ws/dashboard/pool/search/"' in page


def test_pool_page_unknown_pool_is_404(admin_client: Client, pool: Pool) -> None:
    assert admin_client.get("/dashboard/pools/nope/").status_code == 404


def test_server_page_charts_history_and_lists_last_errors(admin_client: Client, pool: Pool) -> None:
    s1 = pool.servers.get(name="s1")
    now = timezone.now()
    for i in range(5):
        HealthCheck.objects.create(
            server=s1, at=now - timedelta(seconds=5 * (5 - i)), ok=True, latency_ms=2.0 + i
        )
    HealthCheck.objects.create(server=s1, at=now, ok=False, error="connection refused")
    page = admin_client.get("/dashboard/pools/search/servers/s1/").content.decode()
    assert page.count('class="ok"') == 5
    assert page.count('class="failed"') == 1
    assert "<polyline" in page
    assert "connection refused" in page


def test_overview_with_live_runtime_shows_its_numbers(
    admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given this process's runtime took 8 calls in 2 s (its loop paused while the page renders,
    # as a request thread would find it)
    clock = Clock()
    runtime = fake_runtime(clock)
    config = PoolConfig(id=1, slug="p", name="P", servers=(server(1, "a"), server(2, "b")))
    sampler = live.Sampler()
    monkeypatch.setattr(views, "_runtime", lambda: runtime)
    monkeypatch.setattr(live, "SAMPLER", sampler)

    async def traffic() -> None:
        await runtime.start(Snapshot(1, (config,)))
        sampler.record(runtime, clock.now)
        for _ in range(8):
            await runtime.call_tool("p", "echo", {})
        clock.now += 2.0

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(traffic())
        # when on-call opens the overview
        page = admin_client.get("/dashboard/").content.decode()
    finally:
        loop.run_until_complete(runtime.close(grace=0))
        loop.close()
    # then the pool's live numbers are on it
    assert 'data-pool="p" data-status="up"' in page
    assert ">2/2<" in page
    assert ">4.0<" in page
    assert ">0.0 %<" in page


def test_server_page_heading_shows_a_stdio_servers_whole_command() -> None:
    stdio = Server(
        transport="stdio", command="python", args=["-m", "mcp_server_time", "--tz", "a b"]
    )
    assert target(stdio) == "python -m mcp_server_time --tz 'a b'"
    assert target(Server(transport="streamable_http", url="http://h/mcp")) == "http://h/mcp"
