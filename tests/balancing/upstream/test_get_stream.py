"""The handshake-era GET stream (`UpstreamSession.open(..., listen=True)`): messages a server sends
outside any call reach the session's `on_event`, and its requests are answered.

Real servers (our faulty one, npm server-everything) show the messages arrive; a scripted aiohttp
server shows what happens when the stream is refused, breaks or the session ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from balancing.engine.config import Era, ServerConfig, Transport
from balancing.engine.errors import SessionGone
from balancing.engine.upstream import MessageHandler, UpstreamSession
from tests.balancing.upstream.conftest import open_session
from tests.helpers.wait import wait_until
from tests.upstreams import procs

pytestmark = pytest.mark.upstream

ROOTS = {"roots": [{"uri": "file:///srv/data", "name": "data"}]}
ROOTS_CAPABILITY = {"roots": {"listChanged": True}}


class Inbox:
    """An `on_event` handler that keeps what arrives and answers roots/list."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def __call__(self, message: dict[str, Any]) -> dict[str, Any] | None:
        await self.messages.put(message)
        return ROOTS if message.get("method") == "roots/list" else None

    async def next(self, method: str, timeout: float = 15.0) -> dict[str, Any]:
        """The next message with `method` (others are skipped)."""
        async with asyncio.timeout(timeout):
            while (message := await self.messages.get()).get("method") != method:
                pass
        return message


@asynccontextmanager
async def opened(
    http: aiohttp.ClientSession,
    config: ServerConfig,
    on_event: MessageHandler,
    *,
    capabilities: dict[str, Any] | None = None,
    listen: bool = True,
) -> AsyncIterator[UpstreamSession]:
    session = await open_session(
        http, config, capabilities=capabilities, on_event=on_event, listen=listen
    )
    try:
        yield session
    finally:
        await session.close()


# ---------------------------------------------------------------- real servers


@pytest.mark.parametrize("answers", ["sse", "json"])
async def test_get_stream_faulty_session_level_messages_reach_on_event(
    http: aiohttp.ClientSession, request: pytest.FixtureRequest, answers: str
) -> None:
    # given a listening handshake-era session to our faulty server, as a client with roots
    server: procs.UpstreamProcess = request.getfixturevalue(f"faulty_{answers}")
    inbox = Inbox()
    config = server.config(era=Era.HANDSHAKE)
    async with opened(http, config, inbox, capabilities=ROOTS_CAPABILITY) as session:
        # when a tool makes the server announce a list change and ask for roots on the session
        call = {"name": "announce", "arguments": {"ask_roots": True}}
        result = await session.request("tools/call", call, timeout=15)

        # then the notification arrived, and the roots we answered (by POST) reached the tool
        await inbox.next("notifications/tools/list_changed")
        await inbox.next("roots/list")
        assert result["content"][0]["text"] == "file:///srv/data"
        assert session.alive


async def test_get_stream_everything_roots_request_answered_and_logged(
    http: aiohttp.ClientSession, everything_http: procs.UpstreamProcess
) -> None:
    # given server-everything, which asks a client with roots for them right after initialize
    inbox = Inbox()
    config = everything_http.config(era=Era.HANDSHAKE)

    # when a listening session opens
    async with opened(http, config, inbox, capabilities=ROOTS_CAPABILITY):
        # then its roots/list request arrives on the GET stream, and once answered the server
        # logs (also session-level) how many roots it got
        await inbox.next("roots/list")
        while "Roots updated: 1 root" not in str(
            (await inbox.next("notifications/message"))["params"].get("data")
        ):
            pass


# ---------------------------------------------------------------- a scripted server

