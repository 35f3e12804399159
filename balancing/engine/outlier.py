"""Passive health: judge servers from live calls and eject the ones that keep failing.

Envoy's consecutive-failure ejection with Finagle's half-open probe (design: "Passive"):

- `consecutive_failures` failures in a row (transport failure, timeout, JSON-RPC internal error)
  eject a server for `ejection_base × n` seconds, n = times ejected, capped at `ejection_cap`,
  jittered ±10 % so servers ejected together do not come back together.
- A tool result with `isError: true` is the tool's answer, so it counts as a success here.
- When the ejection time is over the server is *half-open*: exactly one trial call may go to it.
  A trial success closes it (back in service); a trial failure ejects it again for longer.
- A passing active health check (`mark_probe_ok`) ends an ejection at once.
- n decays while the server is in service: one step for every `ejection_base` seconds, so a
  server that flaps is kept out longer and one that recovered for good starts over.
- The pool never has more than `max_ejection_percent` of its enabled servers ejected or half-open,
  rounded down: a one-server pool never ejects (that would only turn slowness into 503s), a
  two-server pool ejects at most one. Envoy's "at least one host" exception is not taken, since it
  would break the design's 50 % ceiling.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from balancing.engine.config import AdminState, PoolConfig, ServerConfig


class Outcome(StrEnum):
    """How one call to a server ended, as far as the server's health is concerned."""

    SUCCESS = "success"
    TRANSPORT_FAILURE = "transport_failure"
    TIMEOUT = "timeout"
    INTERNAL_ERROR = "internal_error"  # JSON-RPC -32603 and friends: the server broke
    TOOL_ERROR = "tool_error"  # result with isError: true: the server answered fine


FAILURES = frozenset({Outcome.TRANSPORT_FAILURE, Outcome.TIMEOUT, Outcome.INTERNAL_ERROR})


@dataclass(frozen=True, slots=True)
class Ejected:
    server_id: int
    until: float  # same clock as `now`
    count: int  # n: times ejected in this run of trouble


@dataclass(frozen=True, slots=True)
class Recovered:
    server_id: int


OutlierEvent = Ejected | Recovered


@dataclass(frozen=True, slots=True)
class OutlierPolicy:
    consecutive_failures: int = 5
    ejection_base: float = 30.0
    ejection_cap: float = 300.0
    max_ejection_percent: float = 50.0
    jitter: float = 0.1
    # A trial call whose outcome never comes back (lost by a bug) must not leave the server
    # half-open forever: after this long another trial may go.
    trial_timeout: float = 35.0

    @classmethod
    def from_pool(cls, pool: PoolConfig) -> OutlierPolicy:
        return cls(
            consecutive_failures=pool.consecutive_failures,
            ejection_base=pool.ejection_base,
            ejection_cap=pool.ejection_cap,
            max_ejection_percent=pool.max_ejection_percent,
            trial_timeout=pool.acquire_timeout + pool.call_timeout,
        )


class OutlierDetector:
    """Pool-wide side of outlier detection: the policy, the rng, and the ejection cap."""

    def __init__(self, policy: OutlierPolicy, rng: random.Random) -> None:
        self.policy = policy
        self._rng = rng
        self._states: dict[int, OutlierState] = {}
        self._enabled: int | None = None  # None until `sync`: then every tracked server counts

    @classmethod
    def for_pool(cls, pool: PoolConfig, rng: random.Random) -> OutlierDetector:
        detector = cls(OutlierPolicy.from_pool(pool), rng)
        detector.sync(pool.servers)
        return detector

    def configure(self, pool: PoolConfig) -> None:
        """Apply a reloaded pool config: new policy, and the server set (see `sync`)."""
        self.policy = OutlierPolicy.from_pool(pool)
        self.sync(pool.servers)

    def sync(self, servers: Iterable[ServerConfig]) -> None:
        """Track exactly these servers; the cap counts the enabled ones.

        Call on every config reload: removed servers are forgotten, states of kept ones survive.
        """
        servers = list(servers)
        for server in servers:
            self.state(server.id)
        keep = {server.id for server in servers}
        for server_id in [i for i in self._states if i not in keep]:
            del self._states[server_id]
        self._enabled = sum(1 for s in servers if s.state is AdminState.ENABLED)

    def state(self, server_id: int) -> OutlierState:
        """The state of one server, created on first use."""
        found = self._states.get(server_id)
        if found is None:
            found = self._states[server_id] = OutlierState(server_id, self)
        return found

    def out_of_service(self) -> int:
        """Servers now ejected or half-open (both count against the cap)."""
        return sum(1 for s in self._states.values() if s.in_cycle)

    def max_ejected(self) -> int:
        size = len(self._states) if self._enabled is None else self._enabled
        return math.floor(size * self.policy.max_ejection_percent / 100.0 + 1e-9)

    def ejection_time(self, count: int) -> float:
        """How long the `count`-th ejection in a row lasts, jittered."""
        policy = self.policy
        base = min(policy.ejection_base * count, policy.ejection_cap)
        return base * (1.0 + self._rng.uniform(-policy.jitter, policy.jitter))


