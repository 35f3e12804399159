"""`subscriptions/listen` through the gateway (2026-07-28): a client's stream of the pool's change
notifications, from every server of the pool, whichever era each server speaks.

Real clients and servers: the mcp SDK 2.3.0 `Client` (its `listen()` driver) against
`tests.mcp.upstream` (an SDK server whose `touch` and `retool` tools announce changes to listen
streams and to handshake-era sessions that subscribed), spoken to in the 2026 era and in the
handshake era; raw POSTs for what the spec says a server must refuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
from asgiref.sync import sync_to_async
from mcp import Client
from mcp.client.subscriptions import (
    ResourceUpdated,
    ServerEvent,
    Subscription,
    SubscriptionLost,
    ToolsListChanged,
)

from servers import services
from servers.models import ApiKey, Pool, Server
from tests.api.gateway import Gateway, add_key, add_pool, add_stdio_server, serve_gateway
from tests.conftest import missing_prerequisite
from tests.helpers.wait import until
from tests.mcp.conftest import (
    listen_frames,
    modern_request,
    next_frame,
    post_rpc,
    transport,
)
from tests.monitoring.test_metrics import scrape, value
from tests.upstreams import procs

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.upstream]

WATCHED = "static://hello"
EVENT_WAIT = 20.0  # bounds a wait on an event that should come at once; never reached when it works


def _setup(new: list[str], old: str) -> dict[str, str]:
    add_pool("new", [("r1", new[0]), ("r2", new[1])])  # spoken to in the 2026 era
    add_pool("old", [("h1", old)], era="handshake")
    add_stdio_server(add_pool("clock", []), "time", procs.time_stdio_config())
    pools = ["new", "old", "clock"]
    if procs.EVERYTHING_JS.exists():
        add_stdio_server(add_pool("ev-stdio", []), "ev", procs.everything_stdio_config())
        pools.append("ev-stdio")
    return {"app": add_key("app", pools)}


@pytest.fixture
async def gw(
    replicas: list[procs.UpstreamProcess], handshake_sse: procs.UpstreamProcess
) -> AsyncIterator[Gateway]:
    keys = await sync_to_async(_setup)([r.url for r in replicas[:2]], handshake_sse.url)
    async with serve_gateway() as gateway:
        gateway.keys.update(keys)
        yield gateway


async def _next(sub: Subscription) -> ServerEvent:
    async with asyncio.timeout(EVENT_WAIT):
        return await anext(sub)


async def _call(client: Client, tool: str, **arguments: Any) -> str:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result
    text = result.content[0]
    return str(getattr(text, "text", text))


def _feeds_closed(gw: Gateway) -> bool:
    return all(feed.closed for feed in gw.host.runtime.feeds.values())


@pytest.mark.parametrize("pool", ["new", "old"])
async def test_listen_gets_what_it_asked_for_from_every_server(gw: Gateway, pool: str) -> None:
    # given a 2026 client listening on a pool for its tool list and one resource
    async with (
        Client(transport(gw, pool)) as client,
        client.listen(tools_list_changed=True, resource_subscriptions=[WATCHED]) as sub,
    ):
        assert sub.honored.tools_list_changed is True
        assert sub.honored.resource_subscriptions == [WATCHED]

        # when another resource changes, then the watched one, on whichever server the calls land
        await _call(client, "touch", uri="static://other")
        answered = await _call(client, "touch", uri=WATCHED)

        # then only the watched one is announced, with the listen request's id on the frame
        assert await _next(sub) == ResourceUpdated(uri=WATCHED), answered

        # and a server's tool list changing is announced too
        await _call(client, "retool")
        assert await _next(sub) == ToolsListChanged()
        # and the metrics show the stream and one upstream subscription per server
        samples = scrape(gw.host.runtime)
        assert value(samples, "mcppool_listen_streams", pool=pool) == 1
        servers = [s.name for s in gw.host.runtime.pools[pool].config.servers]
        for server in servers:
            assert value(samples, "mcppool_listen_feeds", pool=pool, server=server) == 1

    # and once nobody listens, the upstream subscriptions end with the feeds
    assert await until(lambda: _feeds_closed(gw), EVENT_WAIT)
    samples = scrape(gw.host.runtime)
    assert value(samples, "mcppool_listen_streams", pool=pool) == 0
    assert all(value(samples, "mcppool_listen_feeds", pool=pool, server=s) == 0 for s in servers)


async def test_every_server_of_the_pool_is_heard(
    gw: Gateway, replicas: list[procs.UpstreamProcess]
) -> None:
    # given a listener on a pool of two replicas
    async with (
        Client(transport(gw, "new")) as client,
        client.listen(resource_subscriptions=[WATCHED]) as sub,
    ):
        for replica in replicas[:2]:
            # when each replica announces a change (changed there by another client of it)
            async with Client(replica.url) as direct:
                await _call(direct, "touch", uri=WATCHED)
            # then the listener hears it
            assert await _next(sub) == ResourceUpdated(uri=WATCHED)


@pytest.mark.parametrize("pool", ["new", "old"])
async def test_frames_are_stamped_with_the_exact_id_and_only_what_was_asked(
    gw: Gateway, pool: str
) -> None:
    big = 10**30  # echoed as the exact JSON text the client wrote
    async with (
        listen_frames(
            f"{gw.url}/mcp/{pool}/", gw.auth("app"), {"resourceSubscriptions": [WATCHED]}, big
        ) as frames,  # fmt: skip
        Client(transport(gw, pool)) as client,
        # another listener, on the same servers, wants the tool list and another resource
        client.listen(tools_list_changed=True, resource_subscriptions=["static://other"]),
    ):
        ack = await next_frame(frames)
        assert ack["method"] == "notifications/subscriptions/acknowledged"
        assert ack["params"]["notifications"] == {"resourceSubscriptions": [WATCHED]}
        assert ack["params"]["_meta"] == {"io.modelcontextprotocol/subscriptionId": big}
        # when the tool list and another resource change, then the watched one
        await _call(client, "retool")
        await _call(client, "touch", uri="static://other")
        await _call(client, "touch", uri=WATCHED)
        # then the next frame is the watched one's: nothing it did not ask for came first
        event = await next_frame(frames)
        assert event["method"] == "notifications/resources/updated"
        assert event["params"] == {
            "uri": WATCHED, "_meta": {"io.modelcontextprotocol/subscriptionId": big},
        }  # fmt: skip


async def test_handshake_era_server_is_subscribed_for_listeners_and_unsubscribed_after(
    gw: Gateway,
) -> None:
    async with Client(transport(gw, "old")) as client:
        before = orjson.loads(await _call(client, "watchers")).get(WATCHED, 0)
        # given a listener on a handshake-era server's resource
        async with client.listen(resource_subscriptions=[WATCHED]) as sub:
            await _call(client, "touch", uri=WATCHED)
            assert await _next(sub) == ResourceUpdated(uri=WATCHED)
            # then the server has one subscriber more: the gateway's, shared by its listeners
            async with client.listen(resource_subscriptions=[WATCHED]) as second:
                watching = orjson.loads(await _call(client, "watchers"))
                assert watching.get(WATCHED) == before + 1
                await _call(client, "touch", uri=WATCHED)
                assert await _next(second) == ResourceUpdated(uri=WATCHED)
                assert await _next(sub) == ResourceUpdated(uri=WATCHED)
        # when the listeners leave, the subscription is given up upstream
        assert await until(lambda: _feeds_closed(gw), EVENT_WAIT)
        watching = orjson.loads(await _call(client, "watchers"))
        assert watching.get(WATCHED, 0) == before


def _children_running(marker: bytes) -> set[int]:
    """This process's children whose command line holds `marker`."""
    me = str(os.getpid())
    found = set()
    for status in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            parent = status.read_text().rsplit(")", 1)[1].split()[1]
            if parent == me and marker in (status.parent / "cmdline").read_bytes():
                found.add(int(status.parent.name))
    return found


