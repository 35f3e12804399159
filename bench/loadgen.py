"""A lean load generator: raw HTTP/1.1 with keep-alive, pre-built requests, fixed concurrency.

The SDK's `ClientSession` spends ~3 ms of client CPU per call and aiohttp ~0.15 ms; on a 2-core
machine the client would then eat the core the gateway needs, and the benchmark would measure the
client. So each worker owns one keep-alive TCP connection, speaks HTTP/1.1 through a bare
`asyncio.Protocol`, sends request bytes built once, and checks the answer with a byte search.
Its own CPU is reported next to every result, so a reader can see it was not the bottleneck.

Targets:

* `RestTarget` — mcppool's REST route: `POST /api/v1/pools/<pool>/tools/<tool>/call` + Bearer key.
* `McpTarget` — any Streamable HTTP MCP endpoint (an upstream directly, a proxy, mcppool's own).
  Handshake era: every worker initializes once and sends its calls on that session; modern era:
  no session, `_meta` and the `Mcp-Method` / `Mcp-Name` headers on every call.
* `FreshSdkTarget` — the baseline "a fresh session per call", as apps write it with the SDK:
  `async with Client(url)` around every call. `FreshRawTarget` is the lower bound of the same:
  initialize + initialized + call + DELETE over a kept connection, no SDK.

    .venv/bin/python -m bench.loadgen http://127.0.0.1:8000/mcp --concurrency 16 --duration 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import math
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Protocol, TypeVar
from urllib.parse import urlsplit

import orjson

from bench import procfs
from bench.stats import Latency

HANDSHAKE_VERSION: Final = "2025-11-25"
MODERN_VERSION: Final = "2026-07-28"
CLIENT_INFO: Final = {"name": "mcppool-loadgen", "version": "0"}
ACCEPT: Final = "application/json, text/event-stream"
# A worker that keeps failing is not measuring anything: give up on the run past this many errors.
MAX_ERRORS: Final = 200

Call = Callable[[], Awaitable[bool]]
T = TypeVar("T")


# ---------------------------------------------------------------- HTTP/1.1 over a bare protocol


class HttpError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    head: bytes  # status line and headers, as received
    body: bytes

    def header(self, name: str) -> str | None:
        """One header (case-insensitive name), or None."""
        wanted = name.lower().encode() + b":"
        for line in self.head.split(b"\r\n")[1:]:
            if line.lower().startswith(wanted):
                return line[len(wanted) :].strip().decode("latin-1")
        return None


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one exchange at a time (no pipelining)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._waiter: asyncio.Future[Response] | None = None
        self._transport: asyncio.Transport | None = None
        self.closed = False

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(cls, host, port)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        response = parse_response(self._buffer, eof=False)
        if response is not None:
            self._waiter = None
            waiter.set_result(response)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            response = parse_response(self._buffer, eof=True)
            if response is not None:
                waiter.set_result(response)
            else:
                waiter.set_exception(HttpError(f"connection closed mid-response: {exc}"))

    async def exchange(self, request: bytes) -> Response:
        if self.closed or self._transport is None:
            raise HttpError("connection is closed")
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        return await self._waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def parse_response(buffer: bytearray, *, eof: bool) -> Response | None:
    """Take one whole response off the front of `buffer`, or None if it is not complete yet.

    Understands `Content-Length`, chunked transfer encoding and (at EOF) a body that runs until
    the connection closes — what uvicorn, daphne and the SDK's servers send.
    """
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end])
    status = int(head[9:12])
    start = end + 4
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at >= 0:
        line_end = lower.find(b"\r\n", at + 2)
        length = int(lower[at + 17 : line_end if line_end >= 0 else len(lower)])
        if len(buffer) < start + length:
            return None
        body = bytes(buffer[start : start + length])
        del buffer[: start + length]
        return Response(status, head, body)
    if b"\r\ntransfer-encoding: chunked" in lower or b"\r\ntransfer-encoding:chunked" in lower:
        chunks: list[bytes] = []
        pos = start
        while True:
            line_end = buffer.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size = int(bytes(buffer[pos:line_end]).split(b";")[0], 16)
            if size == 0:
                trailer_end = buffer.find(b"\r\n\r\n", line_end)
                if trailer_end < 0:
                    return None
                del buffer[: trailer_end + 4]
                return Response(status, head, b"".join(chunks))
            if len(buffer) < line_end + 2 + size + 2:
                return None
            chunks.append(bytes(buffer[line_end + 2 : line_end + 2 + size]))
            pos = line_end + 2 + size + 2
    if status in (204, 304) or 100 <= status < 200:
        del buffer[:start]
        return Response(status, head, b"")
    if not eof:
        return None
    body = bytes(buffer[start:])
    buffer.clear()
    return Response(status, head, body)


def build_request(
    method: str, host: str, port: int, path: str, headers: Sequence[tuple[str, str]], body: bytes
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def call_succeeded(response: Response) -> bool:
    """A 200 carrying a tool result that is not an error (JSON or one SSE event)."""
    body = response.body
    return (
        response.status == 200
        and b'"isError":true' not in body
        and b'"isError": true' not in body
        and b'"error":{' not in body
        and b'"error": {' not in body
    )


# ---------------------------------------------------------------- targets


class Target(Protocol):
    """What the load generator drives: a name and, per worker, a way to make calls."""

    name: str

    async def worker(self, index: int) -> Worker: ...


class Worker(Protocol):
    async def call(self) -> bool: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    path: str

    @classmethod
    def of(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/")


class _ConnectionWorker:
    """A worker that sends one pre-built request on its own keep-alive connection."""

    def __init__(self, endpoint: Endpoint, request: bytes, connection: Connection) -> None:
        self.endpoint = endpoint
        self.request = request
        self.connection = connection

    async def call(self) -> bool:
        if self.connection.closed:
            self.connection = await Connection.open(self.endpoint.host, self.endpoint.port)
        return call_succeeded(await self.connection.exchange(self.request))

    async def close(self) -> None:
        self.connection.close()


@dataclass
class RestTarget:
    """mcppool's REST tool-call route."""

    url: str  # http://host:port/api/v1/pools/<pool>/tools/<tool>/call
    token: str
    arguments: dict[str, Any] = field(default_factory=lambda: {"text": "hello"})
    name: str = "rest"

    async def worker(self, index: int) -> Worker:
        endpoint = Endpoint.of(self.url)
        headers = [
            ("Authorization", f"Bearer {self.token}"),
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
        ]
        body = orjson.dumps({"arguments": self.arguments})
        request = build_request("POST", endpoint.host, endpoint.port, endpoint.path, headers, body)
        return _ConnectionWorker(
            endpoint, request, await Connection.open(endpoint.host, endpoint.port)
        )


