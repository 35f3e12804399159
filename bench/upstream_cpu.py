"""CPU cost per call of `UpstreamSession.request` next to the SDK's client, on the same server.

    .venv/bin/python -m bench.upstream_cpu [--calls 3000] [--concurrency 16]

Measures this process's CPU time (``time.process_time``: user + system, children excluded) per
``tools/call echo`` with ``--concurrency`` calls in flight on one session, against our faulty
server over Streamable HTTP (JSON answers) and over stdio. Evidence for design choices, not a test:
the numbers move with the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

import aiohttp
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from balancing.engine.config import Era, ServerConfig
from balancing.engine.upstream import UpstreamSession
from tests.upstreams import procs

CLIENT_INFO = {"name": "mcppool-bench", "version": "0"}

Call = Callable[[int], Awaitable[object]]


async def measure(call: Call, calls: int, concurrency: int) -> tuple[float, float]:
    """(CPU ms per call, wall-clock calls per second) for `calls` calls, `concurrency` at once."""
    for i in range(50):  # warm up: connections, caches, first-call paths
        await call(i)
    gc.collect()
    queue = iter(range(calls))

    async def worker() -> None:
        for i in queue:
            await call(i)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / calls * 1000, calls / wall


async def ours(
    config: ServerConfig, http: aiohttp.ClientSession | None, args: argparse.Namespace
) -> tuple[str, float, float]:
    session = await UpstreamSession.open(
        config, http=http, client_info=CLIENT_INFO, capabilities={}, timeout=30
    )
    try:

        async def call(i: int) -> object:
            params = {"name": "echo", "arguments": {"text": f"payload {i}"}}
            return await session.request("tools/call", params, timeout=30)

        cpu, rate = await measure(call, args.calls, args.concurrency)
        return session.era.value, cpu, rate
    finally:
        await session.close()


async def sdk(
    server: str | StdioServerParameters, mode: str, args: argparse.Namespace
) -> tuple[str, float, float]:
    async with Client(server, mode=mode) as client:

        async def call(i: int) -> object:
            return await client.call_tool("echo", {"text": f"payload {i}"})

        cpu, rate = await measure(call, args.calls, args.concurrency)
        return str(client.protocol_version), cpu, rate


def report(label: str, era: str, cpu: float, rate: float) -> None:
    print(f"{label:<34} {era:<11} {cpu:8.3f} ms CPU/call {rate:9.0f} calls/s")


async def main(args: argparse.Namespace) -> None:
    print(f"{args.calls} echo calls, {args.concurrency} in flight, one session each\n")
    server = procs.start_faulty_http(name="bench", json_response=True)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as http:
            for era in (Era.MODERN, Era.HANDSHAKE):
                report(
                    "UpstreamSession HTTP(JSON)", *await ours(server.config(era=era), http, args)
                )
        for mode in ("auto", "legacy"):
            report(f"SDK Client HTTP(JSON) mode={mode}", *await sdk(server.url, mode, args))
    finally:
        server.stop()
    stdio = procs.faulty_stdio_config(name="bench-stdio")
    for era in (Era.MODERN, Era.HANDSHAKE):
        report("UpstreamSession stdio", *await ours(replace(stdio, era=era), None, args))
    params = StdioServerParameters(command=stdio.command, args=list(stdio.args), cwd=stdio.cwd)
    for mode in ("auto", "legacy"):
        report(f"SDK Client stdio mode={mode}", *await sdk(params, mode, args))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    asyncio.run(main(parser.parse_args()))
