"""Passive health through the whole runtime on a fake clock (fake sessions, no network), and its
report to the database. The detector's own arithmetic (ejection times, half-open, decay, cap
rounding) is tested in tests/balancing/engine/test_outlier.py; here: that the runtime routes by it
and reports it, and that a server coming back ramps in from the moment it returned."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from balancing import adapter
from balancing.engine.config import (
    Health,
    PoolConfig,
    RetryPolicy,
    ServerConfig,
    Snapshot,
    Transport,
)
from balancing.engine.errors import UpstreamClosed
from balancing.engine.outlier import Ejected, OutlierEvent, Recovered
from balancing.engine.runtime import Runtime
from servers.models import Flip, Server
from tests.helpers.fakes import Clock, FakeServers, fake_runtime
from tests.monitoring.conftest import add_http, make_pool


def pool_of(count: int) -> PoolConfig:
    servers = tuple(
        ServerConfig(id=i, name=f"s{i}", transport=Transport.STDIO, command="x", health=Health.UP)
        for i in range(1, count + 1)
    )
    return PoolConfig(
        id=1, slug="p", servers=servers, consecutive_failures=3, retry_policy=RetryPolicy.NEVER
    )


async def start(count: int, broken: set[str]) -> tuple[Runtime, Clock, list[Any]]:
    clock = Clock()
    events: list[tuple[str, OutlierEvent]] = []
    tools = {f"s{i}": [{"name": "t", "inputSchema": {"type": "object"}}] for i in range(1, 9)}
    runtime = fake_runtime(
        clock,
        servers=FakeServers(tools, broken),
        rng=random.Random(3),
        on_outlier=lambda slug, server, event: events.append((server.name, event)),
    )
    await runtime.start(Snapshot(1, (pool_of(count),)))
    return runtime, clock, events


async def call_many(runtime: Runtime, n: int) -> list[str]:
    answers = []
    for _ in range(n):
        try:
            result = await runtime.call_tool("p", "t", {})
            answers.append(result["content"][0]["text"])
        except UpstreamClosed as exc:
            answers.append(f"failed:{exc.server}")
    return answers


async def test_runtime_ejects_a_failing_server_and_half_open_trial_brings_it_back() -> None:
    # given three servers, one of which fails every call
    broken = {"s2"}
    runtime, clock, events = await start(3, broken)
    try:
        # when traffic flows: the broken one fails `consecutive_failures` times, then gets nothing
        answers = await call_many(runtime, 30)
        assert answers.count("failed:s2") == 3
        assert [(name, type(e)) for name, e in events] == [("s2", Ejected)]
        assert "s2" not in await call_many(runtime, 20)

        # when the ejection time is over and the server works again
        broken.clear()
        clock.now = events[0][1].until + 0.1
        answers = await call_many(runtime, 30)

        # then one trial call closes it, it is back, and it ramps in from now (slow start)
        assert "s2" in answers
        assert [(name, type(e)) for name, e in events] == [("s2", Ejected), ("s2", Recovered)]
        endpoint = runtime.pool("p").endpoints[2]
        assert endpoint.up_since == clock.now
        assert endpoint.slow_start_fraction(clock.now, 30.0) < 0.2
    finally:
        await runtime.close(grace=0)


async def test_runtime_never_ejects_more_than_half_the_pool() -> None:
    # given a two-server pool whose servers both fail every call
    runtime, _, events = await start(2, {"s1", "s2"})
    try:
        await call_many(runtime, 40)

        # then only one was ejected: the other keeps taking (failing) calls, no 503 storm
        assert len([e for _, e in events if isinstance(e, Ejected)]) == 1
        ejected = runtime.pool("p").outliers.out_of_service()
        assert ejected == 1
    finally:
        await runtime.close(grace=0)


@pytest.mark.django_db
def test_record_outlier_reports_ejection_and_recovery_as_passive_flips() -> None:
    pool = make_pool()
    server = add_http(pool, "a", "http://127.0.0.1:9/mcp")
    Server.objects.filter(pk=server.pk).update(health=Health.UP)

    assert adapter.record_outlier(server.pk, ejected=True)
    # a second web process ejecting it too counts an ejection but flips nothing
    assert not adapter.record_outlier(server.pk, ejected=True)
    server.refresh_from_db()
    assert (server.health, server.ejections) == (Health.EJECTED, 2)
    assert adapter.record_outlier(server.pk, ejected=False)

    flips = list(Flip.objects.order_by("at", "id").values_list("old", "new", "source"))
    assert flips == [("up", "ejected", "passive"), ("ejected", "up", "passive")]
    server.refresh_from_db()
    assert server.health == Health.UP
    assert server.health_changed_at is not None
    assert not math.isnan(server.health_changed_at.timestamp())