@dataclass
class McpTarget:
    """A Streamable HTTP MCP endpoint, called over one kept session (or none, modern era)."""

    url: str
    era: str = "handshake"  # or "modern"
    tool: str = "echo"
    arguments: dict[str, Any] = field(default_factory=lambda: {"text": "hello"})
    headers: tuple[tuple[str, str], ...] = ()  # e.g. an Authorization header for mcppool
    name: str = "mcp"

    async def worker(self, index: int) -> Worker:
        endpoint = Endpoint.of(self.url)
        connection = await Connection.open(endpoint.host, endpoint.port)
        base = [("Content-Type", "application/json"), ("Accept", ACCEPT), *self.headers]
        params: dict[str, Any] = {"name": self.tool, "arguments": self.arguments}
        if self.era == "modern":
            params["_meta"] = {
                "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
                "io.modelcontextprotocol/clientInfo": CLIENT_INFO,
                "io.modelcontextprotocol/clientCapabilities": {},
            }
            headers = [
                *base,
                ("MCP-Protocol-Version", MODERN_VERSION),
                ("Mcp-Method", "tools/call"),
                ("Mcp-Name", self.tool),
            ]
            session_id = None
        else:
            session_id = await initialize(connection, endpoint, base)
            headers = [
                *base,
                ("Mcp-Session-Id", session_id),
                ("MCP-Protocol-Version", HANDSHAKE_VERSION),
            ]
        # Each worker has one call in flight at a time, so its index is a unique JSON-RPC id.
        body = orjson.dumps(
            {"jsonrpc": "2.0", "id": index + 1, "method": "tools/call", "params": params}
        )
        request = build_request("POST", endpoint.host, endpoint.port, endpoint.path, headers, body)
        worker = _McpWorker(endpoint, request, connection)
        worker.session_headers = headers if session_id else []
        return worker