async def _pooled_children(gw: Gateway, pool: str, marker: bytes) -> set[int]:
    """The pool's own children of its one stdio server, once all of them run."""
    await gw.host.runtime.list_tools(pool)
    wanted = gw.host.runtime.pools[pool].config.sessions_per_server
    assert await until(lambda: len(_children_running(marker)) >= wanted, EVENT_WAIT)
    return _children_running(marker)


async def test_a_stdio_servers_feed_is_a_child_that_ends_with_the_last_listener(
    gw: Gateway,
) -> None:
    if not procs.EVERYTHING_JS.exists():
        missing_prerequisite("server-everything is not installed (make node)")
    # given a stdio server that announces changes (npm server-everything: list changes and
    # resource subscriptions), whose pooled children are running
    marker = str(procs.EVERYTHING_JS).encode()
    pooled = await _pooled_children(gw, "ev-stdio", marker)
    async with (
        Client(transport(gw, "ev-stdio")) as client,
        client.listen(tools_list_changed=True, resource_subscriptions=["demo://resource/1"]),
    ):
        # then a listener's feed runs a child of its own
        feed_children = _children_running(marker) - pooled
        assert len(feed_children) == 1
    # when the last listener leaves, that child ends with the feed
    assert await until(lambda: not (_children_running(marker) & feed_children), EVENT_WAIT)


