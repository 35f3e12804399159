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

With `--parts`, each part of the path is then replaced in turn by a stand-in that does next to
nothing (the key record found the first time, the same pick every time, the body taken as it
comes, no accounting, ...) and the time per call measured again: the difference is what that part
costs. Stand-ins reach into the code by name, so a renamed function fails the run loudly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
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


# What the runtime's own upkeep asks for meanwhile (its tool list refresh, pings).
ANSWERS: dict[str, Any] = {
    "tools/list": {"tools": [{"name": "echo", "inputSchema": {"type": "object"}}]},
    "ping": {},
}


async def _instant_roundtrip(self: Any, call: Any, body: bytes, method: str, params: Any) -> Any:
    return {"jsonrpc": "2.0", "id": call.id, "result": ANSWERS.get(method, RESULT)}


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


Undo = Callable[[], None]


def _patch(owner: Any, name: str, value: Any) -> Undo:
    original = getattr(owner, name)
    setattr(owner, name, value)
    return lambda: setattr(owner, name, original)


def _undo_all(undos: list[Undo]) -> Undo:
    def undo() -> None:
        for one in undos:
            one()

    return undo


def _authentication() -> Undo:
    from balancing.api import call
    from balancing.mcpserver import endpoint

    real, known = endpoint.authenticate, dict[Any, Any]()  # type: ignore[attr-defined]

    async def remembered(host: Any, authorization: Any, **kwargs: Any) -> Any:
        record = known.get(authorization)
        if record is None:
            record = known[authorization] = await real(host, authorization, **kwargs)
        return record

    undo = [_patch(endpoint, "authenticate", remembered), _patch(call, "authenticate", remembered)]
    return _undo_all(undo)


def _origin_check() -> Undo:
    from balancing.mcpserver import endpoint

    return _patch(endpoint, "check_origin", lambda scope: None)


def _pick() -> Undo:
    from balancing.engine.balancer import Balancer

    real, picks = Balancer.pick, dict[int, Any]()

    def same_pick(self: Any, endpoints: Any, now: float, **kwargs: Any) -> Any:
        pick = picks.get(id(self))
        if pick is None:
            pick = picks[id(self)] = real(self, endpoints, now, **kwargs)
        return pick

    return _patch(Balancer, "pick", same_pick)


def _body_read() -> Undo:
    from balancing.api import call
    from balancing.mcpserver import endpoint

    async def as_it_comes(scope: Any, receive: Any, limit: int, timeout: Any = None) -> bytes:
        body: bytes = (await receive())["body"]
        return body

    undo = [_patch(endpoint, "read_body", as_it_comes), _patch(call, "read_body", as_it_comes)]
    return _undo_all(undo)


def _accounting() -> Undo:
    from balancing.engine.runtime import Runtime

    async def unaccounted(
        self: Any, live: Any, endpoint: Any, trial: Any, method: Any, params: Any, send: Any
    ) -> Any:
        return await send(params, None)

    return _patch(Runtime, "_accounted", unaccounted)


def _session_hand_out() -> Undo:
    from balancing.engine.sessions import SessionPool

    class Lent:
        def __init__(self, session: Any) -> None:
            self.session = session

        async def __aenter__(self) -> Any:
            return self.session

        async def __aexit__(self, *exc: object) -> None:
            return None

    lent: dict[int, Lent] = {}

    def borrow(self: Any, timeout: Any = None) -> Lent:
        if id(self) not in lent:
            lent[id(self)] = Lent(next(iter(self._slots)).session)
        return lent[id(self)]

    return _patch(SessionPool, "borrow", borrow)


def _disconnect_watch() -> Undo:
    from balancing.mcpserver import forward

    async def unwatched(request: Any, receive: Any) -> Any:
        return await forward.dispatch(request)

    return _patch(forward, "_watching_disconnect", unwatched)


def _upstream_request() -> Undo:
    from balancing.engine.upstream import UpstreamSession

    async def answered(self: Any, method: str, params: Any, **kwargs: Any) -> Any:
        return ANSWERS.get(method, RESULT)

    return _patch(UpstreamSession, "request", answered)


def _reply() -> Undo:
    from balancing.mcpserver.replies import Reply

    async def fixed(self: Any, result: Any, method: str) -> None:
        await self._send({"type": "http.response.start", "status": 200, "headers": []})
        await self._send({"type": "http.response.body", "body": b'"hello"'})

    return _patch(Reply, "result", fixed)


PARTS: dict[str, Callable[[], Undo]] = {
    "API key check (hash, record, expiry)": _authentication,
    "Host/Origin check": _origin_check,
    "request body read (size cap, deadline)": _body_read,
    "balancer pick": _pick,
    "session hand-out (borrow, give back)": _session_hand_out,
    "call accounting (stats, outlier, metrics)": _accounting,
    "upstream request (id, envelope, encoding, deadline)": _upstream_request,
    "disconnect watch (MCP)": _disconnect_watch,
    "JSON-RPC reply (MCP)": _reply,
}


def measure(calls: int, repeat: int, parts: bool = False) -> dict[str, Any]:
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

        def both() -> tuple[float, float]:
            warm = max(calls // 10, 100)
            _timed(loop, mcp_call, warm, 1)
            _timed(loop, rest_call, warm, 1)
            return _timed(loop, mcp_call, calls, repeat), _timed(loop, rest_call, calls, repeat)

        mcp, rest_us = both()
        result: dict[str, Any] = {"mcp_us_per_call": mcp, "rest_us_per_call": rest_us}
        if parts:
            result["parts"] = {}
            for name, stand_in in PARTS.items():
                undo = stand_in()
                try:
                    without = both()
                finally:
                    undo()
                result["parts"][name] = {
                    "mcp_us": mcp - without[0],
                    "rest_us": rest_us - without[1],
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
    parser.add_argument("--parts", action="store_true", help="also what each part costs")
    args = parser.parse_args(argv)
    result = measure(args.calls, args.repeat, args.parts)
    print(f"MCP tools/call (handshake session): {result['mcp_us_per_call']:.1f} µs per call")
    print(f"REST tool call:                     {result['rest_us_per_call']:.1f} µs per call")
    if args.parts:
        print("\n| part | MCP µs | REST µs |\n|---|---:|---:|")
        for name, part in result["parts"].items():
            print(f"| {name} | {part['mcp_us']:.1f} | {part['rest_us']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
