"""Virtual-time simulation of the balancing strategies with one slow replica (no network, no sleep).

The Linkerd "Beyond Round Robin" setup in miniature: N replicas, Poisson arrivals, one replica
10× slower. Every strategy sees the same seeded arrivals and the same per-call service draws, and
the real `Balancer`, `Endpoint` and `ServerStats` make every decision, so the numbers show what the
engine does, not a model of it.

Replica model: each replica runs `workers` calls at once and queues the rest (FIFO), so a replica
sent more than it can serve builds a queue, as a real one would. Service times are log-normal.

    python -m bench.simulate_balancing [--json results.json] [--servers 4] [--seed 1]

Scenarios: `healthy` (the baseline), `slow` (one replica 10× slower all along) and `slow_window`
(10× slower only from 20 s to 40 s: shows how fast a strategy notices and forgets).
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import json
import math
import random
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from balancing.engine.balancer import Balancer
from balancing.engine.config import PoolConfig, ServerConfig, Strategy, Transport
from balancing.engine.endpoint import Endpoint
from balancing.engine.outlier import OutlierDetector
from balancing.engine.stats import ServerStats

SLOW_SERVER = 1  # id of the replica that turns slow


@dataclass(frozen=True)
class Params:
    servers: int = 3
    workers: int = 8  # calls one replica serves at once; the rest wait in its queue
    median_service: float = 0.020  # seconds
    sigma: float = 0.5  # log-normal shape: p99 ≈ 3.2 × median
    utilization: float = 0.4  # of the whole pool when all replicas are healthy
    slow_factor: float = 10.0
    duration: float = 60.0  # seconds of arrivals
    warmup: float = 2.0  # calls arriving earlier are not counted
    window: tuple[float, float] = (20.0, 40.0)  # slow_window scenario
    seed: int = 1
    ewma_decay: float = 10.0  # PoolConfig.ewma_decay

    @property
    def rate(self) -> float:
        mean_service = self.median_service * math.exp(self.sigma**2 / 2)
        return self.utilization * self.servers * self.workers / mean_service


@dataclass
class Result:
    scenario: str
    strategy: str
    calls: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    slow_share: float  # share of calls sent to the slow replica
    late: float  # share of calls over the pool's call timeout (30 s): 504s in real life
    ratio_p99: float = 0.0  # p99 ÷ the same strategy's all-healthy p99


@dataclass
class Replica:
    endpoint: Endpoint
    free: int
    queue: deque[int] = field(default_factory=deque)


def workload(params: Params) -> tuple[list[float], list[float]]:
    """Arrival times and per-call base service times, the same for every strategy."""
    rng = random.Random(params.seed)
    arrivals: list[float] = []
    services: list[float] = []
    now = 0.0
    mu = math.log(params.median_service)
    while True:
        now += rng.expovariate(params.rate)
        if now >= params.duration:
            return arrivals, services
        arrivals.append(now)
        services.append(rng.lognormvariate(mu, params.sigma))


def slowdown(params: Params, scenario: str) -> Callable[[int, float], float]:
    """Service-time multiplier of a replica at a time."""
    start, end = params.window

    def factor(server_id: int, now: float) -> float:
        if server_id != SLOW_SERVER or scenario == "healthy":
            return 1.0
        if scenario == "slow" or start <= now < end:
            return params.slow_factor
        return 1.0

    return factor


def simulate(
    params: Params,
    strategy: Strategy,
    scenario: str,
    arrivals: Sequence[float],
    services: Sequence[float],
) -> Result:
    servers = tuple(
        ServerConfig(id=i, name=f"r{i}", transport=Transport.STREAMABLE_HTTP)
        for i in range(1, params.servers + 1)
    )
    pool = PoolConfig(
        id=1, slug="sim", strategy=strategy, servers=servers, ewma_decay=params.ewma_decay
    )
    detector = OutlierDetector.for_pool(pool, random.Random(params.seed))
    balancer = Balancer(pool, random.Random(params.seed))
    endpoints = [Endpoint(s, ServerStats(pool.ewma_decay), detector.state(s.id)) for s in servers]
    replicas = {e.id: Replica(e, params.workers) for e in endpoints}
    factor = slowdown(params, scenario)

    done: list[tuple[float, int, int]] = []  # (finish time, call, server id)
    latencies: list[float] = []
    sent_to_slow = 0
    counted = 0

    def start(replica: Replica, call: int, now: float) -> None:
        replica.free -= 1
        service = services[call] * factor(replica.endpoint.id, now)
        heapq.heappush(done, (now + service, call, replica.endpoint.id))

    def finish(now: float, call: int, server_id: int) -> None:
        replica = replicas[server_id]
        latency = now - arrivals[call]
        replica.endpoint.stats.end(now, latency)
        if arrivals[call] >= params.warmup:
            latencies.append(latency)
        replica.free += 1
        if replica.queue:
            start(replica, replica.queue.popleft(), now)

    for call, arrival in enumerate(arrivals):
        while done and done[0][0] <= arrival:
            finish(*heapq.heappop(done))
        pick = balancer.pick(endpoints, arrival)
        assert pick is not None  # all replicas are up: something can always be picked
        replica = replicas[pick.endpoint.id]
        replica.endpoint.stats.begin()
        if arrival >= params.warmup:
            counted += 1
            sent_to_slow += replica.endpoint.id == SLOW_SERVER
        if replica.free:
            start(replica, call, arrival)
        else:
            replica.queue.append(call)
    while done:  # let every call finish, queued ones included: no survivor bias
        finish(*heapq.heappop(done))

    latencies.sort()
    late = len(latencies) - bisect.bisect_right(latencies, pool.call_timeout)
    return Result(
        scenario=scenario,
        strategy=str(strategy),
        calls=len(latencies),
        p50_ms=1000 * percentile(latencies, 50),
        p99_ms=1000 * percentile(latencies, 99),
        p999_ms=1000 * percentile(latencies, 99.9),
        slow_share=sent_to_slow / counted,
        late=late / len(latencies),
    )


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of a sorted sequence."""
    rank = max(math.ceil(p / 100 * len(ordered)), 1)
    return ordered[rank - 1]


