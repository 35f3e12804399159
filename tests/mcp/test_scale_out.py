"""Several real web processes, one client session: any process serves it (issue 17).

The session id is sealed, so a process that did not create a session continues it from the id
alone — on an HTTP upstream, on the upstream's own session — while a stdio upstream's session
lives in the process that spawned its child, and elsewhere is the spec's 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
from asgiref.sync import sync_to_async
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.api.gateway import add_key, add_pool, add_stdio_server
from tests.conftest import missing_prerequisite
from tests.helpers.wait import until
from tests.mcp import test_everything as everything
from tests.mcp.conftest import (
    listen_frames,
    modern_request,
    next_frame,
    sampled,
)
from tests.reliability.conftest import (  # noqa: F401
    Balanced,
    balanced,
    channel_prefix,
    postgres,
    start_web,
    start_webs,
    var_dir,
    web_env,
    webs,
)
from tests.reliability.test_redis_restart import RedisServer, redis_server  # noqa: F401
from tests.upstreams import procs
from tests.upstreams.procs import UpstreamProcess

OnMessage = Callable[[Any], Awaitable[None]]
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.upstream]

INIT = {
    "jsonrpc": "2.0", "id": 0, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {"sampling": {}, "roots": {}},
               "clientInfo": {"name": "scale-out", "version": "1"}},
}  # fmt: skip


@pytest.fixture
def sse_upstream() -> Iterator[UpstreamProcess]:
    """One faulty HTTP upstream answering with SSE streams (so it can ask mid-call)."""
    upstream = procs.start_faulty_http(name="sse")
    yield upstream
    upstream.stop()


class Raw:
    """A handshake-era client speaking raw HTTP, choosing the web process of each request."""

    def __init__(self, http: httpx2.AsyncClient, secret: str, pool: str) -> None:
        self.http = http
        self.pool = pool
        self.headers = {"Authorization": f"Bearer {secret}",
                        "Accept": "application/json, text/event-stream"}  # fmt: skip
        self.session = ""

    def url(self, web: UpstreamProcess) -> str:
        return f"http://127.0.0.1:{web.port}/mcp/{self.pool}/"

    def _headers(self) -> dict[str, str]:
        return {**self.headers, "Mcp-Session-Id": self.session} if self.session else self.headers

    async def post(
        self, web: UpstreamProcess, body: dict[str, Any], on_message: OnMessage | None = None
    ) -> tuple[int, list[Any]]:
        """One POST; its status and the JSON-RPC messages of its answer (JSON or SSE), each
        also given to `on_message` as it arrives."""
        content = orjson.dumps(body)
        async with self.http.stream("POST", self.url(web), content=content,
                                    headers=self._headers()) as answer:  # fmt: skip
            if "mcp-session-id" in answer.headers:
                self.session = answer.headers["mcp-session-id"]
            if not answer.headers.get("content-type", "").startswith("text/event-stream"):
                raw = await answer.aread()
                return answer.status_code, [orjson.loads(raw)] if raw else []
            messages = []
            async for message in sse_messages(answer):
                messages.append(message)
                if on_message is not None:
                    await on_message(message)
            return answer.status_code, messages

    async def initialize(self, web: UpstreamProcess) -> dict[str, Any]:
        status, (answer,) = await self.post(web, INIT)
        assert status == 200, answer
        await self.post(web, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        return dict(answer["result"])

    async def call(
        self, web: UpstreamProcess, request_id: int, tool: str, on_message: OnMessage | None = None,
        **args: Any,
    ) -> tuple[int, Any]:  # fmt: skip
        params: dict[str, Any] = {"name": tool, "arguments": args}
        if on_message is not None:  # it wants the call's progress too
            params["_meta"] = {"progressToken": f"call-{request_id}"}
        body = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
        status, messages = await self.post(web, body, on_message)
        return status, messages[-1] if messages else None


async def sse_messages(answer: httpx2.Response) -> AsyncIterator[Any]:
    async for line in answer.aiter_lines():
        if line.startswith("data: "):
            yield orjson.loads(line[6:])


@sync_to_async
def sticky_pools(url: str, *slugs: str) -> str:
    """Sticky pools with the one HTTP server at `url`, and a key `app` for them; its secret."""
    for slug in slugs:
        add_pool(slug, [("s1", url)], session_mode="sticky")
    return add_key("app", list(slugs))


def _stdio_pool() -> str:
    pool = add_pool("local", [], session_mode="sticky")
    add_stdio_server(pool, "child", procs.faulty_stdio_config())
    return add_key("app", ["local"])


async def test_sticky_http_session_continues_on_every_web_process(
    sse_upstream: UpstreamProcess,
    start_webs: Callable[[int], list[UpstreamProcess]],  # noqa: F811
) -> None:
    # given a sticky pool on an HTTP server and three web processes sharing no session store
    secret = await sticky_pools(sse_upstream.url, "sticky")
    gateways = start_webs(3)
    async with httpx2.AsyncClient(timeout=30) as http:
        client = Raw(http, secret, "sticky")
        # when the session starts on one process
        await client.initialize(gateways[0])
        # then each of the others continues it: the same upstream session (one whoami pid and
        # the progress of one call stream), no new initialize
        for i, web in enumerate(gateways * 2):
            status, answer = await client.call(web, i + 1, "echo", text=f"via {web.name}")
            assert status == 200, answer
            assert answer["result"]["content"][0]["text"] == f"via {web.name}"
        status, answer = await client.call(gateways[2], 50, "progress", steps=2)
        assert answer["result"]["content"][0]["text"] == "done 2"
        # and the client's DELETE through any process ends it on every process
        deleted = await http.delete(client.url(gateways[1]), headers=client._headers())
        assert deleted.status_code == 200
        for web in gateways:
            status, answer = await client.call(web, 99, "echo", text="after")
            assert status == 404, answer


async def test_relayed_requests_and_the_session_stream_cross_web_processes(
    sse_upstream: UpstreamProcess,
    start_webs: Callable[[int], list[UpstreamProcess]],  # noqa: F811
) -> None:
    # given a sticky session created on web process a, and three processes
    secret = await sticky_pools(sse_upstream.url, "sticky")
    a, b, c = start_webs(3)
    async with httpx2.AsyncClient(timeout=30) as http:
        client = Raw(http, secret, "sticky")
        await client.initialize(a)

        # when a call on b asks the client to sample, and the client answers through c
        async def sample_through_c(message: Any) -> None:
            if message.get("method") == "sampling/createMessage":
                prompt = message["params"]["messages"][0]["content"]["text"]
                result = {"role": "assistant", "model": "t", "stopReason": "endTurn",
                          "content": {"type": "text", "text": f"sampled:{prompt}"}}  # fmt: skip
                status, _ = await client.post(c, {"jsonrpc": "2.0", "id": message["id"],
                                                  "result": result})  # fmt: skip
                assert status == 202

        _, answer = await client.call(b, 1, "sample", sample_through_c, prompt="hi")
        # then the answer reached the process that relayed the request, and the server
        assert answer["result"]["content"][0]["text"] == "sampled:hi", answer

        # when the client's GET stream is on c
        events: asyncio.Queue[Any] = asyncio.Queue()
        opened = asyncio.Event()

        async def listen() -> None:
            async with http.stream("GET", client.url(c), headers=client._headers()) as stream:
                assert stream.status_code == 200
                opened.set()
                async for message in sse_messages(stream):
                    await events.put(message)

        listening = asyncio.create_task(listen())
        try:
            await asyncio.wait_for(opened.wait(), 30)
            # then the server's session-level messages reach it there (a holds the server's GET
            # stream and passes them on), also when the call that causes them runs on b
            assert await _announced(client, b, events)

            # and a server→client request outside any call, on that stream, is answered
            # through b, which runs the call that waits for it (a holds the request)
            async def roots_through_b() -> int:
                while (message := await events.get()).get("method") != "roots/list":
                    pass
                roots = {"roots": [{"uri": "file:///srv/data", "name": "data"}]}
                reply = {"jsonrpc": "2.0", "id": message["id"], "result": roots}
                return (await client.post(b, reply))[0]

            answering = asyncio.create_task(roots_through_b())
            _, answer = await client.call(b, 100, "announce", ask_roots=True)
            assert answer["result"]["content"][0]["text"] == "file:///srv/data", answer
            assert await answering == 202
        finally:
            listening.cancel()


async def _announced(client: Raw, web: UpstreamProcess, events: asyncio.Queue[Any]) -> bool:
    """Call `announce` until its session-level notification arrives on the stream (the server's
    GET stream moves with a short reconnect); whether it did."""
    for request_id in range(1000, 1030):
        await client.call(web, request_id, "announce")
        with contextlib.suppress(TimeoutError):
            message = await asyncio.wait_for(events.get(), 1.0)
            return bool(message.get("method") == "notifications/tools/list_changed")
    return False


@pytest.mark.parametrize("how", ["altered", "another pool"])
async def test_session_id_altered_or_of_another_pool_is_404_on_every_process(
    sse_upstream: UpstreamProcess,
    start_webs: Callable[[int], list[UpstreamProcess]],  # noqa: F811
    how: str,
) -> None:
    secret = await sticky_pools(sse_upstream.url, "sticky", "other")
    gateways = start_webs(2)
    async with httpx2.AsyncClient(timeout=30) as http:
        client = Raw(http, secret, "sticky")
        await client.initialize(gateways[0])
        if how == "altered":
            middle = len(client.session) // 2
            flipped = "A" if client.session[middle] != "A" else "B"
            client.session = client.session[:middle] + flipped + client.session[middle + 1 :]
        else:
            client.pool = "other"
        for web in gateways:
            status, answer = await client.call(web, 1, "echo", text="x")
            assert status == 404, answer
            assert answer["error"]["data"]["code"] == "unknown_session"


async def test_stdio_session_is_served_through_any_process_by_its_owner(
    start_webs: Callable[[int], list[UpstreamProcess]],  # noqa: F811
) -> None:
    # given a sticky pool whose server is a stdio child of the web process that opens it
    secret = await sync_to_async(_stdio_pool)()
    a, b, c = start_webs(3)
    async with httpx2.AsyncClient(timeout=60) as http:
        client = Raw(http, secret, "local")
        await client.initialize(a)
        # when requests land on the other processes, then the owner serves them through them:
        # calls, progress, and a sampling request whose answer is posted to a third process
        for i, web in enumerate((b, c, a)):
            status, answer = await client.call(web, i, "echo", text=web.name)
            assert status == 200, answer
            assert answer["result"]["content"][0]["text"] == web.name
        progress: list[Any] = []

        async def note(message: Any) -> None:
            if message.get("method") == "notifications/progress":
                progress.append(message["params"]["progress"])

        _, answer = await client.call(c, 10, "progress", note, steps=2)
        assert answer["result"]["content"][0]["text"] == "done 2"
        assert progress == [1, 2]

        async def sample_through_c(message: Any) -> None:
            if message.get("method") == "sampling/createMessage":
                result = {"role": "assistant", "model": "t", "stopReason": "endTurn",
                          "content": {"type": "text", "text": "sampled elsewhere"}}  # fmt: skip
                reply = {"jsonrpc": "2.0", "id": message["id"], "result": result}
                assert (await client.post(c, reply))[0] == 202

        _, answer = await client.call(b, 11, "sample", sample_through_c, prompt="hi")
        assert answer["result"]["content"][0]["text"] == "sampled elsewhere", answer

        # when the owner dies, then the session is gone everywhere: 404, and the client
        # initializes again on a live process
        os.killpg(a.pid, signal.SIGKILL)
        status, answer = await client.call(b, 20, "echo", text="orphan")
        assert status == 404, answer
        client.session = ""
        await client.initialize(b)
        assert (await client.call(c, 21, "echo", text="again"))[0] == 200


# ---- behind a real load balancer ------------------------------------------------------------


def sdk_client(url: str, secret: str, served_by: list[str], **options: Any) -> Client:
    """The mcp SDK client in legacy (handshake) mode; `served_by` collects which web process
    answered each HTTP request (HAProxy's header)."""

    async def record(response: httpx2.Response) -> None:
        served_by.append(response.headers.get("x-mcppool-web", ""))

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {secret}"}, timeout=30,
                              event_hooks={"response": [record]})  # fmt: skip
    return Client(streamable_http_client(url, http_client=http), mode="legacy", **options)


