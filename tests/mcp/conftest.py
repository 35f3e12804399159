"""Fixtures for the MCP endpoint tests: the REST tests' upstreams, plus sticky pools."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any

import httpx2
import mcp_types as types
import orjson
import pytest
from asgiref.sync import sync_to_async
from mcp.client.streamable_http import streamable_http_client

from balancing.mcpserver import bridge
from tests.api.conftest import everything_http  # noqa: F401
from tests.api.gateway import Gateway, add_key, add_pool, add_stdio_server, serve_gateway
from tests.conftest import missing_prerequisite
from tests.upstreams import procs


def _setup(json_url: str, sse_url: str, everything_url: str | None) -> dict[str, str]:
    add_pool("echo", [("a", json_url)], call_timeout=2.0)
    add_pool("stream", [("sse", sse_url)])
    add_pool("sticky", [("s1", sse_url)], session_mode="sticky")
    add_pool("other", [("a", json_url)])
    time = add_pool("time", [])
    add_stdio_server(time, "time-1", procs.time_stdio_config())
    pools = ["echo", "stream", "sticky", "time"]
    if everything_url:
        add_pool("everything", [("ev", everything_url)])
        add_pool("ev-sticky", [("ev", everything_url)], session_mode="sticky")
        stdio = add_pool("ev-stdio", [], session_mode="sticky")
        add_stdio_server(stdio, "ev", procs.everything_stdio_config())
        pools += ["everything", "ev-sticky", "ev-stdio"]
    return {
        "app": add_key("app", pools),
        "limited": add_key("limited", ["echo"], rate_limit_per_minute=1),
    }


@pytest.fixture
async def gateway(
    faulty_json: procs.UpstreamProcess,
    faulty_sse: procs.UpstreamProcess,
    everything_http: procs.UpstreamProcess | None,  # noqa: F811
) -> AsyncIterator[Gateway]:
    ev = everything_http.url if everything_http else None
    keys = await sync_to_async(_setup)(faulty_json.url, faulty_sse.url, ev)
    async with serve_gateway() as gw:
        gw.keys.update(keys)
        yield gw


def fixture_command(port: int, *, name: str, sse: bool = False) -> list[str]:
    command = [sys.executable, "-m", "tests.mcp.upstream", "--port", str(port), "--name", name]
    return [*command, "--sse"] if sse else command


@pytest.fixture(scope="module")
def replicas() -> Iterator[list[procs.UpstreamProcess]]:
    started: list[procs.UpstreamProcess] = []
    try:
        for name in ("r1", "r2", "r3"):
            started.append(procs._start_http(name, partial(fixture_command, name=name)))
        yield started
    finally:
        for upstream in started:
            upstream.stop()


@pytest.fixture
def own_upstream() -> Iterator[procs.UpstreamProcess]:
    """A `tests.mcp.upstream` of the test's own, named `own` (answering on SSE streams, so it can
    ask mid-call), for a test that stops it or whose processes share it; stopped after it."""
    upstream = procs._start_http("own", partial(fixture_command, name="own", sse=True))
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def handshake_sse() -> Iterator[procs.UpstreamProcess]:
    """`tests.mcp.upstream` answering on SSE streams, so the handshake era can ask mid-call."""
    upstream = procs._start_http("h1", partial(fixture_command, name="h1", sse=True))
    yield upstream
    upstream.stop()


def transport(
    gw: Gateway, pool: str, key: str = "app", **headers: str
) -> AbstractAsyncContextManager[Any]:
    """The SDK's Streamable HTTP transport to a pool's endpoint, authenticated."""
    client = httpx2.AsyncClient(headers={**gw.auth(key), **headers}, timeout=30.0)
    return streamable_http_client(f"{gw.url}/mcp/{pool}/", http_client=client)


MODERN = "2026-07-28"
ENVELOPE: dict[str, Any] = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


def modern_request(
    method: str, params: dict[str, Any] | None = None, request_id: Any = 7
) -> tuple[dict[str, Any], dict[str, str]]:
    """A raw 2026-07-28 request: the body with its `_meta` envelope, and the routing headers."""
    params = {**(params or {})}
    params["_meta"] = {**ENVELOPE, **params.get("_meta", {})}
    body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
    headers = {"MCP-Protocol-Version": MODERN, "Mcp-Method": method}
    name = params.get("name", params.get("uri"))
    if isinstance(name, str):
        headers["Mcp-Name"] = name
    return body, headers


INIT: dict[str, Any] = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {},
               "clientInfo": {"name": "raw", "version": "1"}},
}  # fmt: skip


async def post_rpc(gw: Gateway, pool: str, body: Any, **headers: str) -> httpx2.Response:
    """One raw JSON-RPC POST to a pool's endpoint (headers as given: add the auth yourself)."""
    async with httpx2.AsyncClient(timeout=30.0) as http:
        return await http.post(
            f"{gw.url}/mcp/{pool}/",
            content=orjson.dumps(body),
            headers={"Accept": "application/json, text/event-stream",
                     "Content-Type": "application/json", **headers},
        )  # fmt: skip


@contextlib.asynccontextmanager
async def listen_frames(
    url: str, auth: dict[str, str], notifications: dict[str, Any], request_id: int = 1
) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
    """A `subscriptions/listen` stream at a pool's endpoint `url`, read frame by frame as the
    wire carries it (parsed with `json`: ids beyond 64 bits stay exact)."""
    body, headers = modern_request("subscriptions/listen", {"notifications": notifications},
                                   request_id=request_id)  # fmt: skip
    async with (
        httpx2.AsyncClient(timeout=30.0) as http,
        http.stream(
            "POST", url, content=json.dumps(body).encode(),
            headers={"Accept": "application/json, text/event-stream",
                     "Content-Type": "application/json", **headers, **auth},
        ) as response,
    ):  # fmt: skip
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"

        async def frames() -> AsyncIterator[dict[str, Any]]:
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    yield json.loads(line[len("data: ") :])

        yield frames()


async def next_frame(
    frames: AsyncIterator[dict[str, Any]], seconds: float = 20.0
) -> dict[str, Any]:
    """The stream's next frame (`seconds` bounds a wait for one that should come at once)."""
    async with asyncio.timeout(seconds):
        return await anext(frames)


async def sampled(context: Any, params: types.CreateMessageRequestParams) -> Any:
    """A client's sampling callback: answers `sampled:<prompt>`."""
    prompt = params.messages[0].content
    text = prompt.text if isinstance(prompt, types.TextContent) else ""
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(type="text", text=f"sampled:{text}"),
        model="test", stop_reason="endTurn",
    )  # fmt: skip


async def bridge_quiet(seconds: float = 10.0) -> bool:
    """No call is held for a 2026 client and every held call's upstream session has closed."""
    for _ in range(int(seconds / 0.02)):
        if bridge.quiet():
            return True
        await asyncio.sleep(0.02)
    return bridge.quiet()


def needs_everything(gw: Gateway) -> None:
    if "everything" not in gw.host.runtime.pools:
        missing_prerequisite("server-everything is not installed (make node)")