async def test_a_server_that_announces_nothing_is_listened_to_without_a_subscription(
    gw: Gateway,
) -> None:
    # given a stdio server that offers no change notifications (mcp-server-time)
    marker = b"mcp_server_time"
    pooled = await _pooled_children(gw, "clock", marker)
    async with (
        Client(transport(gw, "clock")) as client,
        client.listen(tools_list_changed=True) as sub,
    ):
        # then the listen is acknowledged (it will hear nothing), and no child of its own runs
        # for it, nor does an upstream subscription stay open
        assert sub.honored.tools_list_changed is True
        assert await until(lambda: _feeds_closed(gw), EVENT_WAIT)
        assert await until(lambda: _children_running(marker) <= pooled, EVENT_WAIT)


async def test_a_server_leaving_the_pool_is_a_change_of_its_tools(gw: Gateway) -> None:
    async with (
        Client(transport(gw, "new")) as client,
        client.listen(tools_list_changed=True) as sub,
    ):
        r2 = next(s.id for s in gw.host.runtime.pools["new"].config.servers if s.name == "r2")
        assert not gw.host.runtime.feeds[r2].closed
        # when the operator disables one of the pool's servers
        await sync_to_async(_disable)("new", "r2")
        await gw.settle()
        # then the listener hears that the pool's tools changed, and its stream goes on
        assert await _next(sub) == ToolsListChanged()
        await _call(client, "retool")
        assert await _next(sub) == ToolsListChanged()
        # and the subscription to the disabled server ended with it
        assert r2 not in gw.host.runtime.feeds


def _disable(pool: str, name: str) -> None:
    server = Server.objects.get(pool__slug=pool, name=name)
    services.update_server(pool, name, {"state": "disabled"})
    assert Server.objects.get(pk=server.pk).state == "disabled"


async def test_a_server_that_goes_away_ends_the_stream_as_lost(
    gw: Gateway, own_upstream: procs.UpstreamProcess
) -> None:
    # given a listener on a pool whose one server is then stopped
    await sync_to_async(add_pool)("doomed", [("d", own_upstream.url)])
    await sync_to_async(_grant)("doomed")
    await gw.settle()
    async with (
        Client(transport(gw, "doomed")) as client,
        client.listen(tools_list_changed=True) as sub,
    ):
        own_upstream.stop()
        # then the stream ends without the graceful result: the client listens again
        with pytest.raises(SubscriptionLost):
            await _next(sub)


def _grant(pool: str) -> None:
    key = ApiKey.objects.get(name="app")
    services.set_api_key_pools(key, [*key.pools.all(), Pool.objects.get(slug=pool)])


async def test_what_a_server_refuses_the_gateway_refuses(gw: Gateway) -> None:
    auth = gw.auth("app")
    body, headers = modern_request("subscriptions/listen", {"notifications": {}})
    # a listen answer is a stream: a client that accepts only JSON is refused (406)
    async with httpx2.AsyncClient(timeout=30.0) as http:
        refused = await http.post(
            f"{gw.url}/mcp/new/", content=orjson.dumps(body),
            headers={"Accept": "application/json", "Content-Type": "application/json",
                     **headers, **auth},
        )  # fmt: skip
    assert refused.status_code == 406
    # a listen without a filter is invalid params
    body, headers = modern_request("subscriptions/listen", {})
    bad = await post_rpc(gw, "new", body, **headers, **auth)
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == -32602


async def test_discover_offers_change_notifications_where_every_server_does(gw: Gateway) -> None:
    body, headers = modern_request("server/discover")
    answer = await post_rpc(gw, "new", body, **headers, **gw.auth("app"))
    capabilities = answer.json()["result"]["capabilities"]
    assert capabilities["tools"]["listChanged"] is True
    assert capabilities["resources"]["subscribe"] is True