async def test_sdk_client_through_haproxy_is_served_by_every_web_process(
    sse_upstream: UpstreamProcess,
    balanced: Balanced,  # noqa: F811
) -> None:
    # given a sticky pool on an HTTP server, behind HAProxy in front of three web processes
    secret = await sticky_pools(sse_upstream.url, "sticky")
    base, gateways = balanced()
    served_by: list[str] = []
    reported: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reported.append(progress)

    # when the SDK client runs a session through it: calls, sampling and progress mid-call
    async with sdk_client(f"{base}sticky/", secret, served_by, sampling_callback=sampled) as client:
        for i in range(9):
            result = await asyncio.wait_for(client.call_tool("echo", {"text": f"t{i}"}), 30)
            assert result.content[0].text == f"t{i}"  # type: ignore[union-attr]
        sampled_result = await asyncio.wait_for(client.call_tool("sample", {"prompt": "p"}), 30)
        assert sampled_result.content[0].text == "sampled:p"  # type: ignore[union-attr]
        await asyncio.wait_for(
            client.call_tool("progress", {"steps": 3}, progress_callback=on_progress), 30
        )
    # then one session was served by every web process, and behaved as directly
    assert {name for name in served_by if name} == {web.name for web in gateways}
    assert reported == [1, 2, 3]


