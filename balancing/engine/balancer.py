"""Pick the server for one call: priorities, panic, slow start, pin/hash affinity and strategies.

The order of decisions, following Envoy (`priority.rst`, `panic_threshold.rst`):

1. `pin`: the named server if it may take the call; otherwise fall through to a normal pick.
2. Survey the enabled servers that may have the tool, per priority level: how many are healthy
   (not down, not ejected) and which are candidates (healthy, not excluded, under their in-flight
   cap, weight > 0, and when half-open only for their single trial call).
3. Level loads: `health(P) = min(100, overprovisioning × healthy % of P)`; level 0 takes
   `health(0)` %, the rest spills to level 1, 2, … in order; loads are normalized when the total
   health is under 100. A hashed call chooses its level from its key (the same in every process),
   others with the rng.
4. Panic: only when the normalized total health is under 100 (no level can absorb the rest) and the
   chosen level's healthy share is under `panic_threshold`, the call goes to *any* enabled server of
   that level, healthy or not, rather than crushing the few healthy ones. With no healthy server at
   all, level 0 (the most preferred) panics, as Envoy does; a `panic_threshold` of 0 turns panic off
   and then no server is picked.
5. Within the level: rendezvous hash when a hash key is given (bounded by in-flight calls with
   `hash_balance_factor`: processes agree on every key as long as no server is over its bound),
   else the pool's strategy. If nothing in the chosen level may take this call (all excluded,
   capped, or trial taken), the first level with a candidate serves it instead of a 503.

Draining and disabled servers are never picked, panic or not; excluded servers (already tried by
this call) and servers at their in-flight cap neither.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from operator import attrgetter
from typing import NamedTuple

from balancing.engine.affinity import key_position, rendezvous_choose, stable_hash
from balancing.engine.config import AdminState, Health, PoolConfig, Strategy
from balancing.engine.endpoint import Endpoint
from balancing.engine.stats import DEFAULT_LATENCY

# health_based: a server failing share e of its calls scores (1 + 10 e) × worse. Failures are often
# fast, so without a strong penalty a broken server would look like the fastest one; at 10 % errors
# it already loses most comparisons, while consecutive-failure ejection handles the hard failures.
ERROR_PENALTY = 10.0

_PRIORITY = attrgetter("priority")
_ENABLED = AdminState.ENABLED
_DOWN = Health.DOWN


class PickReason(StrEnum):
    PIN = "pin"
    HASH = "hash"
    BALANCE = "balance"


class Pick(NamedTuple):
    """The decision for one call (a NamedTuple: built on every call, and 2× cheaper than a frozen
    dataclass)."""

    endpoint: Endpoint
    level: int
    panic: bool
    reason: PickReason
    # The half-open server's single trial: its outcome must reach `endpoint.outlier.record()`,
    # or no other call goes there until the trial times out.
    trial: bool = False


@dataclass(frozen=True, slots=True)
class PanicState:
    """Is the pool in panic (too few healthy servers, calls spread over all), and why.

    What the REST pool status, the dashboard banner, `mcppool_pool_panic` and the log line show;
    the same arithmetic the balancer's picks follow (steps 3–4 above), without a call."""

    panic: bool
    healthy: int  # enabled servers not down and not ejected
    enabled: int
    threshold: float
    reason: str = ""  # empty when not in panic


