"""A health flip reaches runtimes as an event applied to its one server — no config reload, no
config version bump — so a long `mcppool apply` never holds up check results, and a thousand
servers coming up do not keep every web process reloading."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connection, connections

from balancing import adapter
from balancing.engine.config import Health, PoolConfig, Snapshot
from balancing.engine.runtime import Runtime
from balancing.host import RuntimeHost
from monitoring import checks
from monitoring.probes import ProbeResult
from servers import services
from servers.models import Flip, Server
from tests.helpers.fakes import Clock, fake_runtime, server
from tests.monitoring.conftest import add_http, make_pool


@pytest.fixture
async def runtime() -> AsyncIterator[Runtime]:
    rt = fake_runtime(Clock())
    pool = PoolConfig(id=1, slug="p", servers=(server(1, "a"), server(2, "b")))
    await rt.start(Snapshot(7, (pool,)))
    yield rt
    await rt.close(grace=0)


async def test_apply_health_down_takes_that_server_out_without_a_reload(runtime: Runtime) -> None:
    # when b's health flips to down (the event of a check)
    assert runtime.apply_health(2, Health.DOWN, 1.0)
    # then calls go to a only, the config version is the one loaded, b alone changed
    live = runtime.pool("p")
    picked = {live.balancer.pick(live.endpoint_list(), runtime.clock()).endpoint.config.name  # type: ignore[union-attr]
              for _ in range(20)}  # fmt: skip
    assert picked == {"a"}
    assert runtime.version == 7
    assert [s.health for s in live.config.servers] == [Health.UNKNOWN, Health.DOWN]
    # and the same event again changes nothing
    assert not runtime.apply_health(2, Health.DOWN, 1.0)


async def test_apply_health_back_up_ramps_in_and_takes_calls(runtime: Runtime) -> None:
    runtime.apply_health(2, Health.DOWN, 1.0)
    runtime.apply_health(2, Health.UP, 2.0)
    endpoint = runtime.pool("p").endpoints[2]
    assert endpoint.up_since == runtime.clock()  # slow start from now
    assert endpoint.available(runtime.clock())


def test_flip_health_does_not_bump_the_config_version(db: None) -> None:
    pool = make_pool()
    a = add_http(pool, "a", "http://127.0.0.1:9/mcp")
    before = services.config_version()
    assert services.flip_health(
        a.pk, expected=[Health.UNKNOWN], new=Health.UP, reason="ok", source=Flip.Source.CHECK
    )
    assert services.config_version() == before


@pytest.mark.django_db(transaction=True)
async def test_host_poll_applies_a_flip_to_its_server_without_reloading(settings: Any) -> None:
    # given a runtime host in the embedded default (no events: the poll only, run by hand here)
    settings.REDIS_URL = ""
    settings.MCPPOOL_CONFIG_POLL_SECONDS = 3600

    @sync_to_async
    def setup() -> Server:
        pool = make_pool()
        add_http(pool, "a", "http://127.0.0.1:9/mcp")
        return add_http(pool, "b", "http://127.0.0.1:9/mcp")

    b = await setup()
    host = RuntimeHost()
    try:
        await host.start()
        version = host.runtime.version
        # when a check flips b down
        await sync_to_async(services.flip_health)(
            b.pk, expected=[Health.UNKNOWN], new=Health.DOWN, reason="3 failed checks",
            source=Flip.Source.CHECK,
        )  # fmt: skip
        # then the next poll applies it to b, and nothing was reloaded
        assert await host.poll_health() == 1
        live = host.runtime.pool("web")
        assert live.endpoints[b.pk].config.health is Health.DOWN
        assert host.runtime.version == version
        assert await host.poll_health() == 0  # already applied
    finally:
        await host.stop()
        await sync_to_async(connections.close_all)()


@pytest.mark.django_db(transaction=True)
def test_check_flip_is_written_while_a_long_apply_holds_the_config_version() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("SQLite has one writer at a time: an open apply holds every write")
    # given a server and a config change in progress in another connection (a large apply)
    pool = make_pool()
    a = add_http(pool, "a", "http://127.0.0.1:9/mcp")
    config = adapter.pool_config(pool, [a], [])
    holding, release = threading.Event(), threading.Event()

    def apply() -> None:
        try:
            with services.config_change("apply of 1000 changes"):
                services.bump_config_version()  # the version row stays locked until commit
                holding.set()
                release.wait(60)
        finally:
            connections.close_all()

    applying = threading.Thread(target=apply)
    applying.start()
    assert holding.wait(30)
    written = threading.Event()

    def check() -> None:
        try:
            checks.record(a.pk, ProbeResult(ok=True, latency_ms=1.0), config)
            written.set()
        finally:
            connections.close_all()

    checking = threading.Thread(target=check)
    checking.start()
    try:
        # when a check result (a flip: unknown → up) comes in meanwhile
        # then it is written while the apply is still open
        assert written.wait(30), "the check waited for the apply"
    finally:
        release.set()
        applying.join(60)
        checking.join(60)
    assert Server.objects.get(pk=a.pk).health == Health.UP