async def test_web_process_killed_under_load_sessions_continue_on_the_others(
    sse_upstream: UpstreamProcess,
    balanced: Balanced,  # noqa: F811
) -> None:
    # given four SDK clients calling in a loop through HAProxy, each on its own sticky session
    secret = await sticky_pools(sse_upstream.url, "sticky")
    base, gateways = balanced()
    url = f"{base}sticky/"
    killed = asyncio.Event()
    outcomes: list[dict[str, int]] = [{"before": 0, "after": 0, "failed": 0} for _ in range(4)]

    async def run(counts: dict[str, int]) -> None:
        async with sdk_client(url, secret, []) as client:
            while counts["after"] < 15:
                try:
                    # no call hangs: each ends (answered or failed) within its bound
                    async with asyncio.timeout(30):
                        await client.call_tool("echo", {"text": "x"})
                    counts["after" if killed.is_set() else "before"] += 1
                except TimeoutError:
                    raise
                except Exception:
                    counts["failed"] += 1

    clients = [asyncio.create_task(run(counts)) for counts in outcomes]
    try:
        assert await until(lambda: all(c["before"] >= 5 for c in outcomes), 60)
        # when one web process is killed outright (SIGKILL: no goodbye to anyone)
        os.killpg(gateways[1].pid, signal.SIGKILL)
        killed.set()
        await asyncio.wait_for(asyncio.gather(*clients), 120)
    finally:
        for task in clients:
            task.cancel()
    # then every session went on on the other processes: 15 calls each after the kill, and
    # nothing failed beyond the one call each client may have had in flight on the killed one
    assert all(c["after"] >= 15 for c in outcomes)
    assert all(c["failed"] <= 1 for c in outcomes), outcomes


