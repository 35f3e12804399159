"""Resident memory of an MCP gateway or proxy process with 0, 100 and 1000 idle client sessions.

A fresh process per subject (memory after a load test says more about the allocator than about
sessions): one warm-up call, then its RSS as the empty baseline; then handshake-era sessions are
opened at its MCP endpoint (`initialize` + `notifications/initialized`) and left idle — no calls,
no DELETE — and RSS is read again at each step.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Sequence
from typing import Any

from bench import procfs
from bench.loadgen import ACCEPT, Connection, Endpoint, McpTarget, initialize

CONNECTIONS = 16  # sessions are opened over this many keep-alive connections at once
STEPS = (100, 1000)


async def open_sessions(url: str, count: int, headers: Sequence[tuple[str, str]]) -> list[str]:
    endpoint = Endpoint.of(url)
    base = [("Content-Type", "application/json"), ("Accept", ACCEPT), *headers]
    connections = [
        await Connection.open(endpoint.host, endpoint.port) for _ in range(min(CONNECTIONS, count))
    ]
    ids: list[str] = []
    remaining = iter(range(count))

    async def opener(connection: Connection) -> None:
        for _ in remaining:
            ids.append(await initialize(connection, endpoint, base))

    try:
        await asyncio.gather(*(opener(c) for c in connections))
    finally:
        for connection in connections:
            connection.close()
    return ids


async def measure(
    name: str,
    pid: int,
    url: str,
    headers: Sequence[tuple[str, str]] = (),
    steps: Sequence[int] = STEPS,
) -> dict[str, Any]:
    """RSS of `pid` empty and with each number of idle sessions in `steps` (cumulative)."""
    warm = McpTarget(url, headers=tuple(headers))
    worker = await warm.worker(0)
    await worker.call()
    await worker.close()
    gc.collect()
    await asyncio.sleep(0.5)
    empty = procfs.rss_bytes(pid)
    row: dict[str, Any] = {"subject": name, "empty_mb": empty / 2**20}
    opened = 0
    for step in steps:
        await open_sessions(url, step - opened, headers)
        opened = step
        await asyncio.sleep(0.5)
        rss = procfs.rss_bytes(pid)
        row[f"rss_{step}_mb"] = rss / 2**20
        row[f"above_empty_{step}_mb"] = (rss - empty) / 2**20
    row["kb_per_session"] = row[f"above_empty_{steps[-1]}_mb"] * 1024 / steps[-1]
    return row
