"""The one place that maps ORM rows to the engine's frozen dataclasses (and back, for reports).

It also holds the few ORM reads and service calls the app-facing API needs (API keys for the
in-memory key cache; config writes for admin-scoped keys), so `balancing` touches `servers` here
and nowhere else (an import-linter contract in `make lint` holds that)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from django.db import IntegrityError
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
from balancing.engine.toolpolicy import ClaimRule, Grant
from balancing.identity import AccessSnapshot
from balancing.identity import ServerIdentity as IdentityForwarding
from balancing.keys import KeyRecord
from balancing.oauth import IssuerConfig
from servers import events, secrets, services
from servers.identity.models import AccessGrant, TrustedIssuer, UserSecret
from servers.identity.models import ServerIdentity as ServerIdentityRow
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


CONTROL_GROUP = events.CONTROL_GROUP  # the channel-layer group config and health events go to


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


# ---- config writes for admin-scoped API keys: the service functions, answered as plain data ----
#
# The writes themselves (row locks, validation, events) live in `servers.services`; their errors
# are re-exported so `balancing.api` maps them to HTTP without importing `servers`.

ConfigError = services.ConfigError
NotFound = services.NotFound
InvalidConfig = services.InvalidConfig
ConfigConflict = services.ConfigConflict
ApiWriteRefused = services.ApiWriteRefused
POOL_FIELDS = services.POOL_FIELDS
SERVER_FIELDS = services.SERVER_FIELDS
RULE_FIELDS = services.RULE_FIELDS
# Each pool tuning knob with its Python type, from the model: the REST schema takes them all.
POOL_TUNING_TYPES: dict[str, type[int] | type[float]] = {
    name: float if Pool._meta.get_field(name).get_internal_type() == "FloatField" else int
    for name in POOL_TUNING
}
parse_api_key = services.parse_api_key
secret_matches = services.secret_matches


def pool_dict(pool: Pool) -> dict[str, Any]:
    return {field: getattr(pool, field) for field in POOL_FIELDS}


def server_dict(server: Server) -> dict[str, Any]:
    return {**{field: getattr(server, field) for field in SERVER_FIELDS}, "health": server.health}


def rule_dict(rule: AffinityRule) -> dict[str, Any]:
    data = {f: getattr(rule, f) for f in RULE_FIELDS if f != "pin_server"}
    pin = rule.pin_server.name if rule.pin_server_id and rule.pin_server else ""
    return {"id": rule.pk, **data, "pin_server": pin}


P = ParamSpec("P")
Row = TypeVar("Row")


def _answered(
    to_dict: Callable[[Row], dict[str, Any]], write: Callable[P, Row]
) -> Callable[P, dict[str, Any]]:
    """A service function whose row comes back as the API's plain dict."""

    def call(*args: P.args, **kwargs: P.kwargs) -> dict[str, Any]:
        return to_dict(write(*args, **kwargs))

    return call


def _listed(
    to_dict: Callable[[Row], dict[str, Any]], read: Callable[P, list[Row]]
) -> Callable[P, list[dict[str, Any]]]:
    def call(*args: P.args, **kwargs: P.kwargs) -> list[dict[str, Any]]:
        return [to_dict(row) for row in read(*args, **kwargs)]

    return call


read_pool = _answered(pool_dict, services.get_pool)
create_pool = _answered(pool_dict, services.create_pool)
update_pool = _answered(pool_dict, services.update_pool)
delete_pool = services.delete_pool
drain_pool = services.drain_pool

list_servers = _listed(server_dict, services.list_servers)
read_server = _answered(server_dict, services.get_server)
create_server = _answered(server_dict, services.create_server)
update_server = _answered(server_dict, services.update_server)
set_server_state = _answered(server_dict, services.change_server_state)
delete_server = services.delete_server

list_rules = _listed(rule_dict, services.list_rules)
read_rule = _answered(rule_dict, services.get_rule)
create_rule = _answered(rule_dict, services.create_rule)
update_rule = _answered(rule_dict, services.update_rule)
delete_rule = services.delete_rule


# ---- identity: trusted issuers, grants, per-user upstream credentials (balancing.identity) ----


def _grant(row: AccessGrant) -> Grant:
    return Grant(
        pools=(row.pool.slug,) if row.pool is not None else ("*",),
        allow=tuple(row.allow_tools),
        deny=tuple(row.deny_tools),
        tool_limits=tuple((glob, int(n)) for glob, n in sorted(row.tool_rate_limits.items())),
    )


def load_access() -> AccessSnapshot:
    """Issuers, grants and per-user credentials, in four queries."""
    issuers = {row.pk: row for row in TrustedIssuer.objects.filter(enabled=True)}
    rules: list[ClaimRule] = []
    key_grants: dict[int, list[Grant]] = {}
    for row in AccessGrant.objects.select_related("pool").order_by("id"):
        if row.api_key_id is not None:
            key_grants.setdefault(row.api_key_id, []).append(_grant(row))
        elif row.issuer_id in issuers:
            issuer = issuers[row.issuer_id].issuer
            rules.append(ClaimRule(issuer, row.claim, row.value, _grant(row)))
    identities = {
        row.server_id: IdentityForwarding(
            row.identity_header, row.identity_claim, row.secret_header
        )
        for row in ServerIdentityRow.objects.all()
    }
    user_secrets: dict[tuple[int, str, str], str] = {}
    for secret in UserSecret.objects.all():
        if secret.issuer_id is not None and secret.issuer_id not in issuers:
            continue
        issuer_url = issuers[secret.issuer_id].issuer if secret.issuer_id is not None else ""
        what = f"user secret of {secret.subject!r} for server id {secret.server_id}"
        user_secrets[(secret.server_id, issuer_url, secret.subject)] = secrets.decrypt(
            secret.secret, what=what
        )
    return AccessSnapshot(
        issuers=tuple(
            IssuerConfig(
                issuer=row.issuer,
                jwks_uri=row.jwks_uri,
                algorithms=tuple(row.algorithms),
                subject_claim=row.subject_claim,
                leeway=float(row.leeway_seconds),
            )
            for row in issuers.values()
        ),
        claim_rules=tuple(rules),
        key_grants={k: tuple(v) for k, v in key_grants.items()},
        identities=identities,
        user_secrets=user_secrets,
    )