async def test_a_revoked_keys_stream_ends(gw: Gateway) -> None:
    # given a listen stream of a key
    secret = await sync_to_async(add_key)("brief", ["new"])
    auth = {"Authorization": f"Bearer {secret}"}
    async with listen_frames(f"{gw.url}/mcp/new/", auth, {"toolsListChanged": True}) as frames:
        assert (await next_frame(frames))["method"] == "notifications/subscriptions/acknowledged"
        # when the key is revoked
        await sync_to_async(_revoke)("brief")
        await gw.settle()
        # then the stream ends, without the graceful result (the client would listen again,
        # and be refused)
        with pytest.raises(StopAsyncIteration):
            await next_frame(frames)
    body, headers = modern_request("subscriptions/listen", {"notifications": {}})
    again = await post_rpc(gw, "new", body, **headers, **auth)
    assert again.status_code == 401


def _revoke(name: str) -> None:
    services.revoke_api_key(ApiKey.objects.get(name=name))


async def test_listen_streams_of_one_key_are_capped(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    from balancing.mcpserver import listen

    monkeypatch.setattr(listen, "MAX_PER_KEY", 1)
    url = f"{gw.url}/mcp/new/"
    # given one open stream of a key allowed one
    async with listen_frames(url, gw.auth("app"), {"toolsListChanged": True}) as frames:
        assert (await next_frame(frames))["method"] == "notifications/subscriptions/acknowledged"
        # then a second is refused (429, the SDK server's -32603), and changes nothing
        body, headers = modern_request("subscriptions/listen", {"notifications": {}})
        refused = await post_rpc(gw, "new", body, **headers, **gw.auth("app"))
        assert refused.status_code == 429
        assert refused.json()["error"]["message"] == "Subscription limit reached"
        assert len(gw.host.runtime.pools["new"].listeners) == 1
    # and once it closes (and the gateway saw it go), a stream may open again
    assert await until(lambda: not gw.host.runtime.pools["new"].listeners, EVENT_WAIT)
    async with listen_frames(url, gw.auth("app"), {"toolsListChanged": True}) as frames:
        assert (await next_frame(frames))["method"] == "notifications/subscriptions/acknowledged"


async def test_a_removed_pool_ends_its_streams_gracefully(
    gw: Gateway, replicas: list[procs.UpstreamProcess]
) -> None:
    # given a listener on a pool
    await sync_to_async(add_pool)("brief", [("b", replicas[0].url)])
    await sync_to_async(_grant)("brief")
    await gw.settle()
    async with (
        Client(transport(gw, "brief")) as client,
        client.listen(tools_list_changed=True) as sub,
    ):
        # when the operator removes the pool
        await sync_to_async(services.delete_pool)("brief")
        await gw.settle()
        # then the stream ends with the server's graceful close (the SDK's loop just ends)
        with pytest.raises(StopAsyncIteration):
            await _next(sub)
    # and nothing of it is kept
    assert await until(lambda: _feeds_closed(gw), EVENT_WAIT)


async def test_a_server_back_up_joins_open_streams_and_says_the_lists_changed(
    gw: Gateway, replicas: list[procs.UpstreamProcess]
) -> None:
    # given a pool whose r2 is down when a client starts listening
    r2 = next(s.id for s in gw.host.runtime.pools["new"].config.servers if s.name == "r2")
    await sync_to_async(_flip)(r2, "down")
    await gw.host.poll_health()
    async with (
        Client(transport(gw, "new")) as client,
        client.listen(tools_list_changed=True, resource_subscriptions=[WATCHED]) as sub,
    ):
        assert r2 not in gw.host.runtime.feeds
        # when r2 is back up
        await sync_to_async(_flip)(r2, "up")
        await gw.host.poll_health()
        # then the listener hears that the pool's lists may have changed, and r2's changes
        assert await _next(sub) == ToolsListChanged()
        async with Client(replicas[1].url) as direct:
            await _call(direct, "touch", uri=WATCHED)
        assert await _next(sub) == ResourceUpdated(uri=WATCHED)


def _flip(server_id: int, health: str) -> None:
    states = ["unknown", "up", "down", "ejected", "recovering"]
    services.flip_health(server_id, expected=states, new=health, reason="test", source="test")
