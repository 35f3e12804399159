"""The one place that maps ORM rows to the engine's frozen dataclasses (and back, for reports).

It also holds the few ORM reads and service calls the app-facing API needs (API keys for the
in-memory key cache; config writes for admin-scoped keys), so `balancing` touches `servers` here
and nowhere else."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, TypeVar

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Prefetch

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
from balancing.engine.liveness import Liveness
from balancing.errors_http import ApiError
from balancing.keys import KeyRecord
from servers import configfile, secrets, services
from servers.choices import ServerState
from servers.models import POOL_TUNING, AffinityRule, ApiKey, Pool, RuntimeReport, Server


def server_config(row: Server) -> ServerConfig:
    return ServerConfig(
        id=row.pk,
        name=row.name,
        transport=Transport(row.transport),
        url=row.url,
        headers=secrets.runtime_headers(row),
        command=row.command,
        args=tuple(row.args),
        env=secrets.runtime_env(row),
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
        **{knob: getattr(row, knob) for knob in POOL_TUNING},
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


def now() -> datetime:
    from django.utils import timezone

    return timezone.now()


def health_changes(since: datetime) -> list[tuple[int, Health, float]]:
    """(server id, health, when) of every server whose health flipped at or after `since`: how
    runtimes without the event path (the embedded default) learn of flips, one cheap query."""
    rows = Server.objects.filter(health_changed_at__gte=since).values_list(
        "pk", "health", "health_changed_at"
    )
    return [(pk, Health(health), at.timestamp()) for pk, health, at in rows if at is not None]


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


REPORT_FIELDS = ("at", "ok", "starting", "latency_ms", "error", "era", "protocol_version")


def record_liveness(reports: Iterable[Liveness]) -> int:
    """Store this runtime's reports on its stdio servers (one upsert); returns how many."""
    from django.utils import timezone

    now = timezone.now()
    wanted = {r.server_id: r for r in reports}
    existing = set(Server.objects.filter(pk__in=wanted).values_list("pk", flat=True))
    rows = [
        RuntimeReport(
            server_id=r.server_id,
            at=now,
            ok=r.ok,
            starting=r.starting,
            latency_ms=r.latency_ms,
            error=r.error,
            era=r.era,
            protocol_version=r.protocol_version,
        )
        for r in wanted.values()
        if r.server_id in existing
    ]
    try:
        RuntimeReport.objects.bulk_create(
            rows, update_conflicts=True, unique_fields=["server"], update_fields=REPORT_FIELDS
        )
    except IntegrityError:
        return 0  # a server deleted between the two statements: the next round writes the rest
    return len(rows)


# ---- API keys (the REST and MCP endpoints authenticate from memory; these fill the cache) ----


def api_key_record(row: ApiKey, pool_slugs: Iterable[str]) -> KeyRecord:
    return KeyRecord(
        id=row.pk,
        name=row.name,
        prefix=row.prefix,
        hashed_secret=row.hashed_secret,
        pools=frozenset(pool_slugs),
        all_pools=row.all_pools,
        is_admin=row.is_admin,
        rate_limit_per_minute=row.rate_limit_per_minute,
        expires_at=row.expires_at.timestamp() if row.expires_at else None,
        revoked=row.revoked_at is not None,
    )


def load_api_keys() -> list[KeyRecord]:
    """Every key with its pools, in two queries (revoked ones too: they answer "revoked")."""
    keys = list(
        ApiKey.objects.prefetch_related(Prefetch("pools", queryset=Pool.objects.only("slug")))
    )
    return [api_key_record(k, (p.slug for p in k.pools.all())) for k in keys]


def find_api_key(prefix: str) -> KeyRecord | None:
    row = ApiKey.objects.filter(prefix=prefix).first()
    if row is None:
        return None
    return api_key_record(row, row.pools.values_list("slug", flat=True))


# ---- config writes for admin-scoped API keys: the same service functions the admin uses ----

ConfigRow = TypeVar("ConfigRow", Pool, Server, AffinityRule)
_SERVER_STATES = {s.value for s in ServerState}


def _check_fields(fields: Mapping[str, Any], allowed: Iterable[str]) -> None:
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise ApiError("invalid_request", f"unknown fields: {', '.join(unknown)}", fields=unknown)
    # No config column is nullable (an explicit null used to reach the model and crash `str()`);
    # `pin_server: null` is the one null with a meaning: no pinned server.
    nulls = sorted(name for name, value in fields.items() if value is None and name != "pin_server")
    if nulls:
        raise ApiError("invalid_request", f"may not be null: {', '.join(nulls)}", fields=nulls)


def _saved(obj: ConfigRow) -> None:
    try:
        services.save(obj)
    except ValidationError as exc:
        errors = exc.message_dict if hasattr(exc, "error_dict") else {"__all__": exc.messages}
        raise ApiError("invalid_request", "the config is not valid", errors=errors) from None
    except IntegrityError as exc:
        raise ApiError("conflict", f"conflicts with existing config: {exc}") from None