async def test_session_of_a_revoked_key_is_refused_on_every_process(
    sse_upstream: UpstreamProcess,
    start_webs: Callable[[int], list[UpstreamProcess]],  # noqa: F811
) -> None:
    # given a session used through two web processes
    secret = await sticky_pools(sse_upstream.url, "sticky")
    gateways = start_webs(2)
    async with httpx2.AsyncClient(timeout=30) as http:
        client = Raw(http, secret, "sticky")
        await client.initialize(gateways[0])
        for i, web in enumerate(gateways):
            assert (await client.call(web, i, "echo", text="ok"))[0] == 200
        # when its key is revoked
        await sync_to_async(_revoke)("app")

        # then every process refuses the session within seconds
        async def all_refuse() -> bool:
            statuses = [(await client.call(web, 9, "echo", text="no"))[0] for web in gateways]
            return all(status == 401 for status in statuses)

        assert await until(all_refuse, 30, every=0.2)


def _revoke(name: str) -> None:
    from servers import services
    from servers.models import ApiKey

    services.revoke_api_key(ApiKey.objects.get(name=name))


def _everything_pools(url: str) -> str:
    """Sticky pools on npm server-everything, over HTTP and over stdio; a key for both."""
    add_pool("ev-http", [("ev", url)], session_mode="sticky")
    stdio = add_pool("ev-stdio", [], session_mode="sticky")
    add_stdio_server(stdio, "ev", procs.everything_stdio_config())
    return add_key("app", ["ev-http", "ev-stdio"])


