"""`Endpoint`: the runtime's live record of one server in one pool, as the balancer sees it."""

from __future__ import annotations

import math

from balancing.engine.affinity import member_seed
from balancing.engine.config import AdminState, Health, ServerConfig
from balancing.engine.outlier import OutlierState
from balancing.engine.stats import ServerStats

# Envoy's `min_weight_percent`: a server in slow start still gets a trickle, so its first
# samples arrive and the latency estimate is real before it takes its full share.
SLOW_START_FLOOR = 0.1


class Endpoint:
    """One server of a pool: its config, live stats, passive-health state and known tools.

    The runtime owns it: it replaces `config` on reload, sets `tools` after `tools/list`, sets
    `up_since` when the server (re)joins (that starts slow start), and calls `stats` / `outlier`
    around every call.
    """

    __slots__ = ("_seed", "_seeded", "config", "outlier", "stats", "tools", "up_since")

    def __init__(
        self,
        config: ServerConfig,
        stats: ServerStats,
        outlier: OutlierState,
        *,
        tools: frozenset[str] | None = None,
        up_since: float = -math.inf,
    ) -> None:
        self.config = config
        self.stats = stats
        self.outlier = outlier
        self.tools = tools  # None = not listed yet: assume it may have any tool
        self.up_since = up_since  # -inf = in service since before we started: no slow start
        self._seed = 0
        self._seeded: ServerConfig | None = None  # the config `_seed` was computed from

    @property
    def id(self) -> int:
        return self.config.id

    @property
    def key(self) -> str:
        """Identity for rendezvous hashing (same in every process)."""
        return self.config.key

    @property
    def hash_seed(self) -> int:
        """`member_seed(self.key)`, recomputed only when the runtime swaps `config`."""
        if self._seeded is not self.config:
            self._seed = member_seed(self.config.key)
            self._seeded = self.config
        return self._seed

    @property
    def weight(self) -> int:
        """Configured weight. Hashing uses it rather than the slow-start weight, so that two
        processes that saw a server come back at different moments still agree on every key."""
        return self.config.weight

    def available(self, now: float) -> bool:
        """Takes new calls: enabled, not down, not ejected here.

        Half-open counts (the balancer lets only its one trial through); UNKNOWN and RECOVERING
        count, as Envoy lets a new host take traffic. `config.health == EJECTED` is another
        process's passive verdict, stored for the dashboard: each process judges a server from its
        own traffic, as each Envoy does, so only `self.outlier` ejects here.
        """
        config = self.config
        return (
            config.state is AdminState.ENABLED
            and config.health is not Health.DOWN
            and not self.outlier.ejected(now)
        )

    def has_tool(self, name: str) -> bool:
        return self.tools is None or name in self.tools

    def slow_start_fraction(self, now: float, window: float) -> float:
        """Share of its weight the server has earned back: 0.1 → 1.0 linearly over `window`."""
        elapsed = now - self.up_since
        if window <= 0 or elapsed >= window:
            return 1.0
        return max(SLOW_START_FLOOR, elapsed / window)

    def effective_weight(self, now: float, window: float) -> float:
        if now - self.up_since >= window:
            return self.config.weight  # the common case, without the ramp arithmetic
        return self.config.weight * self.slow_start_fraction(now, window)
