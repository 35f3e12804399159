"""The floor: the least a gateway process can spend forwarding one MCP call.

A raw ASGI app under the same ASGI server as mcppool (uvicorn, uvloop, httptools) with the same
upstream client (aiohttp on a kept connection pool, orjson), and nothing else: no auth, no pick,
no accounting, no metrics, no Django. mcppool's CPU per call divided by this one's, measured in
the same run, is the gateway's overhead over what forwarding costs on this machine.

Routes:

* `POST /mcp` (and `DELETE`): the MCP endpoint. HTTP upstream: the body and the MCP headers are
  POSTed to the upstream as they came, the answer is returned as it came (the client's session is
  the upstream's). stdio upstream: the line is written to the one kept child with a fresh id, the
  answer matched by id and given its id back; `initialize` is answered from the child's own
  handshake at start, notifications are acknowledged (202) without being forwarded.
* `POST /rest/<tool>`: the REST route: `{"arguments": {...}}` becomes a `tools/call` on the
  floor's own upstream session; the answer is the JSON-RPC `result`.

    .venv/bin/python -m bench.floor --port 9000 --upstream http://127.0.0.1:8123/mcp
    .venv/bin/python -m bench.floor --port 9000 -- python -m tests.upstreams.faulty \
        --transport stdio
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import aiohttp
import orjson
import uvicorn

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PROTOCOL_VERSION: Final = "2025-11-25"
# Request headers the MCP transport needs upstream, and answer headers the client needs back.
FORWARDED: Final = frozenset(
    {b"content-type", b"accept", b"mcp-session-id", b"mcp-protocol-version", b"mcp-method",
     b"mcp-name", b"last-event-id"}
)  # fmt: skip
RETURNED: Final = ("Content-Type", "Mcp-Session-Id")
JSON: Final = [(b"content-type", b"application/json")]
INITIALIZE: Final = {
    "protocolVersion": PROTOCOL_VERSION,
    "capabilities": {},
    "clientInfo": {"name": "mcppool-bench-floor", "version": "0"},
}


def json_rpc_result(body: bytes) -> bytes:
    """The JSON-RPC answer in `body` (plain JSON or the last SSE `data:` line)."""
    if body[:1] != b"{":
        data = [line[5:] for line in body.splitlines() if line.startswith(b"data:")]
        body = data[-1].strip() if data else b"{}"
    return body


class HttpUpstream:
    """One aiohttp session (kept connections) to a Streamable HTTP upstream."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http: aiohttp.ClientSession | None = None
        self.session_headers: dict[str, str] = {}
        self.ids = itertools.count(1)

    async def start(self) -> None:
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
            json_serialize=lambda o: orjson.dumps(o).decode(),
        )
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
        }
        body = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": INITIALIZE}
        async with self.http.post(self.url, data=orjson.dumps(body), headers=headers) as answer:
            await answer.read()
            session = answer.headers.get("Mcp-Session-Id")
        self.session_headers = {**headers, "MCP-Protocol-Version": PROTOCOL_VERSION}
        if session:
            self.session_headers["Mcp-Session-Id"] = session
        note = orjson.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})
        async with self.http.post(self.url, data=note, headers=self.session_headers) as answer:
            await answer.read()

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.close()

    async def mcp(
        self, method: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        assert self.http is not None
        if method == "GET":
            return 405, [], b""  # no standalone stream (it would never end)
        out = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers if k in FORWARDED}
        async with self.http.request(method, self.url, data=body, headers=out) as answer:
            data = await answer.read()
            back = [
                (name.lower().encode(), answer.headers[name].encode("latin-1"))
                for name in RETURNED
                if name in answer.headers
            ]
            return answer.status, back, data

    async def call_tool(self, tool: str, arguments: Any) -> bytes:
        assert self.http is not None
        request = {"jsonrpc": "2.0", "id": next(self.ids), "method": "tools/call",
                   "params": {"name": tool, "arguments": arguments}}  # fmt: skip
        async with self.http.post(
            self.url, data=orjson.dumps(request), headers=self.session_headers
        ) as answer:
            return json_rpc_result(await answer.read())