@pytest.mark.parametrize(("pool", "over"), [("ev-http", "http"), ("ev-stdio", "stdio")])
async def test_everything_through_haproxy_answers_as_directly(
    everything_http: UpstreamProcess | None,
    balanced: Balanced,  # noqa: F811
    pool: str,
    over: str,
) -> None:
    # given server-everything (npm, not ours) on a sticky pool behind HAProxy and three processes
    if everything_http is None:
        missing_prerequisite("server-everything is not installed (make node)")
    secret = await sync_to_async(_everything_pools)(everything_http.url)
    base, gateways = balanced()
    async with Client(everything._direct(everything_http, over), mode="legacy",
                      **everything._callbacks(True)) as direct:  # fmt: skip
        tools = sorted(t.name for t in (await direct.list_tools()).tools)
        expected = await everything._all_results(direct, tools)
    # when the SDK client calls every tool through it (sampling, elicitation, progress, logging
    # and roots relayed wherever each request and each answer lands)
    served_by: list[str] = []
    async with sdk_client(f"{base}{pool}/", secret, served_by,
                          **everything._callbacks(True)) as through:  # fmt: skip
        assert sorted(t.name for t in (await through.list_tools()).tools) == tools
        got = await everything._all_results(through, tools)
    # then every answer is the one given directly, and every process served the session
    for name in tools:
        if name == "get-env":  # the two server processes differ in environment, by design
            continue
        assert got[name] == expected[name], name
    assert {name for name in served_by if name} == {web.name for web in gateways}


def _both_pools(url: str) -> str:
    add_pool("sticky", [("s1", url)], session_mode="sticky")
    pool = add_pool("local", [], session_mode="sticky")
    add_stdio_server(pool, "child", procs.faulty_stdio_config())
    return add_key("app", ["sticky", "local"])


async def test_redis_down_http_sessions_go_on_and_stdio_ones_stay_with_their_owner(
    sse_upstream: UpstreamProcess,
    webs: list[UpstreamProcess],  # noqa: F811
    var_dir: Path,  # noqa: F811
    channel_prefix: str,  # noqa: F811
    redis_server: RedisServer,  # noqa: F811
) -> None:
    # given two web processes on a Redis of the test's own, and a session on an HTTP server and
    # one on a stdio server, both created on a
    secret = await sync_to_async(_both_pools)(sse_upstream.url)
    env = web_env(var_dir, redis_url=redis_server.url, MCPPOOL_CHANNEL_PREFIX=channel_prefix)
    a, b = start_web(env, "web-a"), start_web(env, "web-b")
    webs += [a, b]
    async with httpx2.AsyncClient(timeout=60) as http:
        remote, local = Raw(http, secret, "sticky"), Raw(http, secret, "local")
        await remote.initialize(a)
        await local.initialize(a)
        assert (await local.call(b, 1, "echo", text="via b"))[0] == 200  # forwarded to a
        # when Redis dies
        redis_server.kill()
        # then the HTTP session goes on through both processes (b continues it from its id)
        for i, web in enumerate((b, a, b)):
            assert (await remote.call(web, 10 + i, "echo", text="on"))[0] == 200
        # and the stdio session is served by its owner, while elsewhere it is 404 at once
        assert (await local.call(a, 20, "echo", text="owner"))[0] == 200
        assert (await local.call(b, 21, "echo", text="elsewhere"))[0] == 404
        # when Redis is back, then b reaches the owner again
        redis_server.start()

        async def forwarded() -> bool:
            return (await local.call(b, 30, "echo", text="back"))[0] == 200

        assert await until(forwarded, 30, every=0.5)