def panic_state(pool: PoolConfig, servers: Iterable[tuple[int, bool]]) -> PanicState:
    """Panic of a pool from `(priority, healthy)` of each enabled server.

    In panic when the levels together cannot take all traffic (normalized health under 100) and
    some level with servers is under `panic_threshold` healthy — or when nothing is healthy.
    """
    levels: dict[int, list[int]] = {}
    for priority, is_healthy in servers:
        counts = levels.setdefault(priority, [0, 0])
        counts[0] += is_healthy
        counts[1] += 1
    healthy = sum(c[0] for c in levels.values())
    enabled = sum(c[1] for c in levels.values())
    threshold = pool.panic_threshold
    calm = PanicState(False, healthy, enabled, threshold)
    if not enabled or threshold <= 0:
        return calm
    scale = pool.overprovisioning * 100.0
    total = sum(min(100.0, scale * h / n) for h, n in levels.values())
    if total >= 100.0:
        return calm
    for priority in sorted(levels):
        h, n = levels[priority]
        percent = 100.0 * h / n
        if percent < threshold:
            where = f" at priority {priority}" if len(levels) > 1 else ""
            reason = (
                f"{h} of {n} servers healthy{where} ({percent:.0f}% < panic threshold "
                f"{threshold:g}%): calls go to every enabled server, healthy or not"
            )
            return PanicState(True, healthy, enabled, threshold, reason)
    return calm


class _Level:
    """One priority level as seen by one pick."""

    __slots__ = ("candidates", "enabled", "everyone", "healthy", "priority")

    def __init__(self, priority: int) -> None:
        self.priority = priority
        self.enabled = 0
        self.healthy = 0
        self.candidates: list[Endpoint] = []  # healthy and may take this call
        self.everyone: list[Endpoint] = []  # may take this call if the level panics

    def healthy_percent(self) -> float:
        return 100.0 * self.healthy / self.enabled


