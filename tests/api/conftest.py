"""Fixtures for the REST API tests: real upstreams, a live gateway, keys of every kind."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import orjson
import pytest
from aiohttp import web
from asgiref.sync import sync_to_async
from django.utils import timezone

from servers import services
from servers.models import ApiKey
from tests.api.gateway import Gateway, add_key, add_pool, serve_gateway
from tests.upstreams import procs, threaded


@pytest.fixture(scope="session")
def everything_http() -> Iterator[procs.UpstreamProcess | None]:
    """npm server-everything (resources and prompts); None when `make node` has not run."""
    if not procs.everything_installed():
        yield None
        return
    upstream = procs.start_everything_http()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="session")
def garbage_url() -> Iterator[str]:
    """An upstream that negotiates properly, then answers every tool call with bytes that are
    not JSON: the upstream protocol error case."""

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return web.Response(status=200)  # DELETE of our session
        message = orjson.loads(await request.read())
        method = message.get("method")
        if "id" not in message:
            return web.Response(status=202)
        result: dict[str, Any]
        if method == "initialize":
            result = {
                "protocolVersion": "2025-11-25",
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "garbage", "version": "1"},
            }
        elif method == "tools/list":
            result = {"tools": [{"name": "boom", "inputSchema": {"type": "object"}}]}
        elif method == "ping":
            result = {}
        elif method == "tools/call":
            return web.Response(body=b"{not json", content_type="application/json")
        else:
            error = {"code": -32601, "message": f"{method} not supported"}
            body = {"jsonrpc": "2.0", "id": message["id"], "error": error}
            return web.json_response(body, headers={"mcp-session-id": "g1"})
        body = {"jsonrpc": "2.0", "id": message["id"], "result": result}
        return web.json_response(body, headers={"mcp-session-id": "g1"})

    with threaded.serve(handle) as url:
        yield url


def _setup(
    faulty_url: str, sse_url: str, garbage_url: str, everything_url: str | None
) -> dict[str, str]:
    if everything_url:
        add_pool("everything", [("ev", everything_url)])
    add_pool("echo", [("one", faulty_url)], call_timeout=5.0)
    add_pool("stream", [("sse", sse_url)])
    add_pool("other", [("one", faulty_url)])
    add_pool("dead", [("gone", f"http://127.0.0.1:{procs.free_port()}/mcp")], acquire_timeout=1.0)
    add_pool("garbage", [("junk", garbage_url)])
    add_pool("capped", [("one", faulty_url)], rate_limit_per_minute=2)
    keys = {
        "app": add_key("app", ["echo", "stream", "dead", "garbage", "everything", "capped"]),
        "admin": add_key("admin", all_pools=True, is_admin=True),
        "scoped_admin": add_key("scoped-admin", ["other"], is_admin=True),
        "limited": add_key("limited", ["echo"], rate_limit_per_minute=2),
        "expired": add_key("expired", ["echo"], expires_at=timezone.now() - timedelta(minutes=1)),
        "revoked": add_key("revoked", ["echo"]),
    }
    services.revoke_api_key(ApiKey.objects.get(name="revoked"))
    return keys


@pytest.fixture
async def gateway(
    faulty_json: procs.UpstreamProcess,
    faulty_sse: procs.UpstreamProcess,
    garbage_url: str,
    everything_http: procs.UpstreamProcess | None,
) -> AsyncIterator[Gateway]:
    everything_url = everything_http.url if everything_http else None
    keys = await sync_to_async(_setup)(faulty_json.url, faulty_sse.url, garbage_url, everything_url)
    async with serve_gateway() as gw:
        gw.keys.update(keys)
        yield gw


@contextlib.contextmanager
def nothing() -> Iterator[None]:
    yield


def error_of(body: Any) -> str:
    assert isinstance(body, dict), body
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    code: str = body["error"]["code"]
    return code