WATCHED = "static://hello"


@sync_to_async
def _listened_pool(url: str) -> str:
    add_pool("watched", [("w", url)])
    return add_key("app", ["watched"])


async def _touch(http: httpx2.AsyncClient, web: UpstreamProcess, auth: dict[str, str]) -> None:
    """Change the watched resource through `web` (a 2026 tool call)."""
    body, headers = modern_request("tools/call", {"name": "touch", "arguments": {"uri": WATCHED}})
    answer = await http.post(
        f"http://127.0.0.1:{web.port}/mcp/watched/", content=orjson.dumps(body),
        headers={"Accept": "application/json, text/event-stream",
                 "Content-Type": "application/json", **headers, **auth},
    )  # fmt: skip
    assert answer.status_code == 200, answer.text


async def test_listen_on_any_process_hears_changes_made_through_the_others(
    start_webs: Callable[[int], list[UpstreamProcess]],  # noqa: F811
    own_upstream: UpstreamProcess,
) -> None:
    # given a pool on a 2026 server, and three web processes
    auth = {"Authorization": f"Bearer {await _listened_pool(own_upstream.url)}"}
    a, b, c = start_webs(3)
    url = "http://127.0.0.1:{}/mcp/watched/".format
    wanted = {"resourceSubscriptions": [WATCHED]}
    async with httpx2.AsyncClient(timeout=30) as http:
        # when a client listens through a, and the resource changes through b, then c
        async with listen_frames(url(a.port), auth, wanted) as frames:
            ack = await next_frame(frames)
            assert ack["method"] == "notifications/subscriptions/acknowledged"
            for web in (b, c):
                await _touch(http, web, auth)
                # then each change reaches the stream on a
                assert (await next_frame(frames))["params"]["uri"] == WATCHED
            # when a is killed outright, the stream ends without the graceful result
            os.killpg(a.pid, signal.SIGKILL)
            with pytest.raises((httpx2.TransportError, StopAsyncIteration)):
                await next_frame(frames)
        # and the client, listening again through another process, hears the next change
        async with listen_frames(url(b.port), auth, wanted) as frames:
            assert (await next_frame(frames))["params"]["notifications"] == wanted
            await _touch(http, c, auth)
            assert (await next_frame(frames))["params"]["uri"] == WATCHED


async def test_shared_pool_log_level_holds_on_every_process(
    start_webs: Callable[[int], list[UpstreamProcess]],  # noqa: F811
    own_upstream: UpstreamProcess,
) -> None:
    # given a handshake-era client of a shared pool, three web processes, and a server that
    # shows what reached it
    secret = await _listened_pool(own_upstream.url)
    a, b, c = start_webs(3)
    async with httpx2.AsyncClient(timeout=30) as http:
        client = Raw(http, secret, "watched")
        await client.initialize(a)
        # when it sets its log level through b
        body = {"jsonrpc": "2.0", "id": 1, "method": "logging/setLevel",
                "params": {"level": "debug"}}  # fmt: skip
        status, _ = await client.post(b, body)
        assert status == 200

        # then its calls carry that level whichever process they reach: a, which made the
        # session, b, and c, which continues it only now
        def debug_at(web: UpstreamProcess, request_id: int) -> Callable[[], Awaitable[bool]]:
            async def seen() -> bool:
                _, answer = await client.call(web, request_id, "whoami")
                shown = orjson.loads(answer["result"]["content"][0]["text"])
                return bool(shown["meta"].get("io.modelcontextprotocol/logLevel") == "debug")

            return seen

        for request_id, web in enumerate((a, b, c), start=2):
            assert await until(debug_at(web, request_id), 10)


CAPS: dict[str, Any] = {"io.modelcontextprotocol/clientCapabilities": {"sampling": {}}}


