"""What metrics cost a tool call: the runtime's plain counters against prometheus_client's.

    .venv/bin/python -m bench.metrics_cost [--calls 200000] [--pools 10] [--servers 5]

Per call the runtime does one counter increment and two histogram observations
(`mcppool_calls_total`, `mcppool_call_duration_seconds`, `mcppool_acquire_wait_seconds`). This
times exactly those updates, as `Runtime._send` does them, next to the same three updates through
prometheus_client (`.labels(...).inc()/.observe()`, and with label children bound in advance), and
the cost of one scrape of the custom collector for `--pools` × `--servers` servers. Evidence for
the design (metrics converted at scrape time), not a test: the numbers move with the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from balancing.engine.config import PoolConfig, ServerConfig, Snapshot, Transport
from balancing.engine.metrics import BUCKETS, RuntimeMetrics
from balancing.engine.runtime import Runtime
from monitoring.metrics import RuntimeCollector

# The gateway's own CPU per forwarded call on the lean path (design.md's cost table): the yardstick.
CALL_CPU_NS = 230_000


def _runtime_updates(calls: int) -> Callable[[], None]:
    metrics = RuntimeMetrics()
    latencies = [random.uniform(0.001, 0.2) for _ in range(1024)]

    def run() -> None:
        m, lat = metrics, latencies
        for i in range(calls):
            slug, server = "pool", "server-1"
            m.acquire_wait[slug].observe(0.0001)
            m.calls[(slug, server, "ok")] += 1
            m.durations[(slug, server)].observe(lat[i & 1023])

    return run


def _client_updates(calls: int, *, bound: bool) -> Callable[[], None]:
    registry = CollectorRegistry()
    total = Counter("c", "calls", ["pool", "server", "outcome"], registry=registry)
    duration = Histogram("d", "duration", ["pool", "server"], buckets=BUCKETS, registry=registry)
    wait = Histogram("w", "wait", ["pool"], buckets=BUCKETS, registry=registry)
    latencies = [random.uniform(0.001, 0.2) for _ in range(1024)]
    if bound:
        c, d, w = (
            total.labels("pool", "server-1", "ok"),
            duration.labels("pool", "server-1"),
            wait.labels("pool"),
        )

        def run_bound() -> None:
            for i in range(calls):
                w.observe(0.0001)
                c.inc()
                d.observe(latencies[i & 1023])

        return run_bound

    def run() -> None:
        for i in range(calls):
            wait.labels("pool").observe(0.0001)
            total.labels("pool", "server-1", "ok").inc()
            duration.labels("pool", "server-1").observe(latencies[i & 1023])

    return run


def _best_ns_per_call(fn: Callable[[], None], calls: int, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter_ns()
        fn()
        best = min(best, (time.perf_counter_ns() - started) / calls)
    return best


def _scrape_ms(pools: int, servers: int) -> tuple[float, int]:
    """One scrape of a runtime with every series filled (sessions not opened: no event loop)."""
    runtime = Runtime()
    configs = tuple(
        PoolConfig(
            id=p,
            slug=f"pool-{p}",
            servers=tuple(
                ServerConfig(
                    id=p * 100 + s,
                    name=f"s{s}",
                    transport=Transport.STREAMABLE_HTTP,
                    url="http://x",
                )
                for s in range(servers)
            ),
        )
        for p in range(pools)
    )
    runtime.version = 1
    for config in configs:
        for server in config.servers:
            for outcome in ("ok", "tool_error", "timeout"):
                runtime.metrics.calls[(config.slug, server.name, outcome)] += 1
            runtime.metrics.durations[(config.slug, server.name)].observe(0.01)
        runtime.metrics.acquire_wait[config.slug].observe(0.0001)
    registry = CollectorRegistry()
    registry.register(RuntimeCollector(lambda: runtime))
    snapshot = Snapshot(1, configs)

    # `apply` builds the endpoints and session pools; nothing opens until upkeep runs.
    async def load() -> None:
        await runtime.apply(snapshot, initial=True)

    asyncio.run(load())
    best, size = float("inf"), 0
    for _ in range(20):
        started = time.perf_counter()
        size = len(generate_latest(registry))
        best = min(best, time.perf_counter() - started)
    return best * 1000, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--pools", type=int, default=10)
    parser.add_argument("--servers", type=int, default=5)
    args = parser.parse_args()
    n = args.calls
    rows = [
        ("runtime: plain dict counters + bucket arrays", _runtime_updates(n)),
        ("prometheus_client: .labels(...).inc()/.observe()", _client_updates(n, bound=False)),
        ("prometheus_client: children bound in advance", _client_updates(n, bound=True)),
    ]
    print(f"metric updates per call (3 updates, best of 5 × {n} calls):")
    for label, fn in rows:
        ns = _best_ns_per_call(fn, n)
        share = ns / CALL_CPU_NS * 100
        print(f"  {label:52s} {ns / 1000:6.2f} µs  ({share:4.1f} % of a 0.23 ms call)")
    ms, size = _scrape_ms(args.pools, args.servers)
    size_kib = size / 1024
    print(
        f"one scrape, {args.pools} pools × {args.servers} servers: {ms:.2f} ms, {size_kib:.0f} KiB"
    )


if __name__ == "__main__":
    main()