class Balancer:
    """Per-pool picker. Keeps only the round-robin state; everything else lives on endpoints."""

    def __init__(self, pool: PoolConfig, rng: random.Random) -> None:
        self._pool = pool
        self._rng = rng
        self._current: dict[int, float] = {}  # smooth weighted round robin: server id → current

    @property
    def pool(self) -> PoolConfig:
        return self._pool

    def panic_state(self, endpoints: Iterable[Endpoint], now: float) -> PanicState:
        """Is the pool in panic now, as this process's balancer sees its servers."""
        servers = []
        for endpoint in endpoints:
            config = endpoint.config
            if config.state is _ENABLED:
                outlier = endpoint.outlier
                ejected = outlier.in_cycle and now < outlier.ejected_until
                servers.append((config.priority, config.health is not _DOWN and not ejected))
        return panic_state(self._pool, servers)

    def configure(self, pool: PoolConfig) -> None:
        """Apply a reloaded pool config; the next pick uses it."""
        self._pool = pool
        ids = {server.id for server in pool.servers}
        self._current = {i: w for i, w in self._current.items() if i in ids}

    def pick(
        self,
        endpoints: Sequence[Endpoint],
        now: float,
        *,
        tool: str | None = None,
        exclude: Collection[int] = (),
        hash_key: str | None = None,
        pin: str | None = None,
    ) -> Pick | None:
        """The server for one call, or None when no server may take it (answer 503)."""
        if pin is not None:
            pinned = self._pinned(endpoints, now, tool, exclude, pin)
            if pinned is not None:
                return pinned
        levels = self._survey(endpoints, now, tool, exclude)
        if not levels:
            return None
        key_hash = stable_hash(hash_key) if hash_key is not None else None
        chosen = self._choose_level(levels, key_hash)
        if chosen is None:
            return None
        level, panic = chosen
        candidates = level.everyone if panic else level.candidates
        if not candidates:
            # The level is healthy enough but nothing in it may take *this* call (excluded,
            # capped, trial taken): any other level's healthy server is better than a 503.
            fallback = self._fallback(levels)
            if fallback is None:
                return None
            level, panic = fallback
            candidates = level.everyone if panic else level.candidates
        if key_hash is not None:
            loads = [ep.stats.in_flight for ep in candidates]
            seeds = [ep.hash_seed for ep in candidates]
            endpoint = rendezvous_choose(
                key_hash, candidates, loads, self._pool.hash_balance_factor, seeds=seeds
            )
            assert endpoint is not None  # noqa: S101  # narrowing: candidates is not empty
            return self._done(endpoint, level.priority, panic, PickReason.HASH, now)
        return self._done(
            self._balance(candidates, now), level.priority, panic, PickReason.BALANCE, now
        )

    # --- steps -------------------------------------------------------------------------------

    def _pinned(
        self,
        endpoints: Sequence[Endpoint],
        now: float,
        tool: str | None,
        exclude: Collection[int],
        pin: str,
    ) -> Pick | None:
        for endpoint in endpoints:
            if endpoint.config.name != pin:
                continue
            config = endpoint.config
            if (
                endpoint.available(now)
                and endpoint.outlier.may_take(now)
                and (tool is None or endpoint.has_tool(tool))
                and config.id not in exclude
                and not 0 < config.max_in_flight <= endpoint.stats.in_flight
            ):
                return self._done(endpoint, config.priority, False, PickReason.PIN, now)
            return None
        return None

    def _survey(
        self,
        endpoints: Sequence[Endpoint],
        now: float,
        tool: str | None,
        exclude: Collection[int],
    ) -> list[_Level]:
        # This loop runs over every server on every call, so it inlines `Endpoint.available`,
        # `has_tool` and `OutlierState.may_take` (same tests, without the method calls).
        by_priority: dict[int, _Level] = {}
        for endpoint in endpoints:
            config = endpoint.config
            if config.state is not _ENABLED:
                continue  # draining/disabled servers are not part of the pool's capacity
            tools = endpoint.tools
            if tool is not None and tools is not None and tool not in tools:
                continue  # health is judged among the servers that could serve this tool
            level = by_priority.get(config.priority)
            if level is None:
                level = by_priority[config.priority] = _Level(config.priority)
            level.enabled += 1
            outlier = endpoint.outlier
            healthy = config.health is not _DOWN and not (
                outlier.in_cycle and now < outlier.ejected_until
            )
            if healthy:
                level.healthy += 1
            if (
                config.id in exclude
                or config.weight <= 0
                or 0 < config.max_in_flight <= endpoint.stats.in_flight
            ):
                continue
            level.everyone.append(endpoint)
            if healthy and (not outlier.in_cycle or outlier.may_take(now)):
                level.candidates.append(endpoint)
        if len(by_priority) == 1:
            return list(by_priority.values())
        return sorted(by_priority.values(), key=_PRIORITY)

    def _choose_level(
        self, levels: list[_Level], key_hash: int | None
    ) -> tuple[_Level, bool] | None:
        pool = self._pool
        scale = pool.overprovisioning * 100.0
        healths = [min(100.0, scale * level.healthy / level.enabled) for level in levels]
        total = sum(healths)
        if total <= 0.0:
            return (levels[0], True) if pool.panic_threshold > 0 else None
        normalized = min(100.0, total)
        chosen = levels[0]
        if len(levels) > 1:
            point = 100.0 * (key_position(key_hash) if key_hash is not None else self._rng.random())
            remaining = 100.0
            reached = 0.0
            for level, health in zip(levels, healths, strict=True):
                load = min(remaining, health * 100.0 / normalized)
                if load <= 0.0:
                    continue
                chosen = level  # the last level with load, should rounding leave `point` beyond
                remaining -= load
                reached += load
                if point < reached:
                    break
        panic = normalized < 100.0 and chosen.healthy_percent() < pool.panic_threshold
        return chosen, panic

    def _fallback(self, levels: list[_Level]) -> tuple[_Level, bool] | None:
        for level in levels:
            if level.candidates:
                return level, False
        pool = self._pool
        scale = pool.overprovisioning * 100.0
        total = sum(min(100.0, scale * level.healthy / level.enabled) for level in levels)
        if total >= 100.0:
            return None  # enough healthy capacity exists, just not for this call: no panic
        for level in levels:
            if level.everyone and level.healthy_percent() < pool.panic_threshold:
                return level, True
        return None

    def _balance(self, candidates: list[Endpoint], now: float) -> Endpoint:
        if len(candidates) == 1:
            return candidates[0]
        strategy = self._pool.strategy
        if strategy is Strategy.ROUND_ROBIN:
            return self._smooth_round_robin(candidates, now)
        return self._two_choices(candidates, now, strategy is Strategy.HEALTH_BASED)

    def _smooth_round_robin(self, candidates: list[Endpoint], now: float) -> Endpoint:
        # nginx's smooth weighted round robin: every server gains its weight, the richest is
        # picked and pays the total. Weights 5:1:1 give a a b a c a a, not a a a a a b c.
        window = self._pool.slow_start_window
        current = self._current
        total = 0.0
        best = candidates[0]
        best_value = -float("inf")
        for endpoint in candidates:
            weight = endpoint.effective_weight(now, window)
            value = current.get(endpoint.config.id, 0.0) + weight
            current[endpoint.config.id] = value
            total += weight
            if value > best_value:
                best, best_value = endpoint, value
        current[best.config.id] = best_value - total
        return best

    def _two_choices(self, candidates: list[Endpoint], now: float, health: bool) -> Endpoint:
        # Power of two choices. Both draws are weighted, and on equal scores the first draw wins:
        # idle servers all score 0 (least_connections) or their equal latency (health_based), so
        # a quiet pool still splits calls by weight, and ties between equal weights are fair.
        window = self._pool.slow_start_window
        weights = [endpoint.effective_weight(now, window) for endpoint in candidates]
        total = sum(weights)
        rng = self._rng
        first = _draw(weights, rng.random() * total, -1)
        second = _draw(weights, rng.random() * (total - weights[first]), first)
        a, b = candidates[first], candidates[second]
        if health:
            neutral = (
                _neutral_latency(candidates, now)
                if not (a.stats.sampled and b.stats.sampled)
                else 0.0
            )
            score_a = _health_score(a, weights[first], now, neutral)
            score_b = _health_score(b, weights[second], now, neutral)
        else:
            score_a = a.stats.in_flight / weights[first]
            score_b = b.stats.in_flight / weights[second]
        return b if score_b < score_a else a

    def _done(
        self, endpoint: Endpoint, level: int, panic: bool, reason: PickReason, now: float
    ) -> Pick:
        endpoint.stats.picks += 1
        trial = not panic and endpoint.outlier.half_open(now)
        if trial:
            endpoint.outlier.claim_trial(now)
        return Pick(endpoint, level, panic, reason, trial)


