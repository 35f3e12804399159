"""The runtime in-process: direct over one kept session vs through the `Runtime` vs a fresh
session per call, and the memory of idle upstream sessions (issue 3's numbers).

Everything runs in this one process, so its CPU time per call (`time.process_time`) is the
client's: the same driver makes the calls in every leg, so "through the runtime" minus "direct on
one `UpstreamSession`" is the runtime's own share (balancer pick, borrow, stats, metrics).

    .venv/bin/python -m bench.runtime_bench [--duration 2] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from balancing.engine.config import Era, PoolConfig, ServerConfig, Snapshot
from balancing.engine.runtime import CLIENT_INFO, Runtime
from balancing.engine.upstream import UpstreamSession
from bench import loadgen, procfs
from bench.stats import median
from tests.upstreams import procs

ARGUMENTS = {"text": "hello"}
CONCURRENCY = (1, 16, 64)


@dataclass
class FunctionTarget:
    """A load-generator target that awaits `call()` in this process."""

    name: str
    call_fn: Callable[[], Awaitable[object]]

    async def worker(self, index: int) -> FunctionTarget:
        return self

    async def call(self) -> bool:
        result = await self.call_fn()
        return not (isinstance(result, dict) and result.get("isError") is True)

    async def close(self) -> None:
        return None


class Legs:
    """The three ways to make a call against one upstream server."""

    def __init__(self, server: ServerConfig, http: aiohttp.ClientSession | None) -> None:
        self.server = server
        self.http = http
        self.session: UpstreamSession | None = None
        self.runtime = Runtime()

    async def __aenter__(self) -> Legs:
        self.session = await self.open()
        pool = PoolConfig(id=1, slug="bench", servers=(self.server,))
        await self.runtime.start(Snapshot(version=1, pools=(pool,)))
        await self.runtime.list_tools("bench")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()
        await self.runtime.close(grace=1)

    async def open(self) -> UpstreamSession:
        return await UpstreamSession.open(
            self.server, http=self.http, client_info=CLIENT_INFO, capabilities={}, timeout=30
        )

    async def direct(self) -> object:
        assert self.session is not None
        params = {"name": "echo", "arguments": ARGUMENTS}
        return await self.session.request("tools/call", params, timeout=30)

    async def through_runtime(self) -> object:
        return await self.runtime.call_tool("bench", "echo", ARGUMENTS)

    async def fresh(self) -> object:
        session = await self.open()
        try:
            params = {"name": "echo", "arguments": ARGUMENTS}
            return await session.request("tools/call", params, timeout=30)
        finally:
            await session.close()


async def throughput(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    upstream = procs.start_faulty_http(name="runtime-bench", json_response=True)
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), skip_auto_headers=("User-Agent",)
        ) as http:
            cases = [
                ("http-json", upstream.config(era=Era.HANDSHAKE), http, upstream.pid),
                ("stdio", procs.faulty_stdio_config(name="runtime-bench-stdio"), None, None),
            ]
            for transport, server, client, upstream_pid in cases:
                async with Legs(server, client) as legs:
                    # Over stdio each session has its own server process: no one upstream pid.
                    pid = upstream_pid
                    legs_by_name: dict[str, Callable[[], Awaitable[object]]] = {
                        "direct": legs.direct,
                        "runtime": legs.through_runtime,
                    }
                    if transport != "stdio":  # a stdio session per call spawns a process (~1 s)
                        legs_by_name["fresh"] = legs.fresh
                    for round_ in range(args.rounds):
                        for concurrency in CONCURRENCY:
                            for name, fn in legs_by_name.items():
                                result = await loadgen.run(
                                    FunctionTarget(name, fn),
                                    concurrency=concurrency,
                                    duration=args.duration,
                                    watch={"upstream": pid} if pid else {},
                                )
                                row = {"transport": transport, "leg": name, "round": round_}
                                rows.append({**row, **result.as_dict()})
    finally:
        upstream.stop()
    return rows


async def idle_memory(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Memory held by N idle upstream sessions open to one HTTP server.

    Python heap bytes traced by `tracemalloc` (exact, and not hidden by memory the allocator
    already holds from earlier legs), next to the process's RSS growth.
    """
    rows: list[dict[str, Any]] = []
    upstream = procs.start_faulty_http(name="runtime-idle", json_response=True)
    pid = os.getpid()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            for era in (Era.HANDSHAKE, Era.MODERN):
                server = upstream.config(era=era)
                sessions: list[UpstreamSession] = []
                gc.collect()
                tracemalloc.start()
                base_heap = tracemalloc.get_traced_memory()[0]
                base_rss = procfs.rss_bytes(pid)
                for target in args.sessions:
                    while len(sessions) < target:
                        batch = min(50, target - len(sessions))
                        sessions += await asyncio.gather(
                            *(
                                UpstreamSession.open(
                                    server,
                                    http=http,
                                    client_info=CLIENT_INFO,
                                    capabilities={},
                                    timeout=30,
                                )
                                for _ in range(batch)
                            )
                        )
                    await asyncio.sleep(0.2)
                    gc.collect()
                    heap = tracemalloc.get_traced_memory()[0] - base_heap
                    rss = procfs.rss_bytes(pid) - base_rss
                    rows.append(
                        {
                            "era": era.value,
                            "sessions": target,
                            "heap_mb": heap / 2**20,
                            "rss_growth_mb": rss / 2**20,
                            "kb_per_session": heap / 1024 / target,
                        }
                    )
                tracemalloc.stop()
                await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
    finally:
        upstream.stop()
    return rows


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians over rounds, per (transport, leg, concurrency)."""
    keys = sorted({(r["transport"], r["leg"], r["concurrency"]) for r in rows})
    out = []
    for transport, leg, concurrency in keys:
        runs = [
            r for r in rows
            if (r["transport"], r["leg"], r["concurrency"]) == (transport, leg, concurrency)
        ]  # fmt: skip
        out.append(
            {
                "transport": transport,
                "leg": leg,
                "concurrency": concurrency,
                "calls_per_s": median(r["calls_per_s"] for r in runs),
                "p50_ms": median(r["p50_ms"] for r in runs),
                "p99_ms": median(r["p99_ms"] for r in runs),
                "cpu_ms_per_call": median(r["client_cpu_ms_per_call"] for r in runs),
                "upstream_cpu_ms_per_call": median(
                    r["cpu_ms_per_call"].get("upstream", float("nan")) for r in runs
                ),
                "errors": sum(r["errors"] for r in runs),
            }
        )
    return out


def runtime_share(summary: Sequence[dict[str, Any]], transport: str) -> float:
    """Median over concurrencies of (runtime − direct) CPU per call."""
    by = {(s["leg"], s["concurrency"]): s for s in summary if s["transport"] == transport}
    return median(
        by[("runtime", c)]["cpu_ms_per_call"] - by[("direct", c)]["cpu_ms_per_call"]
        for c in CONCURRENCY
        if ("runtime", c) in by and ("direct", c) in by
    )


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    rows = await throughput(args)
    summary = summarize(rows)
    memory = await idle_memory(args)
    return {
        "summary": summary,
        "runs": rows,
        "idle_sessions": memory,
        "runtime_cpu_share_ms": {t: runtime_share(summary, t) for t in ("http-json", "stdio")},
        "seconds": time.monotonic() - started,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sessions", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=loadgen.new_event_loop) as runner:
        result = runner.run(main_async(args))
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    for row in result["summary"]:
        print(
            f"{row['transport']:<10} {row['leg']:<8} c={row['concurrency']:<3} "
            f"{row['calls_per_s']:8.0f}/s p50 {row['p50_ms']:6.2f} p99 {row['p99_ms']:7.2f} "
            f"cpu {row['cpu_ms_per_call']:.3f} ms"
        )
    print("runtime share (ms CPU/call):", result["runtime_cpu_share_ms"])
    for row in result["idle_sessions"]:
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