@sync_to_async
def _bridged_pool(url: str) -> str:
    add_pool("old", [("h", url)], session_mode="sticky", era="handshake")
    return add_key("app", ["old"])


async def _held_round(
    http: httpx2.AsyncClient, web: UpstreamProcess, auth: dict[str, str], request_id: int,
    **extra: Any,
) -> tuple[int, list[Any]]:  # fmt: skip
    """One round of a 2026 client's `chatty` call, which the server answers by asking."""
    params = {"name": "chatty", "arguments": {"prompt": "hi"}, **extra, "_meta": CAPS}
    body, headers = modern_request("tools/call", params, request_id)
    async with http.stream(
        "POST", f"http://127.0.0.1:{web.port}/mcp/old/", content=orjson.dumps(body),
        headers={"Accept": "application/json, text/event-stream",
                 "Content-Type": "application/json", **headers, **auth},
    ) as answer:  # fmt: skip
        if answer.headers.get("content-type", "").startswith("application/json"):
            return answer.status_code, [orjson.loads(await answer.aread())]
        return answer.status_code, [m async for m in sse_messages(answer)]


def _asked(messages: list[Any]) -> tuple[str, str]:
    result = messages[-1]["result"]
    assert result["resultType"] == "input_required", result
    (key,) = result["inputRequests"]
    return key, result["requestState"]


def _answer(key: str, text: str) -> dict[str, Any]:
    content = {"type": "text", "text": text}
    return {key: {"role": "assistant", "content": content, "model": "m"}}


async def test_held_call_continues_from_any_process_and_ends_with_its_holder(
    start_webs: Callable[[int], list[UpstreamProcess]],  # noqa: F811
    own_upstream: UpstreamProcess,
) -> None:
    # given a 2026 client on a sticky pool of a handshake-era server that asks mid-call (the era
    # bridge holds the call in the web process that started it), and three web processes
    auth = {"Authorization": f"Bearer {await _bridged_pool(own_upstream.url)}"}
    a, b, c = start_webs(3)
    async with httpx2.AsyncClient(timeout=30) as http:
        # when the call starts on a and the client's answer lands on b
        _, first = await _held_round(http, a, auth, 1)
        key, state = _asked(first)
        status, last = await _held_round(
            http, b, auth, 2, inputResponses=_answer(key, "fine"), requestState=state
        )
        # then a, which holds the call, finishes it: its result reaches the client through b
        assert status == 200, last
        assert last[-1]["result"]["content"][0]["text"] == "own:fine"

        # when a call held on c loses c before the client answers
        _, first = await _held_round(http, c, auth, 3)
        key, state = _asked(first)
        os.killpg(c.pid, signal.SIGKILL)
        status, (refused,) = await _held_round(
            http, b, auth, 4, inputResponses=_answer(key, "late"), requestState=state
        )
        # then the retry is told the call ended (the spec's -32602), nothing hangs
        assert (status, refused["error"]["code"]) == (400, -32602)
        assert refused["error"]["data"]["reason"] == "held_call_ended"


async def test_a_web_process_told_to_stop_cuts_its_open_streams_and_stops(
    start_webs: Callable[[int], list[UpstreamProcess]],  # noqa: F811
    own_upstream: UpstreamProcess,
) -> None:
    # given a web process serving a listen stream, which lasts while its client stays
    auth = {"Authorization": f"Bearer {await _listened_pool(own_upstream.url)}"}
    (web,) = start_webs(1)
    url = f"http://127.0.0.1:{web.port}/mcp/watched/"
    async with listen_frames(url, auth, {"toolsListChanged": True}) as frames:
        assert (await next_frame(frames))["method"] == "notifications/subscriptions/acknowledged"
        # when the process is told to stop (SIGTERM, as docker stop and systemd do)
        os.killpg(web.pid, signal.SIGTERM)
        # then the stream ends (the client listens again elsewhere) and the process stops,
        # instead of waiting for the client to leave
        with pytest.raises((httpx2.TransportError, StopAsyncIteration)):
            await next_frame(frames, seconds=60)
    assert await until(lambda: web.process.poll() is not None, 60)