def _draw(weights: list[float], point: float, skip: int) -> int:
    """Index whose weight interval holds `point`, leaving out index `skip`."""
    reached = 0.0
    last = -1
    for i, weight in enumerate(weights):
        if i == skip:
            continue
        reached += weight
        last = i
        if point < reached:
            return i
    return last  # `point` at the very top, or float rounding


def _health_score(endpoint: Endpoint, weight: float, now: float, neutral: float) -> float:
    # Finagle's load × cost, with the weight scaling the queue rather than the whole product:
    # `(in_flight / w + 1) × latency`. Dividing the `+ 1` by w too (`(in_flight + 1) × latency / w`)
    # would make an idle weight-3 server always beat an idle weight-1 server of equal latency, so
    # a quiet pool would send everything to the heaviest server instead of sharing by weight.
    stats = endpoint.stats
    latency = stats.latency(now) if stats.sampled else neutral
    penalty = 1.0 + ERROR_PENALTY * stats.error_rate(now)
    return (stats.in_flight / weight + 1.0) * latency * penalty


def _neutral_latency(candidates: list[Endpoint], now: float) -> float:
    """What a server with no samples yet is assumed to cost: the median of the others, so a new
    server is neither starved (as with a pessimistic guess) nor flooded (an optimistic one)."""
    known = sorted(e.stats.latency(now) for e in candidates if e.stats.sampled)
    if not known:
        return DEFAULT_LATENCY
    middle = len(known) // 2
    return known[middle] if len(known) % 2 else (known[middle - 1] + known[middle]) / 2