def _pool_row(slug: str) -> Pool:
    pool = Pool.objects.filter(slug=slug).first()
    if pool is None:
        raise ApiError("unknown_pool", f"no pool {slug!r}")
    return pool


def _server_row(slug: str, name: str) -> Server:
    server = Server.objects.filter(pool__slug=slug, name=name).select_related("pool").first()
    if server is None:
        _pool_row(slug)
        raise ApiError("unknown_server", f"pool {slug!r} has no server {name!r}")
    return server


def _rule_row(slug: str, rule_id: int) -> AffinityRule:
    rule = (
        AffinityRule.objects.filter(pool__slug=slug, pk=rule_id)
        .select_related("pool", "pin_server")
        .first()
    )
    if rule is None:
        _pool_row(slug)
        raise ApiError("unknown_rule", f"pool {slug!r} has no affinity rule {rule_id}")
    return rule


def pool_dict(pool: Pool) -> dict[str, Any]:
    return {field: getattr(pool, field) for field in configfile.POOL_FIELDS}


def server_dict(server: Server) -> dict[str, Any]:
    return {
        **{field: getattr(server, field) for field in configfile.SERVER_FIELDS},
        "health": server.health,
    }


def rule_dict(rule: AffinityRule) -> dict[str, Any]:
    data = {f: getattr(rule, f) for f in configfile.RULE_FIELDS if f != "pin_server"}
    pin = rule.pin_server.name if rule.pin_server_id and rule.pin_server else ""
    return {"id": rule.pk, **data, "pin_server": pin}


def create_pool(fields: Mapping[str, Any]) -> dict[str, Any]:
    _check_fields(fields, configfile.POOL_FIELDS)
    pool = Pool(**fields)
    _saved(pool)
    return pool_dict(pool)


def update_pool(slug: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    _check_fields(fields, configfile.POOL_FIELDS)
    with transaction.atomic():
        pool = _pool_row(slug)
        for name, value in fields.items():
            setattr(pool, name, value)
        _saved(pool)
    return pool_dict(pool)


def delete_pool(slug: str) -> None:
    services.delete(_pool_row(slug))


def drain_pool(slug: str) -> int:
    """Drain every server of a pool: they finish their calls and take no new ones."""
    pool = _pool_row(slug)
    return services.set_server_state(pool.servers.all(), ServerState.DRAINING)


def list_servers(slug: str) -> list[dict[str, Any]]:
    return [server_dict(s) for s in _pool_row(slug).servers.order_by("priority", "name")]


def create_server(slug: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    _check_fields(fields, configfile.SERVER_FIELDS)
    server = Server(pool=_pool_row(slug), **fields)
    _saved(server)
    return server_dict(server)


def update_server(slug: str, name: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    _check_fields(fields, configfile.SERVER_FIELDS)
    with transaction.atomic():
        server = _server_row(slug, name)
        for field, value in fields.items():
            setattr(server, field, value)
        _saved(server)
    return server_dict(server)


def delete_server(slug: str, name: str) -> None:
    services.delete(_server_row(slug, name))


def set_server_state(slug: str, name: str, state: str) -> dict[str, Any]:
    if state not in _SERVER_STATES:
        raise ApiError("invalid_request", f"state must be one of {sorted(_SERVER_STATES)}")
    server = _server_row(slug, name)
    services.set_server_state([server], ServerState(state))
    server.refresh_from_db()
    return server_dict(server)


def list_rules(slug: str) -> list[dict[str, Any]]:
    rules = _pool_row(slug).affinity_rules.select_related("pin_server").order_by("order", "id")
    return [rule_dict(r) for r in rules]


def _rule_fields(pool: Pool, fields: Mapping[str, Any]) -> dict[str, Any]:
    _check_fields(fields, configfile.RULE_FIELDS)
    values = dict(fields)
    if "pin_server" in values:
        name = values.pop("pin_server")
        values["pin_server"] = None
        if name:
            server = pool.servers.filter(name=name).first()
            if server is None:
                raise ApiError("invalid_request", f"pool {pool.slug!r} has no server {name!r}")
            values["pin_server"] = server
    return values


def create_rule(slug: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    pool = _pool_row(slug)
    rule = AffinityRule(pool=pool, **_rule_fields(pool, fields))
    _saved(rule)
    return rule_dict(rule)


def update_rule(slug: str, rule_id: int, fields: Mapping[str, Any]) -> dict[str, Any]:
    with transaction.atomic():
        rule = _rule_row(slug, rule_id)
        for field, value in _rule_fields(rule.pool, fields).items():
            setattr(rule, field, value)
        _saved(rule)
    return rule_dict(rule)


def delete_rule(slug: str, rule_id: int) -> None:
    services.delete(_rule_row(slug, rule_id))
