"""Live balancing: the runtime against three real upstream processes, one slowed 10× or killed.

The virtual-time twin is `bench/simulate_balancing.py`; this one runs the real `Runtime` (session
pools, balancer, outlier detection, retries) over loopback HTTP against three processes of our
test server, each answering `echo` after `--delay-ms` (5 ms; the slow replica 50 ms).

Open-loop load: calls arrive at a fixed Poisson rate whatever the latency (a closed loop would
slow down with the slow replica and hide the tail). Every strategy meets the same arrival times,
in alternating order, over several rounds; medians are reported.

* `healthy`: three 5 ms replicas — the baseline p99.
* `slow`: one replica 10× slower (50 ms) the whole time.
* `killed`: one replica is SIGKILLed a third of the way in: calls failed, calls retried, time to
  eject it, and the failover time (from the kill to the last call that failed or took over 3× the
  healthy p99).

    .venv/bin/python -m bench.live_balancing [--rate 150] [--duration 3] [--rounds 3] [--json f]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from balancing.engine.config import Era, PoolConfig, ServerConfig, Snapshot, Strategy
from balancing.engine.runtime import Runtime
from bench import loadgen
from bench.stats import Latency, median, ratio
from tests.upstreams import procs

HEALTHY_DELAY_MS = 5.0
SLOW_FACTOR = 10.0
SCENARIOS = ("healthy", "slow")


@dataclass
class Params:
    rate: float = 200.0  # calls per second, open loop
    duration: float = 4.0  # measured seconds per run
    warmup: float = 1.0  # seconds of the same load before measuring (the balancer learns)
    rounds: int = 3
    seed: int = 1


@dataclass
class Run:
    scenario: str
    strategy: str
    round: int
    calls: int
    failed: int
    p50_ms: float
    p99_ms: float
    slow_share: float  # share of calls answered by the slow (or killed) replica
    retries: int = 0
    retries_refused: int = 0
    ejections: int = 0
    time_to_eject_s: float = math.nan
    failover_s: float = math.nan
    errors: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    """One call's arrival time and latency (NaN when it failed)."""

    at: float
    latency: float
    error: str = ""


@dataclass
class Load:
    arrivals: list[float]  # seconds from the start, the same for every strategy
    outcomes: list[Outcome] = field(default_factory=list)


def arrivals(params: Params, seconds: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    times: list[float] = []
    t = 0.0
    while True:
        t += rng.expovariate(params.rate)
        if t >= seconds:
            return times
        times.append(t)


def server(upstream: procs.UpstreamProcess, server_id: int) -> ServerConfig:
    return upstream.config(era=Era.HANDSHAKE, server_id=server_id)


def pool(slug: str, strategy: Strategy, servers: Sequence[ServerConfig]) -> PoolConfig:
    # Short ejections and a low failure count, so the killed run shows the whole cycle in seconds.
    return PoolConfig(id=hash(slug) & 0xFFFF, slug=slug, strategy=strategy, servers=tuple(servers))


async def drive(runtime: Runtime, slug: str, times: Sequence[float]) -> list[Outcome]:
    """Fire one call at each arrival time; collect every call's outcome."""
    # perf_counter, not loop.time(): uvloop's clock ticks in whole milliseconds.
    clock = time.perf_counter
    start = clock()
    outcomes: list[Outcome] = []

    async def one(at: float) -> None:
        began = clock()
        try:
            await runtime.call_tool(slug, "echo", {"text": "hello"})
        except Exception as exc:
            outcomes.append(Outcome(at, math.nan, f"{type(exc).__name__}: {exc}"))
            return
        outcomes.append(Outcome(at, clock() - began))

    tasks = []
    for at in times:
        delay = start + at - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(at)))
    await asyncio.gather(*tasks)
    return outcomes


def calls_by_server(runtime: Runtime, slug: str) -> dict[str, int]:
    """Calls each server of the pool has answered so far (the runtime's own counters)."""
    counts: dict[str, int] = {}
    for (pool_slug, name, _outcome), n in runtime.metrics.calls.items():
        if pool_slug == slug and name:
            counts[name] = counts.get(name, 0) + n
    return counts


