"""The runtime host: config from the database reaches the live runtime, by poll and by event."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from balancing.host import BackgroundTaskDied, RuntimeHost
from servers import services
from servers.models import Pool, Server
from tests.upstreams import procs

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.upstream]


def _make_pool() -> Pool:
    pool = services.save(Pool(name="Echo", slug="echo"))
    config = procs.faulty_stdio_config(name="one")
    services.save(
        Server(pool=pool, name="one", transport="stdio", command=config.command,
               args=list(config.args), cwd=config.cwd)
    )  # fmt: skip
    return pool


def _add_server(pool: Pool) -> int:
    config = procs.faulty_stdio_config(name="two")
    services.save(
        Server(pool=pool, name="two", transport="stdio", command=config.command,
               args=list(config.args), cwd=config.cwd)
    )  # fmt: skip
    return services.config_version()


async def _until(predicate: Any, seconds: float = 10.0) -> bool:
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.fixture
async def host() -> AsyncIterator[RuntimeHost]:
    h = RuntimeHost()
    yield h
    await h.stop()
    await sync_to_async(connections.close_all)()  # the test's own DB thread, before teardown


async def test_host_starts_with_db_config_and_serves_calls(host: RuntimeHost) -> None:
    await sync_to_async(_make_pool)()
    await host.start()
    result = await host.runtime.call_tool("echo", "echo", {"text": "hi"})
    assert result["content"][0]["text"] == "hi"


async def test_host_config_change_reaches_runtime_by_polling(
    host: RuntimeHost, settings: Any
) -> None:
    # given the embedded default: no events cross processes, only the version poll
    settings.REDIS_URL = ""
    settings.MCPPOOL_CONFIG_POLL_SECONDS = 0.5
    pool = await sync_to_async(_make_pool)()
    await host.start()
    # when a server is added through the service layer
    version = await sync_to_async(_add_server)(pool)
    # then the runtime applies it without a restart
    assert await _until(lambda: host.runtime.version >= version)
    assert {e.config.name for e in host.runtime.pool("echo").endpoints.values()} == {"one", "two"}


async def test_host_config_change_reaches_runtime_by_redis_event(
    host: RuntimeHost, redis_events: str
) -> None:
    # given a real Redis channel layer and a poll too slow to matter
    pool = await sync_to_async(_make_pool)()
    await host.start()
    await asyncio.wait_for(host.events_joined.wait(), 10)
    version = await sync_to_async(_add_server)(pool)
    assert await _until(lambda: host.runtime.version >= version)
    assert len(host.runtime.pool("echo").endpoints) == 2


async def test_host_database_unavailable_keeps_serving_then_follows_it_again(
    host: RuntimeHost, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a host polling the database often
    settings.REDIS_URL = ""
    settings.MCPPOOL_CONFIG_POLL_SECONDS = 0.1
    pool = await sync_to_async(_make_pool)()
    await host.start()
    # when the database is down for several polls
    failed_polls: list[int] = []

    def database_down() -> int:
        failed_polls.append(1)
        raise ConnectionError("database is down")

    monkeypatch.setattr("balancing.adapter.config_version", database_down)
    assert await _until(lambda: len(failed_polls) >= 3)
    # then calls are still served on the last known config
    result = await host.runtime.call_tool("echo", "echo", {"text": "still serving"})
    assert result["content"][0]["text"] == "still serving"
    # and when it is back, the poll loop is still alive: a change made meanwhile arrives
    monkeypatch.undo()
    version = await sync_to_async(_add_server)(pool)
    assert await _until(lambda: host.runtime.version >= version)
    assert {e.config.name for e in host.runtime.pool("echo").endpoints.values()} == {"one", "two"}


async def test_host_stop_raises_when_a_background_loop_died(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a host whose config poll dies on an error it does not expect
    settings.MCPPOOL_CONFIG_POLL_SECONDS = 0.05
    await sync_to_async(_make_pool)()

    def broken_reload(**kwargs: Any) -> Any:
        raise ZeroDivisionError("a bug in the poll loop")

    host = RuntimeHost()
    await host.start()
    monkeypatch.setattr(host, "reload", broken_reload)
    monkeypatch.setattr("balancing.host.log.warning", broken_reload)  # even its error path
    poll = next(t for t in host._tasks if t.get_name() == "mcppool-config-poll")
    assert await _until(poll.done)
    # then stopping says so, loudly, after cleaning up
    with pytest.raises(BackgroundTaskDied, match="mcppool-config-poll"):
        await host.stop()
    assert not host.started
    await sync_to_async(connections.close_all)()
