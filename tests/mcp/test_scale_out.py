"""Several real web processes, one client session: any process serves it (issue 17).

The session id is sealed, so a process that did not create a session continues it from the id
alone — on an HTTP upstream, on the upstream's own session — while a stdio upstream's session
lives in the process that spawned its child, and elsewhere is the spec's 404.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest

from tests.api.gateway import add_key, add_pool, add_stdio_server
from tests.reliability.conftest import (  # noqa: F401
    channel_prefix,
    postgres,
    start_web,
    var_dir,
    web_env,
    webs,
)
from tests.upstreams import procs
from tests.upstreams.procs import UpstreamProcess

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.upstream]

INIT = {
    "jsonrpc": "2.0", "id": 0, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {"sampling": {}},
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

    def __init__(self, http: httpx2.Client, secret: str, pool: str) -> None:
        self.http = http
        self.pool = pool
        self.headers = {"Authorization": f"Bearer {secret}",
                        "Accept": "application/json, text/event-stream"}  # fmt: skip
        self.session = ""

    def url(self, web: UpstreamProcess) -> str:
        return f"http://127.0.0.1:{web.port}/mcp/{self.pool}/"

    def post(self, web: UpstreamProcess, body: dict[str, Any]) -> tuple[int, list[Any]]:
        """One POST; its status and the JSON-RPC messages of its answer (JSON or SSE)."""
        headers = {**self.headers, "Mcp-Session-Id": self.session} if self.session else self.headers
        answer = self.http.post(self.url(web), content=orjson.dumps(body), headers=headers)
        if "mcp-session-id" in answer.headers:
            self.session = answer.headers["mcp-session-id"]
        if answer.headers.get("content-type", "").startswith("text/event-stream"):
            lines = answer.text.splitlines()
            return answer.status_code, [
                orjson.loads(x[6:]) for x in lines if x.startswith("data: ")
            ]
        return answer.status_code, [answer.json()] if answer.content else []

    def initialize(self, web: UpstreamProcess) -> dict[str, Any]:
        status, (answer,) = self.post(web, INIT)
        assert status == 200, answer
        self.post(web, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        return dict(answer["result"])

    def call(self, web: UpstreamProcess, request_id: int, tool: str, **args: Any) -> Any:
        body = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                "params": {"name": tool, "arguments": args}}  # fmt: skip
        status, messages = self.post(web, body)
        return status, messages[-1] if messages else None


@pytest.fixture
def start_webs(
    webs: list[UpstreamProcess],  # noqa: F811
    var_dir: Path,  # noqa: F811
    redis_url: str,
    channel_prefix: str,  # noqa: F811
) -> Callable[[int], list[UpstreamProcess]]:
    """Start `count` web processes on the test database and a Redis prefix of the test's own."""

    def start(count: int) -> list[UpstreamProcess]:
        env = web_env(var_dir, redis_url=redis_url, MCPPOOL_CHANNEL_PREFIX=channel_prefix)
        for i in range(count):
            webs.append(start_web(env, f"web-{i}"))
        return webs

    return start


def test_sticky_http_session_continues_on_every_web_process(
    sse_upstream: UpstreamProcess,
    start_webs: Callable[[int], list[UpstreamProcess]],
) -> None:
    # given a sticky pool on an HTTP server and three web processes sharing no session store
    add_pool("sticky", [("s1", sse_upstream.url)], session_mode="sticky")
    secret = add_key("app", ["sticky"])
    gateways = start_webs(3)
    with httpx2.Client(timeout=30) as http:
        client = Raw(http, secret, "sticky")
        # when the session starts on one process
        client.initialize(gateways[0])
        # then each of the others continues it: the same upstream session (one whoami pid and
        # the progress of one call stream), no new initialize
        for i, web in enumerate(gateways * 2):
            status, answer = client.call(web, i + 1, "echo", text=f"via {web.name}")
            assert status == 200, answer
            assert answer["result"]["content"][0]["text"] == f"via {web.name}"
        status, answer = client.call(gateways[2], 50, "progress", steps=2)
        assert answer["result"]["content"][0]["text"] == "done 2"
        # and the client's DELETE through any process ends it on every process
        assert http.delete(client.url(gateways[1]), headers={**client.headers,
                           "Mcp-Session-Id": client.session}).status_code == 200  # fmt: skip
        for web in gateways:
            status, answer = client.call(web, 99, "echo", text="after")
            assert status == 404, answer


@pytest.mark.parametrize("how", ["altered", "another pool"])
def test_session_id_altered_or_of_another_pool_is_404_on_every_process(
    sse_upstream: UpstreamProcess,
    start_webs: Callable[[int], list[UpstreamProcess]],
    how: str,
) -> None:
    add_pool("sticky", [("s1", sse_upstream.url)], session_mode="sticky")
    add_pool("other", [("s1", sse_upstream.url)], session_mode="sticky")
    secret = add_key("app", ["sticky", "other"])
    gateways = start_webs(2)
    with httpx2.Client(timeout=30) as http:
        client = Raw(http, secret, "sticky")
        client.initialize(gateways[0])
        if how == "altered":
            middle = len(client.session) // 2
            flipped = "A" if client.session[middle] != "A" else "B"
            client.session = client.session[:middle] + flipped + client.session[middle + 1 :]
        else:
            client.pool = "other"
        for web in gateways:
            status, answer = client.call(web, 1, "echo", text="x")
            assert status == 404, answer
            assert answer["error"]["data"]["code"] == "unknown_session"


def test_stdio_session_is_served_by_its_owner_and_404_elsewhere(
    start_webs: Callable[[int], list[UpstreamProcess]],
) -> None:
    # given a sticky pool whose server is a stdio child of the web process that opens it
    pool = add_pool("local", [], session_mode="sticky")
    add_stdio_server(pool, "child", procs.faulty_stdio_config())
    secret = add_key("app", ["local"])
    gateways = start_webs(2)
    with httpx2.Client(timeout=60) as http:
        client = Raw(http, secret, "local")
        client.initialize(gateways[0])
        # the owner serves it
        assert client.call(gateways[0], 1, "echo", text="here")[0] == 200
        # another process cannot reach its child: 404, so the client initializes again (there)
        status, answer = client.call(gateways[1], 2, "echo", text="there")
        assert status == 404, answer
        client.session = ""
        client.initialize(gateways[1])
        assert client.call(gateways[1], 3, "echo", text="again")[0] == 200
