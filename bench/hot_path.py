"""mcppool's own Python per call, without the network: what the hot path's code costs by itself.

    .venv/bin/python -m bench.hot_path [--calls 20000] [--repeat 5] [--json PATH]

The gateway's CPU per call is mostly the HTTP server, the upstream client and the kernel, and it
moves ±10 % between runs on a shared machine: too much to see a change of 1–2 µs in mcppool's own
code. Here the real ASGI application (`mcppool.asgi:application`: Channels' router, the lifespan
wrapper, the gateway router, authentication, the MCP endpoint and the REST route, the runtime with
its balancer, session pool, accounting and metrics) is called in-process, one request after the
other, with the upstream's exchange replaced by an answer made at once (`HttpTransport.roundtrip`
returns a canned result; the session pool, sessions and everything above them are real). Nothing
waits, so the event loop never turns: the time per request is the Python that mcppool runs for a
call. Reported: µs per request (the best of `--repeat` rounds of `--calls`) for a `tools/call` on
a kept handshake-era MCP session and for a REST tool call. The upstream process exists only to let
the runtime open its sessions at start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import uvloop

from bench import gateway as gw
from tests.upstreams import procs

RESULT: dict[str, Any] = {
    "content": [{"type": "text", "text": "hello"}],
    "structuredContent": {"result": "hello"},
    "isError": False,
}


async def _instant_roundtrip(self: Any, call: Any, body: bytes, method: str, params: Any) -> Any:
    return {"jsonrpc": "2.0", "id": call.id, "result": RESULT}


class Driver:
    """Calls an ASGI app in-process as uvicorn would, for one request at a time."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def start(self) -> None:
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        await inbox.put({"type": "lifespan.startup"})
        started = asyncio.Event()

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.startup.complete":
                started.set()
            elif message["type"] == "lifespan.startup.failed":
                raise RuntimeError(message.get("message"))

        self._lifespan = asyncio.ensure_future(
            self.app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, send)
        )
        await started.wait()

    async def post(
        self, path: str, body: bytes, headers: list[tuple[bytes, bytes]]
    ) -> tuple[int, dict[bytes, bytes], bytes]:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "headers": headers, "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8000),
        }  # fmt: skip
        request = {"type": "http.request", "body": body, "more_body": False}
        first = True
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            nonlocal first
            if first:
                first = False
                return request
            await asyncio.Event().wait()  # a client that stays (never disconnects)
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        start = sent[0]
        return (start["status"], dict(start.get("headers", [])),
                b"".join(m.get("body", b"") for m in sent[1:]))  # fmt: skip


def _timed(loop: asyncio.AbstractEventLoop, one: Any, calls: int, repeat: int) -> float:
    async def many() -> float:
        started = time.perf_counter()
        for _ in range(calls):
            await one()
        return time.perf_counter() - started

    return min(loop.run_until_complete(many()) for _ in range(repeat)) / calls * 1e6


def measure(calls: int, repeat: int) -> dict[str, float]:
    upstream = procs.start_faulty_http(name="hot-path", json_response=True)
    try:
        server = {"name": "json-1", "transport": "streamable_http", "url": upstream.url}
        var_dir, token = gw.prepare([{"slug": "json", "name": "json", "servers": [server]}])
        os.environ.update(gw.environment(var_dir))
        import django

        django.setup()
        from balancing.engine.transport_http import HttpTransport
        from mcppool.asgi import application

        loop = uvloop.new_event_loop()  # what uvicorn runs the gateway on
        driver = Driver(application)
        loop.run_until_complete(driver.start())
        auth = (b"authorization", f"Bearer {token}".encode())
        base = [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"),
                (b"accept", b"application/json, text/event-stream"), auth]  # fmt: skip
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
                "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                           "clientInfo": {"name": "hot-path", "version": "0"}}}  # fmt: skip
        status, headers, body = loop.run_until_complete(
            driver.post("/mcp/json/", orjson.dumps(init), base)
        )
        if status != 200:
            raise RuntimeError(f"initialize answered {status}: {body!r}")
        session = [*base, (b"mcp-session-id", headers[b"mcp-session-id"]),
                   (b"mcp-protocol-version", b"2025-11-25")]  # fmt: skip
        note = orjson.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})
        loop.run_until_complete(driver.post("/mcp/json/", note, session))
        HttpTransport.roundtrip = _instant_roundtrip  # type: ignore[method-assign]
        params = {"name": "echo", "arguments": {"text": "hello"}}
        call = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params})
        rest = b'{"arguments": {"text": "hello"}}'
        rest_headers = [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"),
                        auth]  # fmt: skip

        async def mcp_call() -> None:
            status, _, body = await driver.post("/mcp/json/", call, session)
            if status != 200 or b"hello" not in body:
                raise RuntimeError(f"MCP call answered {status}: {body!r}")

        async def rest_call() -> None:
            status, _, body = await driver.post(
                "/api/v1/pools/json/tools/echo/call", rest, rest_headers
            )
            if status != 200 or b"hello" not in body:
                raise RuntimeError(f"REST call answered {status}: {body!r}")

        warm = max(calls // 10, 100)
        _timed(loop, mcp_call, warm, 1)
        _timed(loop, rest_call, warm, 1)
        result = {
            "mcp_us_per_call": _timed(loop, mcp_call, calls, repeat),
            "rest_us_per_call": _timed(loop, rest_call, calls, repeat),
        }
        loop.close()
        return result
    finally:
        upstream.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = measure(args.calls, args.repeat)
    print(f"MCP tools/call (handshake session): {result['mcp_us_per_call']:.1f} µs per call")
    print(f"REST tool call:                     {result['rest_us_per_call']:.1f} µs per call")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
