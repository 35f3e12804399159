"""Health reaching the runtime: a server marked down stops taking calls, one that comes back
ramps back in, passive ejections reach the database, a passing check un-ejects."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from balancing.engine.config import Health
from balancing.engine.errors import ConnectFailed
from balancing.host import RuntimeHost
from monitoring import checks
from servers.models import Flip, Pool, Server
from tests.balancing.engine.test_sessions import make
from tests.helpers.fakes import Clock
from tests.helpers.wait import until
from tests.monitoring.conftest import Restartable, add_http, make_pool, who_answers

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.upstream]


@pytest.fixture
async def host(settings: Any) -> AsyncIterator[RuntimeHost]:
    settings.MCPPOOL_CONFIG_POLL_SECONDS = 0.2
    h = RuntimeHost()
    yield h
    await h.stop()
    await sync_to_async(connections.close_all)()


def endpoint(host: RuntimeHost, name: str) -> Any:
    return next(e for e in host.runtime.pool("web").endpoints.values() if e.config.name == name)


@sync_to_async
def setup_pool(a: Restartable, b: Restartable, **knobs: Any) -> tuple[Pool, Server, Server]:
    pool = make_pool("web", **knobs)
    return pool, add_http(pool, "a", a.url), add_http(pool, "b", b.url)


@sync_to_async
def run_checks(pool: Pool, rounds: int = 1) -> None:
    for _ in range(rounds):
        checks.run_pool_checks(pool.pk)


@sync_to_async
def db_health(server: Server) -> str:
    return Server.objects.values_list("health", flat=True).get(pk=server.pk)


async def test_down_server_stops_taking_calls_and_comes_back_ramping_in(
    host: RuntimeHost, restartable: Callable[[str], Restartable]
) -> None:
    # given two replicas, both checked up, serving through the runtime
    a, b = restartable("a"), restartable("b")
    pool, _, server_b = await setup_pool(a, b, fall=2, rise=2, slow_start_window=30.0)
    await run_checks(pool)
    await host.start()
    assert set(await who_answers(host, 10)) == {"a", "b"}

    # when b stops and `fall` checks fail
    b.stop()
    await run_checks(pool, rounds=2)

    # then the database says down, the runtime applies it, and b takes no more calls
    assert await db_health(server_b) == Health.DOWN
    assert await until(lambda: endpoint(host, "b").config.health is Health.DOWN)
    assert await who_answers(host, 20) == Counter({"a": 20})

    # when b is started again and passes `rise` checks
    b.start()
    await run_checks(pool, rounds=2)

    # then it is recovering: back in, on a slow-start ramp, and it gets calls again
    assert await db_health(server_b) == Health.RECOVERING
    assert await until(lambda: endpoint(host, "b").config.health is Health.RECOVERING)
    now = host.runtime.clock()
    assert endpoint(host, "b").slow_start_fraction(now, 30.0) < 0.5  # ramping, not full weight
    assert await until(lambda: _answers_include(host, "b"))


async def _answers_include(host: RuntimeHost, name: str) -> bool:
    return name in await who_answers(host, 10)


async def test_passive_ejection_reaches_the_database_and_a_passing_check_unejects(
    host: RuntimeHost, restartable: Callable[[str], Restartable]
) -> None:
    # given two replicas in service; the runtime ejects after 3 failures in a row
    a, b = restartable("a"), restartable("b")
    pool, _, server_b = await setup_pool(a, b, consecutive_failures=3)
    await run_checks(pool)
    await host.start()

    # when b dies and live traffic keeps hitting it (no active check runs meanwhile)
    b.stop()
    answers = await who_answers(host, 30)

    # then no call failed (undelivered calls went to a), b was ejected, and the DB knows
    assert sum(answers.values()) == 30
    assert endpoint(host, "b").outlier.ejected(host.runtime.clock())
    assert await until(lambda: _is(db_health(server_b), Health.EJECTED))
    flip = await sync_to_async(lambda: Flip.objects.filter(server=server_b).first())()
    assert flip is not None
    assert (flip.new, flip.source) == ("ejected", "passive")

    # when b is back and an active check passes
    b.start()
    await run_checks(pool)

    # then the check ends the ejection everywhere: DB up, the runtime un-ejects and ramps b in
    assert await db_health(server_b) == Health.UP
    assert await until(lambda: endpoint(host, "b").config.health is Health.UP)
    ep = endpoint(host, "b")
    assert not ep.outlier.in_cycle
    assert math.isfinite(ep.up_since)  # slow start from the moment it came back
    assert await until(lambda: _answers_include(host, "b"))


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def test_health_change_reaches_the_runtime_by_redis_event(
    redis_events: str, restartable: Callable[[str], Restartable]
) -> None:
    # given a runtime listening on Redis, with a poll too slow to matter
    a, b = restartable("a"), restartable("b")
    pool, _, _ = await setup_pool(a, b, fall=1)
    await run_checks(pool)
    host = RuntimeHost()
    try:
        await host.start()
        await asyncio.wait_for(host.events_joined.wait(), 10)

        # when a check marks b down (the flip publishes health.changed on commit)
        b.stop()
        await run_checks(pool)

        # then the runtime hears it and applies it
        assert await until(lambda: endpoint(host, "b").config.health is Health.DOWN)
    finally:
        await host.stop()
        await sync_to_async(connections.close_all)()


async def test_session_pool_reconnects_at_once_when_told_the_server_is_back() -> None:
    # given a session pool whose server refused several reconnects (backoff grew past 2 s)
    clock = Clock()
    sp, opener = make(clock=clock)
    opener.fail = True
    for attempt in range(4):
        if attempt:
            clock.now += 10  # past the previous backoff: another attempt, refused again
        with pytest.raises(ConnectFailed):
            async with sp.borrow():
                pass
    opener.fail = False
    with pytest.raises(ConnectFailed, match="reconnecting"):  # still backing off
        async with sp.borrow():
            pass

    # when a health check says the server is back
    sp.reconnect_now()

    # then the next borrow connects without waiting out the backoff
    async with sp.borrow() as session:
        assert session is opener.sessions[0]
