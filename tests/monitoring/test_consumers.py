"""The dashboard WebSocket: staff get live numbers at a bounded rate; anyone else is refused."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import pytest
from channels.layers import channel_layers, get_channel_layer
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User

from balancing.engine.config import Health, PoolConfig, Snapshot
from balancing.engine.runtime import Runtime
from monitoring import live
from monitoring.routing import websocket_urlpatterns
from servers.events import CONTROL_GROUP, HEALTH_CHANGED, HEALTH_CHECKED
from tests.helpers.fakes import Clock, fake_runtime, server

POOL = PoolConfig(id=1, slug="p", name="P", servers=(server(1, "a"), server(2, "b")))
TIMEOUT = 5.0


@pytest.fixture(autouse=True)
def _connection_cleanup_allowed(django_db_blocker: Any) -> Iterator[None]:
    # Channels closes stale database connections around every consumer message; when an earlier
    # test left a connection object in a thread, that counts as database access. Nothing here
    # queries the database (no test database is even set up).
    with django_db_blocker.unblock():
        yield


@pytest.fixture
async def runtime(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Runtime]:
    rt = fake_runtime(Clock())
    await rt.start(Snapshot(1, (POOL,)))

    async def source() -> Runtime:
        return rt

    async def no_flips(slug: str) -> list[dict[str, Any]]:
        return []

    monkeypatch.setattr(live, "runtime_source", source)
    monkeypatch.setattr(live, "recent_flips", no_flips)
    monkeypatch.setattr(live, "SAMPLER", live.Sampler())
    yield rt
    await rt.close(grace=0)
    assert live._subscribers == 0  # every test closed its pages


def staff() -> User:
    return User(username="oncall", is_staff=True, is_active=True)


async def open_page(path: str, user: Any) -> tuple[WebsocketCommunicator, bool]:
    router = URLRouter(websocket_urlpatterns)  # type: ignore[arg-type]  # stubs: channels' own patterns only
    communicator = WebsocketCommunicator(router, path)
    communicator.scope["user"] = user  # type: ignore[typeddict-unknown-key]  # what AuthMiddleware sets
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    return communicator, connected


async def test_consumer_staff_on_overview_receives_pools(runtime: Runtime) -> None:
    page, connected = await open_page("/ws/dashboard/", staff())
    assert connected
    message = await page.receive_json_from(timeout=TIMEOUT)
    assert message["type"] == "overview"
    [pool] = message["pools"]
    assert (pool["slug"], pool["healthy"], pool["total"], pool["status"]) == ("p", 2, 2, "up")
    assert [s["name"] for s in pool["servers"]] == ["a", "b"]
    await page.disconnect()


@pytest.mark.parametrize(
    "user", [AnonymousUser(), User(username="app", is_staff=False, is_active=True)]
)
async def test_consumer_without_staff_login_is_refused(runtime: Runtime, user: Any) -> None:
    _, connected = await open_page("/ws/dashboard/", user)
    assert not connected
    assert live._subscribers == 0  # a refused page starts nothing


async def test_consumer_pool_page_receives_only_its_pool(runtime: Runtime) -> None:
    page, connected = await open_page("/ws/dashboard/pool/p/", staff())
    assert connected
    message = await page.receive_json_from(timeout=TIMEOUT)
    assert message["type"] == "pool"
    assert message["pool"]["slug"] == "p"
    assert {s["name"]: s["health"] for s in message["pool"]["servers"]} == {
        "a": "unknown",
        "b": "unknown",
    }
    await page.disconnect()


async def test_consumer_health_change_is_pushed_without_waiting_for_the_tick(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a page open, and a publisher whose periodic push is far away
    monkeypatch.setattr(live, "INTERVAL", 60.0)
    page, _ = await open_page("/ws/dashboard/pool/p/", staff())
    await page.receive_json_from(timeout=TIMEOUT)
    # when a check marks b down (the runtime reloads, health.changed goes out)
    down = replace(POOL, servers=(POOL.servers[0], replace(POOL.servers[1], health=Health.DOWN)))
    await runtime.apply(Snapshot(2, (down,)))
    layer = get_channel_layer()
    assert layer is not None
    await layer.group_send(
        CONTROL_GROUP, {"type": HEALTH_CHANGED, "server_id": 2, "health": "down"}
    )
    # then the page hears it at once, not a minute later
    message = await page.receive_json_from(timeout=TIMEOUT)
    servers = {s["name"]: (s["health"], s["up"]) for s in message["pool"]["servers"]}
    assert servers == {"a": ("unknown", True), "b": ("down", False)}
    assert message["pool"]["status"] == "degraded"
    await page.disconnect()


async def test_consumer_busy_pool_and_event_storm_keep_the_publishers_minimum_gap(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given an open page, and a record of when the publisher sends (on its own clock)
    sent_at: list[float] = []
    publish = live.Publisher.publish

    async def recorded(self: live.Publisher) -> None:
        sent_at.append(asyncio.get_running_loop().time())
        await publish(self)

    monkeypatch.setattr(live.Publisher, "publish", recorded)
    page, _ = await open_page("/ws/dashboard/", staff())
    await page.receive_json_from(timeout=TIMEOUT)
    layer = get_channel_layer()
    assert layer is not None

    # when traffic flows and a health event arrives every 20 ms
    for _ in range(100):
        await runtime.call_tool("p", "echo", {})
        await layer.group_send(CONTROL_GROUP, {"type": HEALTH_CHANGED, "server_id": 1})
        await asyncio.sleep(0.02)
    received = 0
    while not await page.receive_nothing(timeout=0.05):
        await page.receive_json_from(timeout=TIMEOUT)
        received += 1

    # then the page got numbers, and never two sends closer than the minimum gap: the events
    # and the traffic nudge the publisher, they do not drive its rate (a slow machine only
    # widens the gaps, so this cannot flake)
    assert received >= 1
    gaps = [later - earlier for earlier, later in itertools.pairwise(sent_at)]
    assert gaps
    assert min(gaps) >= live.MIN_GAP * 0.99
    await page.disconnect()


async def test_consumer_last_page_closed_stops_the_publisher(runtime: Runtime) -> None:
    first, _ = await open_page("/ws/dashboard/", staff())
    second, _ = await open_page("/ws/dashboard/pool/p/", staff())
    publisher = live._publisher
    assert publisher is not None
    assert publisher.running
    await first.disconnect()
    assert publisher.running  # one page still open
    await second.disconnect()
    assert not publisher.running
    assert live._publisher is None


async def test_consumer_check_now_result_reaches_the_pool_page_at_once(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a pool page open, its periodic push far away (on a channel layer of this event loop:
    # a Redis layer left receiving by an earlier test's loop refuses another loop's receive)
    channel_layers.backends.clear()
    monkeypatch.setattr(live, "INTERVAL", 60.0)
    page, _ = await open_page("/ws/dashboard/pool/p/", staff())
    await page.receive_json_from(timeout=TIMEOUT)
    other, _ = await open_page("/ws/dashboard/", staff())
    await other.receive_json_from(timeout=TIMEOUT)
    layer = get_channel_layer()
    assert layer is not None
    event = {
        "type": HEALTH_CHECKED, "pool": "p", "server": "b", "ok": False,
        "error": "connection refused", "latency_ms": None, "at": "2026-12-02T05:00:00+00:00",
    }  # fmt: skip
    # when the worker announces the result of a queued "check now" (again until the publisher,
    # started with the page, has joined the control group)
    check: dict[str, Any] | None = None
    for _ in range(100):
        await layer.group_send(CONTROL_GROUP, event)
        while check is None and not await page.receive_nothing(timeout=0.05):
            message = await page.receive_json_from(timeout=TIMEOUT)
            check = message if message["type"] == "check" else None
        if check is not None:
            break
    # then the pool's page gets it (no numbers push is due), and says how it went
    assert check is not None
    assert (check["server"], check["ok"]) == ("b", False)
    assert check["error"] == "connection refused"
    await page.disconnect()
    await other.disconnect()