class OutlierState:
    """Outlier state of one server; the runtime calls `record()` after every call to it."""

    __slots__ = (
        "_detector",
        "_in_service_since",
        "_trial_at",
        "consecutive",
        "ejected_until",
        "ejections",
        "in_cycle",
        "server_id",
    )

    def __init__(self, server_id: int, detector: OutlierDetector) -> None:
        self.server_id = server_id
        self._detector = detector
        self.consecutive = 0
        self.ejections = 0
        self.in_cycle = False  # ejected, or half-open and waiting for its trial to succeed
        self.ejected_until = 0.0
        self._trial_at = -math.inf
        self._in_service_since = 0.0

    def ejected(self, now: float) -> bool:
        return self.in_cycle and now < self.ejected_until

    def half_open(self, now: float) -> bool:
        return self.in_cycle and now >= self.ejected_until

    def may_take(self, now: float) -> bool:
        """May a new call go here: in service, or half-open with its one trial not yet taken."""
        if not self.in_cycle:
            return True
        return now >= self.ejected_until and (
            now - self._trial_at >= self._detector.policy.trial_timeout
        )

    def claim_trial(self, now: float) -> None:
        """The balancer sent the half-open trial call; others skip the server until it ends."""
        self._trial_at = now

    def abandon_trial(self) -> None:
        """The trial call ended without telling anything (the client cancelled it): let the next
        call be the trial rather than waiting out `trial_timeout`."""
        self._trial_at = -math.inf

    def record(self, outcome: Outcome, now: float) -> OutlierEvent | None:
        """Account one finished call; returns an event when the server's state flipped."""
        if outcome not in FAILURES:
            self.consecutive = 0
            # Calls that started before the ejection may still finish while it lasts: they say
            # nothing about the server now, so only a call ending in half-open closes it.
            if self.half_open(now):
                return self._close(now)
            return None
        self.consecutive += 1
        if self.in_cycle:
            if now < self.ejected_until:
                return None  # a straggler from before the ejection; it is already out
            return self._eject(now)  # the trial failed: out again, for longer
        if self.consecutive >= self._detector.policy.consecutive_failures:
            detector = self._detector
            if detector.out_of_service() < detector.max_ejected():
                return self._eject(now)
        return None

    def mark_probe_ok(self, now: float) -> Recovered | None:
        """An active health check passed: end any ejection now (Envoy's default)."""
        if not self.in_cycle:
            return None
        self.consecutive = 0
        return self._close(now)

    def _eject(self, now: float) -> Ejected:
        if not self.in_cycle:
            served = max(now - self._in_service_since, 0.0)
            step = self._detector.policy.ejection_base
            decayed = int(served // step) if step > 0 else self.ejections
            self.ejections = max(self.ejections - decayed, 0)
        self.ejections += 1
        self.in_cycle = True
        self.ejected_until = now + self._detector.ejection_time(self.ejections)
        self._trial_at = -math.inf
        return Ejected(self.server_id, self.ejected_until, self.ejections)

    def _close(self, now: float) -> Recovered:
        self.in_cycle = False
        self._trial_at = -math.inf
        self._in_service_since = now
        return Recovered(self.server_id)