GetScript = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Scripted:
    """A handshake-era server whose GET answers follow a script, one entry per GET."""

    def __init__(self, gets: list[GetScript]) -> None:
        self.gets = gets
        self.get_headers: list[dict[str, str]] = []
        self.posted: list[dict[str, Any]] = []
        self.stream_closed = asyncio.Event()
        self.url = ""
        self.hold_calls = False  # tools/call waits for `forget`, then answers 404
        self.call_arrived = asyncio.Event()
        self.forget = asyncio.Event()

    async def post(self, request: web.Request) -> web.StreamResponse:
        message = orjson.loads(await request.read())
        self.posted.append(message)
        if message.get("method") == "initialize":
            result = {"protocolVersion": "2025-11-25", "capabilities": {},
                      "serverInfo": {"name": "scripted", "version": "0"}}  # fmt: skip
            body = {"jsonrpc": "2.0", "id": message["id"], "result": result}
            return web.json_response(body, headers={"mcp-session-id": "s-1"})
        if self.hold_calls and message.get("method") == "tools/call":
            self.call_arrived.set()
            await self.forget.wait()
            return await self.session_gone(request)
        if "id" in message and "method" in message:
            return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": {}})
        return web.Response(status=202)

    async def get(self, request: web.Request) -> web.StreamResponse:
        self.get_headers.append(dict(request.headers))
        if not self.gets:
            return web.Response(status=409)  # script exhausted: keep the client retrying
        return await self.gets.pop(0)(request)

    # -- script entries

    @staticmethod
    async def refuse_405(request: web.Request) -> web.StreamResponse:
        return web.Response(status=405)

    @staticmethod
    async def session_gone(request: web.Request) -> web.StreamResponse:
        body = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Not found"}}
        return web.json_response(body, status=404)

    @staticmethod
    def events(*messages: tuple[str, dict[str, Any]], hold: bool = False) -> GetScript:
        """An SSE stream of (id, message) events; `hold` keeps it open until the client leaves."""

        async def script(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await response.prepare(request)
            for event_id, message in messages:
                await response.write(f"id: {event_id}\n".encode())
                await response.write(b"data: " + orjson.dumps(message) + b"\n\n")
            if hold:
                server = request.app[SCRIPTED]
                try:
                    while True:  # keep-alive comments until the write fails: the client left
                        await response.write(b": ping\n\n")
                        await asyncio.sleep(0.02)
                except (ConnectionError, RuntimeError):
                    server.stream_closed.set()
            return response

        return script


SCRIPTED = web.AppKey("scripted", Scripted)


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[list[GetScript]], Awaitable[Scripted]]]:
    runners: list[web.AppRunner] = []

    async def start(gets: list[GetScript]) -> Scripted:
        server = Scripted(gets)
        app = web.Application()
        app[SCRIPTED] = server
        app.router.add_post("/mcp", server.post)
        app.router.add_get("/mcp", server.get)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        server.url = f"http://127.0.0.1:{port}/mcp"
        return server

    yield start
    for runner in runners:
        await runner.cleanup()


def scripted_config(server: Scripted) -> ServerConfig:
    return ServerConfig(id=1, name="scripted", transport=Transport.STREAMABLE_HTTP,
                        url=server.url, era=Era.HANDSHAKE)  # fmt: skip


def notification(method: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method}


async def test_get_stream_refused_with_405_stops_and_session_works(
    http: aiohttp.ClientSession, scripted: Callable[[list[GetScript]], Awaitable[Scripted]]
) -> None:
    # given a server that offers no GET stream
    server = await scripted([Scripted.refuse_405])
    async with opened(http, scripted_config(server), Inbox()) as session:
        # when the session has opened (the GET was tried before notifications/initialized)
        await wait_until(lambda: not session._tasks)

        # then it never asks again and calls still work
        assert await session.request("ping", None, timeout=5) == {}
        assert session.alive
        assert len(server.get_headers) == 1
        assert server.posted[1]["method"] == "notifications/initialized"