class _McpWorker(_ConnectionWorker):
    session_headers: list[tuple[str, str]]

    async def close(self) -> None:
        # End the session so the server does not keep it (the SDK's client does the same).
        if self.session_headers and not self.connection.closed:
            request = build_request(
                "DELETE", self.endpoint.host, self.endpoint.port, self.endpoint.path,
                self.session_headers, b"",
            )  # fmt: skip
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.connection.exchange(request), 2)
        self.connection.close()


async def initialize(
    connection: Connection, endpoint: Endpoint, headers: Sequence[tuple[str, str]]
) -> str:
    """Open a handshake-era session on `connection`; returns its `Mcp-Session-Id`."""
    body = orjson.dumps(
        {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": HANDSHAKE_VERSION,
                "capabilities": {},
                "clientInfo": CLIENT_INFO,
            },
        }
    )
    request = build_request("POST", endpoint.host, endpoint.port, endpoint.path, headers, body)
    response = await connection.exchange(request)
    session_id = response.header("mcp-session-id")
    if response.status != 200 or not session_id:
        raise HttpError(f"initialize answered {response.status}: {response.body[:200]!r}")
    session_headers = [
        *headers,
        ("Mcp-Session-Id", session_id),
        ("MCP-Protocol-Version", HANDSHAKE_VERSION),
    ]
    note = orjson.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})
    request = build_request(
        "POST", endpoint.host, endpoint.port, endpoint.path, session_headers, note
    )
    answer = await connection.exchange(request)
    if answer.status not in (200, 202):
        raise HttpError(f"notifications/initialized answered {answer.status}")
    return session_id


@dataclass
class FreshRawTarget:
    """A new handshake-era session for every call (initialize, initialized, call, DELETE) over a
    kept connection: the least a session per call can cost, without the SDK."""

    url: str
    tool: str = "echo"
    arguments: dict[str, Any] = field(default_factory=lambda: {"text": "hello"})
    name: str = "fresh-raw"

    async def worker(self, index: int) -> Worker:
        return _FreshRawWorker(self, Endpoint.of(self.url))


class _FreshRawWorker:
    def __init__(self, target: FreshRawTarget, endpoint: Endpoint) -> None:
        self.target = target
        self.endpoint = endpoint
        self.connection: Connection | None = None
        self.body = orjson.dumps(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": target.tool, "arguments": target.arguments},
            }
        )

    async def call(self) -> bool:
        endpoint = self.endpoint
        if self.connection is None or self.connection.closed:
            self.connection = await Connection.open(endpoint.host, endpoint.port)
        base = [("Content-Type", "application/json"), ("Accept", ACCEPT)]
        session_id = await initialize(self.connection, endpoint, base)
        headers = [
            *base,
            ("Mcp-Session-Id", session_id),
            ("MCP-Protocol-Version", HANDSHAKE_VERSION),
        ]
        request = build_request(
            "POST", endpoint.host, endpoint.port, endpoint.path, headers, self.body
        )
        ok = call_succeeded(await self.connection.exchange(request))
        delete = build_request("DELETE", endpoint.host, endpoint.port, endpoint.path, headers, b"")
        await self.connection.exchange(delete)
        return ok

    async def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


@dataclass
class FreshSdkTarget:
    """`async with mcp.Client(url, mode="legacy")` around every call: what an app that does not
    pool sessions does (its client CPU is the SDK's, so read calls/s and latency, not CPU)."""

    url: str
    tool: str = "echo"
    arguments: dict[str, Any] = field(default_factory=lambda: {"text": "hello"})
    name: str = "fresh-sdk"

    async def worker(self, index: int) -> Worker:
        return _FreshSdkWorker(self)


