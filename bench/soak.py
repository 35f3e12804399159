"""Soak: many clients calling tools through a real mcppool process for a minute, watched for leaks.

    .venv/bin/python -m bench.soak [--seconds 60] [--clients 64] [--no-docs]     (`make soak`)

Starts three replicas of the faulty test server (Streamable HTTP, JSON answers), a real mcppool
web process (`bench.gateway`: uvicorn on a throw-away SQLite var dir, exactly as `make run`
serves) with one pool across the replicas, and an API key. Half the clients call `echo` over REST
(`POST /api/v1/pools/soak/tools/echo/call`), half over the MCP endpoint (`/mcp/soak/`, one
handshake-era session each), each with one call in flight at a time on a keep-alive connection.

After a warm-up under the same load (5 s: the gateway opens upstream connections on demand, up to
a plateau), every second it samples the gateway's resident memory, open file descriptors
(`/proc/<pid>/fd`) and upstream sessions (`mcppool_sessions` on `/metrics`), and reports errors
(the target is 0), calls/s, p50/p99 latency and the growth of each sample between the first and
the last 10 s.
Writes `bench/soak.json` and the generated section of `docs/reliability.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson

from bench import gateway, procfs
from bench.stats import Latency
from tests.upstreams import procs

ROOT: Final = Path(__file__).resolve().parent.parent
DEFAULT_JSON: Final = ROOT / "bench" / "soak.json"
DEFAULT_DOCS: Final = ROOT / "docs" / "reliability.md"
START: Final = "<!-- soak:start -->"
END: Final = "<!-- soak:end -->"
POOL: Final = "soak"
REPLICAS: Final = 3
WINDOW: Final = 10.0  # seconds compared at the start and the end of the run
WARMUP: Final = 5.0  # seconds of load before the measured part (connections reach a plateau)
CALL_TIMEOUT: Final = 30.0  # a client gives up on one call after this (counted as an error)
ACCEPT: Final = "application/json, text/event-stream"
PROTOCOL_VERSION: Final = "2025-11-25"
_SESSIONS_LINE: Final = re.compile(rb"^mcppool_sessions\{[^}]*\} ([0-9.e+-]+)$", re.M)
_IN_FLIGHT_LINE: Final = re.compile(rb"^mcppool_in_flight\{[^}]*\} ([0-9.e+-]+)$", re.M)


# ---------------------------------------------------------------- the system under test


@dataclass
class Stack:
    """Three replicas and a real mcppool process with a pool across them."""

    replicas: list[procs.UpstreamProcess]
    gateway: gateway.Gateway

    @property
    def rest_url(self) -> str:
        return self.gateway.rest_url(POOL)

    @property
    def mcp_url(self) -> str:
        return self.gateway.mcp_url(POOL)

    @property
    def metrics_url(self) -> str:
        return self.gateway.base_url + "/metrics"


def pool_definition(urls: Sequence[str]) -> dict[str, Any]:
    return {
        "slug": POOL,
        "name": "Soak",
        "strategy": "health_based",
        "servers": [
            {"name": f"r{i}", "transport": "streamable_http", "url": url}
            for i, url in enumerate(urls, 1)
        ],
    }


@contextlib.contextmanager
def running_stack(replicas: int = REPLICAS) -> Iterator[Stack]:
    """Start everything; stop everything on the way out, whatever happened."""
    started: list[procs.UpstreamProcess] = []
    gw: gateway.Gateway | None = None
    try:
        for i in range(1, replicas + 1):
            started.append(procs.start_faulty_http(name=f"r{i}", json_response=True))
        var_dir, token = gateway.prepare([pool_definition([r.url for r in started])])
        gw = gateway.start(var_dir, token, ready_path=f"/api/v1/pools/{POOL}/tools/echo/call")
        yield Stack(started, gw)
    finally:
        if gw is not None:
            gw.stop()
        for replica in started:
            replica.stop()


# ---------------------------------------------------------------- clients


class CallFailed(Exception):
    """One call did not produce a successful tool result; the text says how."""


class RestClient:
    """`POST …/tools/echo/call` with the key; a 200 without `isError` is a success."""

    def __init__(self, http: aiohttp.ClientSession, url: str, token: str, index: int) -> None:
        self.http = http
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.body = orjson.dumps({"arguments": {"text": f"rest-{index}"}})

    async def start(self) -> None:
        return None

    async def call(self) -> None:
        async with self.http.post(self.url, data=self.body, headers=self.headers) as answer:
            body = await answer.read()
        if answer.status != 200:
            raise CallFailed(f"rest {answer.status} {_error_code(body)}")
        if b'"isError":true' in body:
            raise CallFailed("rest isError")

    async def close(self) -> None:
        return None


class McpClient:
    """One handshake-era session on the MCP endpoint, `tools/call` after `tools/call` on it."""

    def __init__(self, http: aiohttp.ClientSession, url: str, token: str, index: int) -> None:
        self.http = http
        self.url = url
        self.index = index
        self.headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": ACCEPT,
        }
        self.next_id = 1

    async def start(self) -> None:
        message = {
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": PROTOCOL_VERSION, "capabilities": {},
                       "clientInfo": {"name": f"soak-{self.index}", "version": "0"}},
        }  # fmt: skip
        async with self.http.post(self.url, data=orjson.dumps(message), headers=self.headers) as a:
            await a.read()
            session_id = a.headers.get("mcp-session-id")
            if a.status != 200 or not session_id:
                raise CallFailed(f"mcp initialize answered {a.status}")
        self.headers = {
            **self.headers,
            "Mcp-Session-Id": session_id,
            "MCP-Protocol-Version": PROTOCOL_VERSION,
        }
        note = orjson.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})
        async with self.http.post(self.url, data=note, headers=self.headers) as answer:
            await answer.read()

    async def call(self) -> None:
        self.next_id += 1
        message = {
            "jsonrpc": "2.0", "id": self.next_id, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": f"mcp-{self.index}"}},
        }  # fmt: skip
        async with self.http.post(self.url, data=orjson.dumps(message), headers=self.headers) as a:
            body = await a.read()
        if a.status != 200:
            raise CallFailed(f"mcp {a.status}")
        if b'"error":' in body:
            raise CallFailed(f"mcp error {_rpc_error_code(body)}")
        if b'"isError":true' in body:
            raise CallFailed("mcp isError")

    async def close(self) -> None:
        """End the session, as a well-behaved client does (the gateway forgets it at once)."""
        if "Mcp-Session-Id" in self.headers:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self.http.delete(self.url, headers=self.headers) as answer:
                    await answer.read()


def _error_code(body: bytes) -> str:
    with contextlib.suppress(Exception):
        return str(orjson.loads(body)["error"]["code"])
    return "?"


def _rpc_error_code(body: bytes) -> str:
    with contextlib.suppress(Exception):
        return str(orjson.loads(body)["error"]["data"]["code"])
    return "?"


Client = RestClient | McpClient


# ---------------------------------------------------------------- sampling


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # seconds since the load started
    rss_mb: float
    fds: int
    sessions: int  # upstream sessions of the pool, every state
    in_flight: int
    calls: int  # successful calls so far


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def metric_sum(pattern: re.Pattern[bytes], text: bytes) -> int:
    return int(sum(float(value) for value in pattern.findall(text)))


async def sample(http: aiohttp.ClientSession, stack: Stack, at: float, calls: int) -> Sample:
    async with http.get(stack.metrics_url) as answer:
        text = await answer.read()
    pid = stack.gateway.pid
    return Sample(
        at=round(at, 2),
        rss_mb=round(procfs.rss_bytes(pid) / 2**20, 2),
        fds=open_fds(pid),
        sessions=metric_sum(_SESSIONS_LINE, text),
        in_flight=metric_sum(_IN_FLIGHT_LINE, text),
        calls=calls,
    )


# ---------------------------------------------------------------- the run


@dataclass
class SoakResult:
    clients: int
    seconds: float  # measured, after the warm-up
    warmup: float
    calls: int
    errors: int
    error_kinds: dict[str, int]
    calls_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    growth: dict[str, float]  # last window's mean minus the first window's, per sample field
    first_window: dict[str, float]
    last_window: dict[str, float]
    samples: list[Sample] = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def window_means(samples: Sequence[Sample], seconds: float) -> tuple[dict[str, float], ...]:
    """Mean RSS, fds and sessions over the first and the last `seconds` of the run."""
    end = samples[-1].at if samples else 0.0
    first = [s for s in samples if s.at <= seconds] or list(samples[:1])
    last = [s for s in samples if s.at >= end - seconds] or list(samples[-1:])

    def means(chosen: Sequence[Sample]) -> dict[str, float]:
        return {
            name: round(sum(getattr(s, name) for s in chosen) / len(chosen), 2)
            for name in ("rss_mb", "fds", "sessions")
        }

    return means(first), means(last)


async def soak(
    stack: Stack, *, clients: int, seconds: float, warmup: float = WARMUP, window: float = WINDOW
) -> SoakResult:
    """Run `clients` clients (half REST, half MCP) for `warmup + seconds`, sampling once a second
    after the warm-up. Errors count from the first call; latencies and calls/s after the warm-up.

    The warm-up is there because the gateway opens connections to the upstreams on demand: its
    descriptor count climbs for the first seconds to the plateau the load needs, which is not a
    leak and would otherwise read as one in the first window.
    """
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        token = stack.gateway.token
        pool: list[Client] = [
            RestClient(http, stack.rest_url, token, i)
            if i % 2 == 0
            else McpClient(http, stack.mcp_url, token, i)
            for i in range(clients)
        ]
        await asyncio.gather(*(c.start() for c in pool))
        latencies: list[float] = []
        kinds: Counter[str] = Counter()
        loop = asyncio.get_running_loop()
        started = loop.time() + warmup  # the measured part
        deadline = started + seconds

        async def drive(client: Client) -> None:
            while loop.time() < deadline:
                begun = loop.time()
                try:
                    await client.call()
                except CallFailed as exc:
                    kinds[str(exc)] += 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    kinds[f"{type(client).__name__} {type(exc).__name__}"] += 1
                else:
                    if begun >= started:
                        latencies.append(loop.time() - begun)

        samples: list[Sample] = []

        async def watch() -> None:
            tick = started
            while tick < deadline:
                tick += 1.0
                await asyncio.sleep(max(0.0, tick - loop.time()))
                samples.append(await sample(http, stack, loop.time() - started, len(latencies)))

        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(drive(c) for c in pool))
        elapsed = loop.time() - started
        await watcher
        await asyncio.gather(*(c.close() for c in pool))
    first, last = window_means(samples, min(window, seconds / 4))
    latency = Latency.of(latencies)
    return SoakResult(
        clients=clients,
        seconds=round(elapsed, 2),
        warmup=warmup,
        calls=len(latencies),
        errors=sum(kinds.values()),
        error_kinds=dict(kinds),
        calls_per_s=round(len(latencies) / elapsed, 1) if elapsed else math.nan,
        p50_ms=round(latency.p50_ms, 2),
        p99_ms=round(latency.p99_ms, 2),
        max_ms=round(latency.max_ms, 2),
        growth={k: round(last[k] - first[k], 2) for k in first},
        first_window=first,
        last_window=last,
        samples=samples,
    )


# ---------------------------------------------------------------- the report


def render(result: SoakResult) -> str:
    """The generated part of `docs/reliability.md`."""
    w = min(WINDOW, result.seconds / 4)
    first, last, growth = result.first_window, result.last_window, result.growth
    kinds = ", ".join(f"{k}: {n}" for k, n in sorted(result.error_kinds.items())) or "none"
    return "\n".join(
        [
            f"Soak run of {time.strftime('%Y-%m-%d')} on {platform.machine()} "
            f"({procfs.cpu_model()}, {os.cpu_count()} cores): {result.clients} clients "
            f"(half REST, half MCP endpoint) calling `echo` across {REPLICAS} replicas for "
            f"{result.seconds:.0f} s, after {result.warmup:.0f} s of warm-up under the same load.",
            "",
            "| measure | value | target |",
            "|---|---|---|",
            f"| calls | {result.calls} | |",
            f"| errors | {result.errors} ({kinds}) | 0 |",
            f"| calls/s | {result.calls_per_s} | |",
            f"| p50 / p99 / max latency | {result.p50_ms} / {result.p99_ms} / "
            f"{result.max_ms} ms | |",
            f"| gateway RSS, first → last {w:.0f} s | {first['rss_mb']} → {last['rss_mb']} MB "
            f"({growth['rss_mb']:+} MB) | no growth |",
            f"| gateway open fds, first → last {w:.0f} s | {first['fds']} → {last['fds']} "
            f"({growth['fds']:+}) | no growth |",
            f"| upstream sessions, first → last {w:.0f} s | {first['sessions']} → "
            f"{last['sessions']} ({growth['sessions']:+}) | no growth |",
        ]
    )


def write_docs(path: Path, result: SoakResult) -> None:
    """Replace only the generated section of `path` (hand-written text around it survives)."""
    block = f"{START}\n{render(result)}\n{END}"
    text = path.read_text() if path.exists() else ""
    if START in text and END in text:
        before, rest = text.split(START, 1)
        text = before + block + rest.split(END, 1)[1]
    else:
        text = (text or "# Reliability\n\n") + f"\n## Soak figures\n\n{block}\n"
    path.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=WARMUP)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--docs", type=Path, default=DEFAULT_DOCS)
    parser.add_argument("--no-docs", action="store_true", help="print only; write nothing")
    args = parser.parse_args(argv)
    with running_stack() as stack:
        result = asyncio.run(
            soak(stack, clients=args.clients, seconds=args.seconds, warmup=args.warmup)
        )
    summary = {k: v for k, v in result.as_dict().items() if k != "samples"}
    print(json.dumps(summary, indent=2))
    if not args.no_docs:
        args.json.write_text(json.dumps(result.as_dict(), indent=2) + "\n")
        write_docs(args.docs, result)
        print(f"wrote {args.json} and {args.docs}")
    return 0 if result.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
