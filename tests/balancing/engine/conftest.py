"""Fixtures for the pure engine: pools of endpoints built from plain config, seeded randomness."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from balancing.engine.balancer import Balancer, Pick
from balancing.engine.config import PoolConfig, ServerConfig, Transport
from balancing.engine.endpoint import Endpoint
from balancing.engine.outlier import Outcome, OutlierDetector
from balancing.engine.stats import ServerStats


def server_config(server_id: int, **fields: Any) -> ServerConfig:
    fields.setdefault("name", f"s{server_id}")
    return ServerConfig(
        id=server_id,
        transport=Transport.STREAMABLE_HTTP,
        url=f"http://127.0.0.1:{9000 + server_id}/mcp",
        **fields,
    )


class PoolUnderTest:
    """A pool config with its balancer, outlier detector and one endpoint per server."""

    def __init__(self, pool: PoolConfig, seed: int) -> None:
        self.pool = pool
        self.balancer = Balancer(pool, random.Random(seed))
        self.detector = OutlierDetector.for_pool(pool, random.Random(seed + 1))
        self.endpoints = [
            Endpoint(s, ServerStats(pool.ewma_decay), self.detector.state(s.id))
            for s in pool.servers
        ]

    def endpoint(self, name: str) -> Endpoint:
        return next(e for e in self.endpoints if e.config.name == name)

    def pick_or_none(self, now: float = 1000.0, **kwargs: Any) -> Pick | None:
        return self.balancer.pick(self.endpoints, now, **kwargs)

    def pick(self, now: float = 1000.0, **kwargs: Any) -> Pick:
        """A pick that the test expects to happen."""
        chosen = self.pick_or_none(now, **kwargs)
        assert chosen is not None, "the balancer picked nothing"
        return chosen

    def shares(self, picks: int, now: float = 1000.0, **kwargs: Any) -> Counter[str]:
        """Names of `picks` consecutive picks, each call finishing before the next starts."""
        counts: Counter[str] = Counter()
        for _ in range(picks):
            chosen = self.pick(now, **kwargs)
            counts[chosen.endpoint.config.name] += 1
        return counts

    def eject(self, name: str, now: float = 1000.0) -> None:
        """Drive a server out through real failures (the detector's cap still applies)."""
        state = self.endpoint(name).outlier
        for _ in range(self.pool.consecutive_failures):
            state.record(Outcome.TRANSPORT_FAILURE, now)


MakePool = Callable[..., PoolUnderTest]


@pytest.fixture
def make_pool() -> MakePool:
    """`make_pool([dict(weight=3), dict(priority=1)], strategy=...)`: servers s1, s2, … in order."""

    def make(servers: list[dict[str, Any]], *, seed: int = 7, **pool_fields: Any) -> PoolUnderTest:
        configs = tuple(server_config(i, **spec) for i, spec in enumerate(servers, start=1))
        pool = PoolConfig(id=1, slug="p", servers=configs, **pool_fields)
        return PoolUnderTest(pool, seed)

    return make
