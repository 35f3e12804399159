"""The runtime's view of the operator's config: plain frozen dataclasses, no Django.

`balancing.adapter` builds these from ORM rows; everything in `balancing.engine` takes them as
they are. Defaults follow `shared/design.md` ("Pool, balancer and health: defaults").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Strategy(StrEnum):
    ROUND_ROBIN = "round_robin"
    LEAST_CONNECTIONS = "least_connections"
    HEALTH_BASED = "health_based"


class SessionMode(StrEnum):
    SHARED = "shared"
    STICKY = "sticky"


class Transport(StrEnum):
    STREAMABLE_HTTP = "streamable_http"
    STDIO = "stdio"


class AdminState(StrEnum):
    """What the operator wants: `draining` finishes what it has and takes nothing new."""

    ENABLED = "enabled"
    DRAINING = "draining"
    DISABLED = "disabled"


class Health(StrEnum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"
    EJECTED = "ejected"
    RECOVERING = "recovering"


class Era(StrEnum):
    """MCP protocol era: `handshake` = initialize + sessions (2024-11-05 … 2025-11-25),
    `modern` = server/discover, stateless (2026-07-28). `auto` negotiates."""

    AUTO = "auto"
    HANDSHAKE = "handshake"
    MODERN = "modern"


class RetryPolicy(StrEnum):
    SAFE = "safe"  # undelivered calls, or tools annotated readOnlyHint / idempotentHint
    UNDELIVERED = "undelivered"  # only calls that never reached a server
    NEVER = "never"


class PoolStatus(StrEnum):
    """A pool at a glance, the one vocabulary of the REST API and the dashboard."""

    UP = "up"  # every server takes calls
    DEGRADED = "degraded"  # some do
    DOWN = "down"  # none does
    EMPTY = "empty"  # the pool has no servers


def pool_status(available: int, total: int) -> PoolStatus:
    """The status of a pool with `available` of its `total` servers taking calls."""
    if not total:
        return PoolStatus.EMPTY
    if available >= total:
        return PoolStatus.UP
    return PoolStatus.DEGRADED if available else PoolStatus.DOWN


class MatchOn(StrEnum):
    API_KEY = "api_key"
    HEADER = "header"
    CLIENT_ID = "client_id"
    TOOL = "tool"


class MatchType(StrEnum):
    EXACT = "exact"
    PREFIX = "prefix"
    REGEX = "regex"


class AffinityAction(StrEnum):
    PIN = "pin"
    HASH = "hash"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    id: int
    name: str
    transport: Transport
    url: str = ""
    # May hold decrypted secrets: kept out of repr() so a logged config never shows them.
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    command: str = ""
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    cwd: str = ""
    weight: int = 1
    priority: int = 0
    state: AdminState = AdminState.ENABLED
    max_in_flight: int = 0  # 0 = no per-server cap beyond sessions × calls per session
    era: Era = Era.AUTO
    health: Health = Health.UNKNOWN
    health_changed_at: float = 0.0  # epoch seconds of the last flip (drives slow start)

    @property
    def key(self) -> str:
        """Stable identity for hashing: the same on every web process."""
        return f"{self.id}:{self.name}"

    @property
    def place(self) -> tuple[object, ...]:
        """Where the server lives and how it is spoken to: when this changes, every session to
        it (and every feed of its events) is one to the old server."""
        return (
            self.transport, self.url, self.command, self.args,
            self.headers, self.env, self.cwd, self.era,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class AffinityRuleConfig:
    id: int
    order: int
    match_on: MatchOn
    match_type: MatchType
    pattern: str
    action: AffinityAction
    header: str = ""  # for match_on=header
    pin_server: str = ""  # server name, for action=pin
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class PoolConfig:
    id: int
    slug: str
    name: str = ""
    strategy: Strategy = Strategy.ROUND_ROBIN
    session_mode: SessionMode = SessionMode.SHARED
    # sessions
    sessions_per_server: int = 2
    calls_per_session: int = 32
    acquire_timeout: float = 5.0
    call_timeout: float = 30.0
    validate_idle_after: float = 10.0
    keepalive_interval: float = 30.0
    max_lifetime: float = 1800.0
    idle_timeout: float = 600.0
    leak_threshold: float = 60.0
    # retries
    retry_policy: RetryPolicy = RetryPolicy.SAFE
    retry_budget_percent: float = 20.0
    retry_budget_min: int = 3
    # active health checks
    check_interval: float = 5.0
    check_timeout: float = 2.0
    start_timeout: float = 30.0  # opening a stdio session: spawn + negotiation
    fall: int = 3
    rise: int = 2
    # passive health (outlier detection)
    consecutive_failures: int = 5
    ejection_base: float = 30.0
    ejection_cap: float = 300.0
    max_ejection_percent: float = 50.0
    # balancing
    panic_threshold: float = 50.0
    overprovisioning: float = 1.4
    slow_start_window: float = 30.0
    ewma_decay: float = 10.0
    hash_balance_factor: float = 1.25
    # app-facing API: calls per minute through this pool, all keys together (0 = unlimited)
    rate_limit_per_minute: int = 0
    # sticky client sessions at once (each owns an upstream session), per web process
    max_sticky_sessions: int = 100
    max_sticky_sessions_per_key: int = 20
    servers: tuple[ServerConfig, ...] = ()
    rules: tuple[AffinityRuleConfig, ...] = field(default=())

    def server(self, server_id: int) -> ServerConfig | None:
        return next((s for s in self.servers if s.id == server_id), None)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The whole config as one runtime sees it; `version` grows with every committed change."""

    version: int
    pools: tuple[PoolConfig, ...] = ()

    def pool(self, slug: str) -> PoolConfig | None:
        return next((p for p in self.pools if p.slug == slug), None)