def run(params: Params) -> list[Result]:
    arrivals, services = workload(params)
    results = [
        simulate(params, strategy, scenario, arrivals, services)
        for scenario in ("healthy", "slow", "slow_window")
        for strategy in Strategy
    ]
    baseline = {r.strategy: r.p99_ms for r in results if r.scenario == "healthy"}
    for result in results:
        result.ratio_p99 = result.p99_ms / baseline[result.strategy]
    return results


def markdown(params: Params, results: Sequence[Result]) -> str:
    lines = [
        f"{params.servers} replicas × {params.workers} workers, {params.rate:.0f} calls/s "
        f"({params.utilization:.0%} of the healthy pool) for {params.duration:.0f} s, service "
        f"log-normal median {params.median_service * 1000:.0f} ms; replica r{SLOW_SERVER} "
        f"{params.slow_factor:g}× slower (`slow`: all along, `slow_window`: "
        f"{params.window[0]:g}–{params.window[1]:g} s). Seed {params.seed}.",
        "",
        "| scenario | strategy | calls | p50 ms | p99 ms | p99.9 ms | p99 ÷ healthy | to slow "
        "| over 30 s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.scenario} | {r.strategy} | {r.calls} | {r.p50_ms:.1f} | {r.p99_ms:.1f} "
            f"| {r.p999_ms:.1f} | {r.ratio_p99:.2f} | {r.slow_share:.1%} | {r.late:.1%} |"
        )
    return "\n".join(lines)


def verdict(results: Sequence[Result]) -> tuple[bool, str]:
    """The claim: with one slow replica, health_based p99 stays within 1.5× of the all-healthy
    p99 while round robin degrades."""
    by_key = {(r.scenario, r.strategy): r for r in results}
    health = by_key[("slow", Strategy.HEALTH_BASED.value)]
    healthy_p99 = by_key[("healthy", Strategy.HEALTH_BASED.value)].p99_ms
    rr = by_key[("slow", Strategy.ROUND_ROBIN.value)]
    ok = health.ratio_p99 <= 1.5 and rr.ratio_p99 > 1.5
    text = (
        f"health_based p99 with a slow replica: {health.p99_ms:.1f} ms = "
        f"{health.ratio_p99:.2f}× its all-healthy p99 ({healthy_p99:.1f} ms), goal ≤ 1.5×; "
        f"round_robin: {rr.ratio_p99:.1f}×. {'OK' if ok else 'MISSED'}"
    )
    return ok, text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON here")
    parser.add_argument("--servers", type=int, default=Params.servers)
    parser.add_argument("--seed", type=int, default=Params.seed)
    parser.add_argument("--duration", type=float, default=Params.duration)
    parser.add_argument("--utilization", type=float, default=Params.utilization)
    parser.add_argument("--decay", type=float, default=Params.ewma_decay, help="EWMA decay, s")
    args = parser.parse_args(argv)
    params = Params(
        servers=args.servers,
        seed=args.seed,
        duration=args.duration,
        utilization=args.utilization,
        ewma_decay=args.decay,
    )
    results = run(params)
    ok, text = verdict(results)
    print(markdown(params, results))
    print()
    print(text)
    if args.json:
        payload = {
            "params": {**asdict(params), "rate": params.rate},
            "results": [asdict(r) for r in results],
            "goal_met": ok,
            "verdict": text,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
