"""The one place that maps ORM rows to the engine's frozen dataclasses (and back, for reports)."""

from __future__ import annotations

from balancing.engine.config import (
    AdminState,
    AffinityAction,
    AffinityRuleConfig,
    Era,
    Health,
    MatchOn,
    MatchType,
    PoolConfig,
    RetryPolicy,
    ServerConfig,
    SessionMode,
    Snapshot,
    Strategy,
    Transport,
)
from servers import services
from servers.models import AffinityRule, Pool, Server

_POOL_KNOBS = (
    "sessions_per_server",
    "calls_per_session",
    "acquire_timeout",
    "call_timeout",
    "retry_budget_percent",
    "retry_budget_min",
    "check_interval",
    "check_timeout",
    "fall",
    "rise",
    "consecutive_failures",
    "ejection_base",
    "ejection_cap",
    "max_ejection_percent",
    "panic_threshold",
    "slow_start_window",
)


def server_config(row: Server) -> ServerConfig:
    return ServerConfig(
        id=row.pk,
        name=row.name,
        transport=Transport(row.transport),
        url=row.url,
        headers=tuple(sorted(row.headers.items())),
        command=row.command,
        args=tuple(row.args),
        env=tuple(sorted(row.env.items())),
        cwd=row.cwd,
        weight=row.weight,
        priority=row.priority,
        state=AdminState(row.state),
        max_in_flight=row.max_in_flight,
        era=Era(row.era),
        health=Health(row.health),
        health_changed_at=row.health_changed_at.timestamp() if row.health_changed_at else 0.0,
    )


def rule_config(row: AffinityRule, server_names: dict[int, str]) -> AffinityRuleConfig:
    return AffinityRuleConfig(
        id=row.pk,
        order=row.order,
        match_on=MatchOn(row.match_on),
        match_type=MatchType(row.match_type),
        pattern=row.pattern,
        action=AffinityAction(row.action),
        header=row.header.lower(),
        pin_server=server_names.get(row.pin_server_id or 0, ""),
        enabled=row.enabled,
    )


def pool_config(row: Pool, servers: list[Server], rules: list[AffinityRule]) -> PoolConfig:
    names = {s.pk: s.name for s in servers}
    return PoolConfig(
        id=row.pk,
        slug=row.slug,
        name=row.name,
        strategy=Strategy(row.strategy),
        session_mode=SessionMode(row.session_mode),
        retry_policy=RetryPolicy(row.retry_policy),
        servers=tuple(server_config(s) for s in servers),
        rules=tuple(rule_config(r, names) for r in sorted(rules, key=lambda r: (r.order, r.pk))),
        **{knob: getattr(row, knob) for knob in _POOL_KNOBS},
    )


def load_snapshot() -> Snapshot:
    """The whole config in three queries, with the version it was read at."""
    version = services.config_version()
    pools = list(Pool.objects.order_by("slug"))
    servers: dict[int, list[Server]] = {p.pk: [] for p in pools}
    for server in Server.objects.order_by("priority", "name"):
        servers.setdefault(server.pool_id, []).append(server)
    rules: dict[int, list[AffinityRule]] = {p.pk: [] for p in pools}
    for rule in AffinityRule.objects.all():
        rules.setdefault(rule.pool_id, []).append(rule)
    return Snapshot(
        version=version,
        pools=tuple(pool_config(p, servers[p.pk], rules[p.pk]) for p in pools),
    )


def config_version() -> int:
    return services.config_version()


def record_outlier(server_id: int, ejected: bool) -> bool:
    """Report a passive-health verdict of this process to the DB (dashboard, metrics, history)."""
    from django.db.models import F

    if ejected:
        return services.flip_health(
            server_id,
            expected=(Health.UNKNOWN, Health.UP, Health.RECOVERING),
            new=Health.EJECTED,
            reason="ejected by live traffic: consecutive failures",
            source="passive",
            ejections=F("ejections") + 1,
        )
    return services.flip_health(
        server_id,
        expected=(Health.EJECTED,),
        new=Health.UP,
        reason="passed its trial call after ejection",
        source="passive",
    )
