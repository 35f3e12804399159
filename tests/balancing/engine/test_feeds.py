"""A server's feed of change notifications (`engine/feeds.py`), against a scripted upstream
session: what it subscribes upstream for its listeners, what each listener gets, and that it
closes its session once nobody listens — however the listeners leave."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from balancing.engine.config import Era, ServerConfig, Transport
from balancing.engine.errors import UpstreamTimeout
from balancing.engine.feeds import Feed, Interest, Listener
from balancing.engine.upstream import MessageHandler
from tests.helpers.wait import until

SERVER = ServerConfig(id=7, name="s", transport=Transport.STREAMABLE_HTTP, url="http://x/mcp")
CAPABILITIES = {"tools": {"listChanged": True}, "resources": {"subscribe": True}}


class Scripted:
    """A handshake-era upstream session: records requests; `hold` makes them wait."""

    def __init__(self, capabilities: dict[str, Any] = CAPABILITIES) -> None:
        self.era = Era.HANDSHAKE
        self.server_capabilities = capabilities
        self.alive = True
        self.closed = False
        self.requests: list[tuple[str, Any]] = []
        self.hold: asyncio.Event | None = None
        self.fail: Exception | None = None
        self.on_event: MessageHandler | None = None

    async def request(self, method: str, params: Any, **_: Any) -> dict[str, Any]:
        self.requests.append((method, params))
        if self.hold is not None:
            await self.hold.wait()
        if self.fail is not None:
            raise self.fail
        return {}

    async def close(self) -> None:
        self.closed = True
        self.alive = False


def _feed(session: Scripted) -> Feed:
    async def opener(on_event: MessageHandler) -> Any:
        session.on_event = on_event
        return session

    return Feed(SERVER, opener, timeout=5.0)


def _listener(*uris: str, tools: bool = False) -> Listener:
    kinds = frozenset({"toolsListChanged"} if tools else ())
    return Listener("p", Interest(kinds, frozenset(uris)))


async def test_each_listener_gets_only_what_it_asked_for() -> None:
    session = Scripted()
    feed = _feed(session)
    tools, watcher = _listener(tools=True), _listener("file:///a")
    await feed.add(tools)
    await feed.add(watcher)
    assert session.requests == [("resources/subscribe", {"uri": "file:///a"})]
    assert session.on_event is not None
    await session.on_event({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
    await session.on_event({"jsonrpc": "2.0", "method": "notifications/resources/updated",
                            "params": {"uri": "file:///a"}})  # fmt: skip
    await session.on_event({"jsonrpc": "2.0", "method": "notifications/resources/updated",
                            "params": {"uri": "file:///b"}})  # fmt: skip
    tools.end("graceful")
    watcher.end("graceful")
    assert await tools.next() == {"method": "notifications/tools/list_changed"}
    assert await tools.next() is None
    updated = {"method": "notifications/resources/updated", "params": {"uri": "file:///a"}}
    assert await watcher.next() == updated
    assert await watcher.next() is None


async def test_listeners_leaving_while_the_feed_shrinks_still_close_it() -> None:
    # given two listeners of one URI each, and unsubscribing that takes a while
    session = Scripted()
    feed = _feed(session)
    first, second = _listener("file:///a"), _listener("file:///b")
    await feed.add(first)
    await feed.add(second)
    session.hold = asyncio.Event()
    # when the first leaves, and the second leaves while the first's unsubscribe is under way
    first.end("lost")
    assert await until(lambda: ("resources/unsubscribe", {"uri": "file:///a"}) in session.requests)
    second.end("lost")
    session.hold.set()
    # then both URIs are given up and the session is closed
    assert await until(lambda: session.closed)
    assert ("resources/unsubscribe", {"uri": "file:///b"}) in session.requests
    assert feed.closed


async def test_a_listener_that_ends_while_joining_leaves_nothing_open() -> None:
    session = Scripted()
    feed = _feed(session)
    session.hold = asyncio.Event()
    listener = _listener("file:///a")
    joining = asyncio.ensure_future(feed.add(listener))
    assert await until(lambda: session.requests)
    listener.end("lost")  # the client went away during the upstream subscribe
    session.hold.set()
    await joining
    assert await until(lambda: session.closed)
    assert listener.feeds == {}


async def test_a_failed_subscribe_of_the_only_listener_closes_the_feed() -> None:
    session = Scripted()
    session.fail = UpstreamTimeout("no answer", server="s")
    feed = _feed(session)
    with pytest.raises(UpstreamTimeout):
        await feed.add(_listener("file:///a"))
    assert await until(lambda: session.closed)


async def test_a_server_that_announces_nothing_is_noted_quiet_and_not_kept() -> None:
    session = Scripted(capabilities={"tools": {}})
    feed = _feed(session)
    listener = _listener(tools=True)
    await feed.add(listener)
    assert listener.quiet == {SERVER.id}
    assert listener.feeds == {}
    assert session.closed
    assert session.requests == []


async def test_a_dead_session_ends_its_listeners_as_lost() -> None:
    session = Scripted()
    feed = _feed(session)
    listener = _listener(tools=True)
    await feed.add(listener)
    session.alive = False
    feed.check()
    assert listener.ended == "lost"
    assert await listener.next() is None


async def test_the_same_change_from_several_servers_waits_once() -> None:
    # given a listener of two servers' tool lists, which has not read yet
    listener = _listener("file:///a", tools=True)
    tools = {"method": "notifications/tools/list_changed"}
    updated = {"method": "notifications/resources/updated", "params": {"uri": "file:///a"}}
    # when both servers announce the same changes before it reads
    for event in (tools, updated, tools, updated):
        listener.offer(event)
    # then each change waits once; once read, the next announcement is a change again
    assert await listener.next() == tools
    listener.offer(tools)
    listener.end("graceful")
    assert [await listener.next() for _ in range(3)] == [updated, tools, None]