class _FreshSdkWorker:
    def __init__(self, target: FreshSdkTarget) -> None:
        self.target = target

    async def call(self) -> bool:
        from mcp import Client

        async with Client(self.target.url, mode="legacy") as client:
            result = await client.call_tool(self.target.tool, self.target.arguments)
            return not result.is_error

    async def close(self) -> None:
        return None


@dataclass
class SdkTarget:
    """The mcp SDK's own client, one kept handshake-era session per worker: what most users run
    (its client CPU is the SDK's; the gateway's cost per call differs from the lean client's)."""

    url: str
    headers: tuple[tuple[str, str], ...] = ()
    tool: str = "echo"
    arguments: dict[str, Any] = field(default_factory=lambda: {"text": "hello"})
    name: str = "sdk"

    async def worker(self, index: int) -> Worker:
        worker = _SdkWorker(self)
        await worker.open()
        return worker


class _SdkWorker:
    """The SDK's session lives in a task of its own: anyio's scopes must be left by the task
    that entered them, and the load generator opens and closes workers from different tasks."""

    def __init__(self, target: SdkTarget) -> None:
        self.target = target
        self.client: Any = None
        self.ready = asyncio.Event()
        self.done = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.failure: BaseException | None = None

    async def open(self) -> None:
        self.task = asyncio.create_task(self._hold())
        await self.ready.wait()
        if self.failure is not None:
            raise HttpError(f"{self.target.name}: SDK session failed: {self.failure}")

    async def _hold(self) -> None:
        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        try:
            async with (
                httpx2.AsyncClient(headers=dict(self.target.headers), timeout=30) as http,
                Client(
                    streamable_http_client(self.target.url, http_client=http), mode="legacy"
                ) as client,
            ):
                self.client = client
                self.ready.set()
                await self.done.wait()
        except Exception as exc:  # reported by open() or ignored at close
            self.failure = exc
        finally:
            self.ready.set()

    async def call(self) -> bool:
        result = await self.client.call_tool(self.target.tool, self.target.arguments)
        return not result.is_error

    async def close(self) -> None:
        self.done.set()
        if self.task is not None:
            await self.task


@dataclass
class StdioDirectTarget:
    """A stdio server called directly: one kept child shared by all workers, calls matched by
    id (the floor's own stdio client, without HTTP in front). `stop()` ends the child."""

    command: Sequence[str]
    tool: str = "echo"
    arguments: dict[str, Any] = field(default_factory=lambda: {"text": "hello"})
    name: str = "direct-stdio"
    upstream: Any = None

    async def worker(self, index: int) -> Worker:
        from bench.floor import StdioUpstream

        if self.upstream is None:
            self.upstream = StdioUpstream(self.command)
            await self.upstream.start()
        return _StdioWorker(self)

    async def stop(self) -> None:
        if self.upstream is not None:
            await self.upstream.stop()
            self.upstream = None


class _StdioWorker:
    def __init__(self, target: StdioDirectTarget) -> None:
        self.target = target

    async def call(self) -> bool:
        params = {"name": self.target.tool, "arguments": self.target.arguments}
        request = {"jsonrpc": "2.0", "method": "tools/call", "params": params}
        answer = await self.target.upstream.send(request)
        return "result" in answer and not answer["result"].get("isError")

    async def close(self) -> None:
        return None


# ---------------------------------------------------------------- the run