def summarize(
    scenario: str,
    strategy: Strategy,
    round_: int,
    outcomes: Sequence[Outcome],
    served: tuple[dict[str, int], dict[str, int]],
    slow: str,
) -> Run:
    """One run's numbers; `served` = calls per server before and after the measured window."""
    ok = [o.latency for o in outcomes if not math.isnan(o.latency)]
    latency = Latency.of(ok)
    before, after = served
    total = sum(after.values()) - sum(before.values())
    to_slow = after.get(slow, 0) - before.get(slow, 0)
    return Run(
        scenario=scenario,
        strategy=strategy.value,
        round=round_,
        calls=len(outcomes),
        failed=len(outcomes) - len(ok),
        p50_ms=latency.p50_ms,
        p99_ms=latency.p99_ms,
        slow_share=to_slow / total if total else math.nan,
        errors=sorted({o.error for o in outcomes if o.error}),
    )


async def steady(params: Params, log: list[Run]) -> None:
    """`healthy` and `slow` for every strategy, alternating, `rounds` times."""
    delay = HEALTHY_DELAY_MS
    ups = [
        procs.start_faulty_http(name=f"r{i}", json_response=True, delay_ms=delay) for i in (1, 2, 3)
    ]
    slow = procs.start_faulty_http(name="r3-slow", json_response=True, delay_ms=delay * SLOW_FACTOR)
    runtime = Runtime()
    try:
        healthy_servers = [server(u, i + 1) for i, u in enumerate(ups)]
        slow_servers = [*healthy_servers[:2], server(slow, 4)]
        pools = []
        for strategy in Strategy:
            pools.append(pool(f"healthy-{strategy.value}", strategy, healthy_servers))
            pools.append(pool(f"slow-{strategy.value}", strategy, slow_servers))
        await runtime.start(Snapshot(version=1, pools=tuple(pools)))
        for p in pools:
            await runtime.list_tools(p.slug)
        for round_ in range(params.rounds):
            times = arrivals(params, params.warmup + params.duration, params.seed + round_)
            for scenario in SCENARIOS:
                for strategy in _alternate(round_):
                    slug = f"{scenario}-{strategy.value}"
                    warm = [t for t in times if t < params.warmup]
                    await drive(runtime, slug, warm)
                    before = calls_by_server(runtime, slug)
                    measured = await drive(
                        runtime, slug, [t - params.warmup for t in times[len(warm) :]]
                    )
                    served = (before, calls_by_server(runtime, slug))
                    log.append(summarize(scenario, strategy, round_, measured, served, "r3-slow"))
                    # The next pool's sessions were idle meanwhile: a short gap keeps them even.
                    await asyncio.sleep(0.2)
    finally:
        await runtime.close(grace=1)
        for u in [*ups, slow]:
            u.stop()


async def killed(params: Params, log: list[Run]) -> None:
    """One run per strategy: replica k3 is SIGKILLed a third of the way in."""
    delay = HEALTHY_DELAY_MS
    ups = [
        procs.start_faulty_http(name=f"k{i}", json_response=True, delay_ms=delay) for i in (1, 2)
    ]
    try:
        for strategy in _alternate(0):
            victim = procs.start_faulty_http(name="k3", json_response=True, delay_ms=delay)
            try:
                servers = [server(ups[0], 1), server(ups[1], 2), server(victim, 3)]
                log.append(await killed_run(params, strategy, servers, victim))
            finally:
                victim.stop()
    finally:
        for u in ups:
            u.stop()


async def killed_run(
    params: Params,
    strategy: Strategy,
    servers: Sequence[ServerConfig],
    victim: procs.UpstreamProcess,
) -> Run:
    runtime = Runtime()
    slug = f"killed-{strategy.value}"
    try:
        await runtime.start(Snapshot(version=1, pools=(pool(slug, strategy, servers),)))
        await runtime.list_tools(slug)
        seconds = params.warmup + params.duration
        times = arrivals(params, seconds, params.seed)
        kill_at = params.warmup + params.duration / 3
        ejected_at = math.nan
        clock = time.perf_counter
        start = clock()

        async def killer() -> None:
            await asyncio.sleep(kill_at)
            victim.stop()

        async def watch() -> None:
            nonlocal ejected_at
            endpoint = runtime.pool(slug).endpoints[servers[-1].id]
            while clock() - start < seconds:
                if endpoint.outlier.ejected(runtime.clock()):
                    ejected_at = clock() - start
                    return
                await asyncio.sleep(0.01)

        outcomes, *_ = await asyncio.gather(drive(runtime, slug, times), killer(), watch())
        measured = [o for o in outcomes if o.at >= params.warmup]
        served: tuple[dict[str, int], dict[str, int]] = ({}, calls_by_server(runtime, slug))
        run = summarize("killed", strategy, 0, measured, served, servers[-1].name)
        before = [o.latency for o in measured if o.at < kill_at and not math.isnan(o.latency)]
        threshold = 3 * Latency.of(before).p99_ms / 1000
        disturbed = [
            o.at
            for o in measured
            if o.at >= kill_at and (math.isnan(o.latency) or o.latency > threshold)
        ]
        run.failover_s = (max(disturbed) - kill_at) if disturbed else 0.0
        run.time_to_eject_s = ejected_at - kill_at
        run.retries = sum(runtime.metrics.retries.values())
        run.retries_refused = sum(runtime.metrics.retries_refused.values())
        run.ejections = sum(runtime.metrics.ejections.values())
        return run
    finally:
        await runtime.close(grace=1)