async def test_get_stream_answered_404_marks_session_gone(
    http: aiohttp.ClientSession, scripted: Callable[[list[GetScript]], Awaitable[Scripted]]
) -> None:
    # given a server that has forgotten the session by the time the stream is asked for
    server = await scripted([Scripted.session_gone])

    # when a listening session opens
    async with opened(http, scripted_config(server), Inbox()) as session:
        # then the session is known dead, so its owner starts over instead of calling into it
        await wait_until(lambda: not session.alive)


async def test_session_closed_while_a_call_waits_reports_its_404_as_session_gone(
    http: aiohttp.ClientSession, scripted: Callable[[list[GetScript]], Awaitable[Scripted]]
) -> None:
    # given a call in flight on a session the server is about to forget
    server = await scripted([Scripted.refuse_405])
    server.hold_calls = True
    async with opened(http, scripted_config(server), Inbox()) as session:
        call = asyncio.create_task(
            session.request("tools/call", {"name": "echo", "arguments": {}}, timeout=10)
        )
        async with asyncio.timeout(10):
            await server.call_arrived.wait()

        # when the session is closed meanwhile (its GET stream met the 404 first), then the
        # call's own 404 arrives
        await session.close()
        server.forget.set()

        # then the call still reads as "session gone, never run", so its owner sends it again on
        # a fresh session instead of failing it as refused
        with pytest.raises(SessionGone) as caught:
            await call
        assert not caught.value.delivered


async def test_get_stream_broken_reconnects_with_last_event_id(
    http: aiohttp.ClientSession, scripted: Callable[[list[GetScript]], Awaitable[Scripted]]
) -> None:
    # given a stream that ends after one event, then another that carries the next
    first = Scripted.events(("e-1", notification("notifications/tools/list_changed")))
    second = Scripted.events(("e-2", notification("notifications/prompts/list_changed")))
    server = await scripted([first, second])
    inbox = Inbox()

    # when a listening session opens
    async with opened(http, scripted_config(server), inbox) as session:
        # then it receives both, having resumed after the first event
        await inbox.next("notifications/tools/list_changed")
        await inbox.next("notifications/prompts/list_changed")
        assert server.get_headers[1].get("Last-Event-ID") == "e-1"
        assert session.alive


async def test_get_stream_request_answered_by_post_under_server_id(
    http: aiohttp.ClientSession, scripted: Callable[[list[GetScript]], Awaitable[Scripted]]
) -> None:
    # given a stream carrying a server→client request
    ask = {"jsonrpc": "2.0", "id": "srv-7", "method": "roots/list"}
    server = await scripted([Scripted.events(("1", ask), hold=True)])

    # when a listening session opens
    async with opened(http, scripted_config(server), Inbox()):
        # then the handler's result goes back as a POST under the server's own id
        await wait_until(lambda: any(m.get("id") == "srv-7" for m in server.posted))
        (answer,) = [m for m in server.posted if m.get("id") == "srv-7"]
        assert answer["result"] == ROOTS


async def test_get_stream_ends_when_session_closes(
    http: aiohttp.ClientSession, scripted: Callable[[list[GetScript]], Awaitable[Scripted]]
) -> None:
    # given a listening session holding an open stream
    server = await scripted([Scripted.events(hold=True)])
    async with opened(http, scripted_config(server), Inbox()) as session:
        await wait_until(lambda: len(server.get_headers) == 1)
    # when it has closed (the context above), then the stream is released upstream
    async with asyncio.timeout(10):
        await server.stream_closed.wait()
    assert not session._tasks


async def test_get_stream_not_opened_without_listen(
    http: aiohttp.ClientSession, scripted: Callable[[list[GetScript]], Awaitable[Scripted]]
) -> None:
    # given a session opened without listen (a pooled session: no single owner for the messages)
    server = await scripted([Scripted.events(hold=True)])
    async with opened(http, scripted_config(server), Inbox(), listen=False) as session:
        # when it is used
        await session.request("ping", None, timeout=5)

    # then it never asked for the stream
    assert server.get_headers == []