@dataclass
class RunResult:
    target: str
    concurrency: int
    calls: int
    errors: int
    seconds: float
    calls_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    client_cpu_ms_per_call: float
    # CPU ms per call of each watched process over the measured window (gateway, upstream...)
    cpu_ms_per_call: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def run(
    target: Target,
    *,
    concurrency: int,
    duration: float,
    max_calls: int = 0,
    warmup_calls: int = 3,
    watch: dict[str, int] | None = None,
) -> RunResult:
    """Drive `target` with `concurrency` workers for `duration` seconds (or `max_calls` calls).

    Every worker connects and makes `warmup_calls` calls first (connections, sessions, the first
    call's code paths); only then do the clocks start. `watch` names processes whose CPU time over
    the measured window is reported per call.
    """
    watch = watch or {}
    workers = await asyncio.gather(*(target.worker(i) for i in range(concurrency)))
    try:
        for _ in range(warmup_calls):
            await asyncio.gather(*(w.call() for w in workers))
        latencies: list[float] = []
        errors = 0
        budget = itertools.count() if not max_calls else iter(range(max_calls))
        clock = time.perf_counter
        deadline = 0.0

        async def drive(worker: Worker) -> None:
            nonlocal errors
            append = latencies.append
            for _ in budget:
                if clock() >= deadline:
                    return
                started = clock()
                try:
                    ok = await worker.call()
                except (TimeoutError, OSError, HttpError) as exc:
                    ok = False
                    if errors >= MAX_ERRORS:
                        raise HttpError(f"{target.name}: too many errors, last: {exc}") from exc
                except Exception as exc:  # the SDK's own failures in the fresh-session baseline
                    ok = False
                    if errors >= MAX_ERRORS:
                        raise HttpError(f"{target.name}: too many errors, last: {exc}") from exc
                if ok:
                    append(clock() - started)
                else:
                    errors += 1

        # No collection pauses in the client while it measures: they would show up as the
        # gateway's tail latency.
        gc.collect()
        gc.disable()
        try:
            before = {name: procfs.cpu_seconds(pid) for name, pid in watch.items()}
            cpu = time.process_time()
            started = clock()
            deadline = started + duration
            await asyncio.gather(*(drive(w) for w in workers))
            seconds = clock() - started
            cpu = time.process_time() - cpu
            after = {name: procfs.cpu_seconds(pid) for name, pid in watch.items()}
        finally:
            gc.enable()
    finally:
        await asyncio.gather(*(w.close() for w in workers), return_exceptions=True)
    calls = len(latencies)
    latency = Latency.of(latencies)
    per_call = (lambda s: s / calls * 1000) if calls else (lambda s: math.nan)
    return RunResult(
        target=target.name,
        concurrency=concurrency,
        calls=calls,
        errors=errors,
        seconds=seconds,
        calls_per_s=calls / seconds if seconds else math.nan,
        p50_ms=latency.p50_ms,
        p99_ms=latency.p99_ms,
        max_ms=latency.max_ms,
        client_cpu_ms_per_call=per_call(cpu),
        cpu_ms_per_call={name: per_call(after[name] - before[name]) for name in watch},
    )


def run_on_new_loop(work: Awaitable[T]) -> T:
    """Run `work` to the end on a fresh (uvloop) event loop, then close it."""
    loop = new_event_loop()
    try:
        return loop.run_until_complete(work)
    finally:
        loop.close()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (uvicorn[standard] brings it): the cheapest client loop there is."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("url")
    parser.add_argument("--kind", choices=["mcp", "rest", "fresh-raw", "fresh-sdk"], default="mcp")
    parser.add_argument("--era", choices=["handshake", "modern"], default="handshake")
    parser.add_argument("--token", default="", help="API key for --kind rest (Bearer)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--pid", type=int, action="append", default=[], help="watch its CPU")
    args = parser.parse_args(argv)
    target: Target
    if args.kind == "rest":
        target = RestTarget(args.url, args.token)
    elif args.kind == "fresh-raw":
        target = FreshRawTarget(args.url)
    elif args.kind == "fresh-sdk":
        target = FreshSdkTarget(args.url)
    else:
        headers = (("Authorization", f"Bearer {args.token}"),) if args.token else ()
        target = McpTarget(args.url, era=args.era, headers=headers)
    watch = {str(pid): pid for pid in args.pid}
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        result = runner.run(
            run(target, concurrency=args.concurrency, duration=args.duration, watch=watch)
        )
    json.dump(result.as_dict(), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