class StdioUpstream:
    """One kept child speaking newline-delimited JSON-RPC; calls matched by id."""

    def __init__(self, command: Sequence[str]) -> None:
        self.command = list(command)
        self.child: asyncio.subprocess.Process | None = None
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.ids = itertools.count(1)
        self.initialized: dict[str, Any] = {}
        self.reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.child = await asyncio.create_subprocess_exec(
            *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        self.reader = asyncio.create_task(self._read())
        answer = await self.send({"jsonrpc": "2.0", "method": "initialize", "params": INITIALIZE})
        self.initialized = answer.get("result", {})
        self._write({"jsonrpc": "2.0", "method": "notifications/initialized"})

    async def stop(self) -> None:
        if self.child is not None and self.child.returncode is None:
            self.child.kill()
            await self.child.wait()

    def _write(self, message: dict[str, Any]) -> None:
        assert self.child is not None
        assert self.child.stdin is not None
        self.child.stdin.write(orjson.dumps(message) + b"\n")

    async def send(self, message: dict[str, Any]) -> dict[str, Any]:
        """Write `message` under a fresh id; its answer (the id is the caller's to restore)."""
        key = next(self.ids)
        message["id"] = key
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[key] = future
        self._write(message)
        return await future

    async def _read(self) -> None:
        assert self.child is not None
        assert self.child.stdout is not None
        stdout = self.child.stdout
        while line := await stdout.readline():
            message = orjson.loads(line)
            future = self.pending.pop(message.get("id"), None) if "id" in message else None
            if future is not None and not future.done():
                future.set_result(message)
        for future in self.pending.values():
            future.set_exception(ConnectionError("the stdio upstream exited"))

    async def mcp(
        self, method: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        if method == "GET":
            return 405, [], b""  # no standalone stream: the spec's way to say so
        if method != "POST":
            return 200, [], b""
        message = orjson.loads(body)
        if "id" not in message:
            return 202, [], b""
        own = message["id"]
        if message.get("method") == "initialize":
            answer: dict[str, Any] = {"jsonrpc": "2.0", "id": own, "result": self.initialized}
            return 200, [*JSON, (b"mcp-session-id", b"floor")], orjson.dumps(answer)
        answer = await self.send(message)
        answer["id"] = own
        return 200, JSON, orjson.dumps(answer)

    async def call_tool(self, tool: str, arguments: Any) -> bytes:
        request = {"jsonrpc": "2.0", "method": "tools/call",
                   "params": {"name": tool, "arguments": arguments}}  # fmt: skip
        return orjson.dumps(await self.send(request))


Upstream = HttpUpstream | StdioUpstream


def application(upstream: Upstream) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                if event["type"] == "lifespan.startup":
                    await upstream.start()
                    await send({"type": "lifespan.startup.complete"})
                elif event["type"] == "lifespan.shutdown":
                    await upstream.stop()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        more = True
        while more:
            event = await receive()
            body += event.get("body", b"")
            more = event.get("more_body", False)
        path: str = scope["path"]
        if path.startswith("/rest/"):
            arguments = orjson.loads(body).get("arguments", {}) if body else {}
            status, headers, data = 200, JSON, await upstream.call_tool(path[6:], arguments)
        elif path.startswith("/mcp"):
            status, headers, data = await upstream.mcp(scope["method"], scope["headers"], body)
        else:
            status, headers, data = 404, JSON, b'{"error": "not found"}'
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", help="Streamable HTTP URL of the upstream server")
    parser.add_argument("command", nargs="*", help="stdio upstream command (after --)")
    args = parser.parse_args(argv)
    if args.upstream:
        upstream: Upstream = HttpUpstream(args.upstream)
    elif args.command:
        upstream = StdioUpstream(args.command)
    else:
        parser.error("give --upstream URL or a stdio command after --")
    uvicorn.run(
        application(upstream),
        host="127.0.0.1",
        port=args.port,
        lifespan="on",
        access_log=False,
        log_level="warning",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