def _alternate(round_: int) -> list[Strategy]:
    """Strategies in a rotated order each round, so none always runs first."""
    order = list(Strategy)
    shift = round_ % len(order)
    return order[shift:] + order[:shift]


def report(runs: Sequence[Run]) -> dict[str, Any]:
    rows = []
    healthy = {
        s.value: median(r.p99_ms for r in runs if r.scenario == "healthy" and r.strategy == s.value)
        for s in Strategy
    }
    for scenario in (*SCENARIOS, "killed"):
        for strategy in Strategy:
            mine = [r for r in runs if r.scenario == scenario and r.strategy == strategy.value]
            if not mine:
                continue
            p99 = median(r.p99_ms for r in mine)
            rows.append(
                {
                    "scenario": scenario,
                    "strategy": strategy.value,
                    "calls": sum(r.calls for r in mine),
                    "failed": sum(r.failed for r in mine),
                    "p50_ms": median(r.p50_ms for r in mine),
                    "p99_ms": p99,
                    "p99_vs_healthy": ratio(p99, healthy[strategy.value]),
                    "slow_share": median(r.slow_share for r in mine),
                    "retries": sum(r.retries for r in mine),
                    "retries_refused": sum(r.retries_refused for r in mine),
                    "errors": sorted({e for r in mine for e in r.errors}),
                    "time_to_eject_s": median(r.time_to_eject_s for r in mine),
                    "failover_s": median(r.failover_s for r in mine),
                }
            )
    by = {(r["scenario"], r["strategy"]): r for r in rows}
    slow = by.get(("slow", Strategy.HEALTH_BASED.value))
    goal = slow["p99_vs_healthy"] if slow else math.nan
    assert isinstance(goal, float)
    return {"rows": rows, "slow_replica_p99_ratio": goal, "goal_met": goal <= 1.5}


async def main_async(params: Params) -> dict[str, Any]:
    started = time.monotonic()
    runs: list[Run] = []
    await steady(params, runs)
    await killed(params, runs)
    return {
        "params": {
            **asdict(params),
            "healthy_delay_ms": HEALTHY_DELAY_MS,
            "slow_factor": SLOW_FACTOR,
        },
        **report(runs),
        "runs": [asdict(r) for r in runs],
        "seconds": time.monotonic() - started,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=Params.rate)
    parser.add_argument("--duration", type=float, default=Params.duration)
    parser.add_argument("--warmup", type=float, default=Params.warmup)
    parser.add_argument("--rounds", type=int, default=Params.rounds)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    params = Params(rate=args.rate, duration=args.duration, warmup=args.warmup, rounds=args.rounds)
    with asyncio.Runner(loop_factory=loadgen.new_event_loop) as runner:
        result = runner.run(main_async(params))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    for row in result["rows"]:
        print(
            f"{row['scenario']:<8} {row['strategy']:<18} calls {row['calls']:5d} "
            f"failed {row['failed']:3d} p50 {row['p50_ms']:6.2f} p99 {row['p99_ms']:7.2f} "
            f"×{row['p99_vs_healthy']:.2f} slow {row['slow_share']:.1%} "
            f"retries {row['retries']} eject {row['time_to_eject_s']:.2f}s "
            f"failover {row['failover_s']:.2f}s"
        )
    print("slow_replica_p99_ratio (health_based):", result["slow_replica_p99_ratio"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
