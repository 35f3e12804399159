"""Every write to the operator's config goes through here: admin, REST API and YAML apply alike.

Each function owns its transaction, validates with `full_clean()` (nothing is saved when that
fails), bumps the config version in the same transaction and publishes `config.changed` only once
the transaction has committed, so no runtime ever sees a change that was rolled back.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F, Model, QuerySet
from django.utils import timezone

from servers import choices, events
from servers import secrets as upstream_secrets
from servers.choices import ServerState
from servers.keyformat import API_KEY_PREFIX_LEN, hash_secret
from servers.keyformat import parse_api_key as parse_api_key
from servers.keyformat import secret_matches as secret_matches
from servers.models import POOL_TUNING, AffinityRule, ApiKey, ConfigState, Flip, Pool, Server

ConfigModel = TypeVar("ConfigModel", Pool, Server, AffinityRule)

# Every operator field, in the order an export writes them; REST accepts exactly these. Fields the
# runtime and the health checks record (health, negotiated era, tools…) are left out: the config
# says what the operator wants, never what was observed.
POOL_FIELDS = (
    "slug",
    "name",
    "description",
    "strategy",
    "session_mode",
    "retry_policy",
    *POOL_TUNING,
)
SERVER_FIELDS = (
    "name",
    "transport",
    "url",
    "headers",
    "command",
    "args",
    "env",
    "cwd",
    "weight",
    "priority",
    "state",
    "max_in_flight",
    "era",
)
RULE_FIELDS = (
    "order",
    "match_on",
    "header",
    "match_type",
    "pattern",
    "action",
    "pin_server",
    "enabled",
    "description",
)


@contextmanager
def config_change(reason: str) -> Iterator[None]:
    """A transaction that bumps the config version and announces it after commit."""
    with transaction.atomic():
        yield
        version = bump_config_version()
        transaction.on_commit(lambda: events.publish_config_changed(version, reason))
        transaction.on_commit(lambda: events.announce_committed(version, reason))  # the audit


def bump_config_version() -> int:
    updated = ConfigState.objects.filter(pk=1).update(
        version=F("version") + 1, changed_at=timezone.now()
    )
    if not updated:
        ConfigState.objects.get_or_create(pk=1)
        ConfigState.objects.filter(pk=1).update(version=F("version") + 1)
    return ConfigState.objects.values_list("version", flat=True).get(pk=1)


def config_version() -> int:
    row = ConfigState.objects.filter(pk=1).values_list("version", flat=True).first()
    return row or 0


def save(obj: ConfigModel, *, via_api: bool = False) -> ConfigModel:
    """Validate and save a pool, server or affinity rule. `via_api`: the write comes from an
    admin API key, which may not create or change stdio servers unless MCPPOOL_API_STDIO."""
    with config_change(f"save {type(obj).__name__.lower()} {obj}"):
        if via_api:
            refuse_api_stdio(obj)
        obj.full_clean()
        obj.save()
    return obj


def refuse_api_stdio(obj: Model) -> None:
    """A stdio server runs a program on this host: creating or changing one is the operator's
    (admin, `mcppool apply`), not an API key's, unless MCPPOOL_API_STDIO says otherwise."""
    if not isinstance(obj, Server) or settings.MCPPOOL_API_STDIO:
        return
    stdio = choices.Transport.STDIO
    if obj.transport == stdio or (
        obj.pk is not None and Server.objects.filter(pk=obj.pk, transport=stdio).exists()
    ):
        raise ApiWriteRefused(
            "stdio servers cannot be created or changed through the API "
            "(MCPPOOL_API_STDIO is off): use the admin or `mcppool apply`"
        )


def delete(obj: Model) -> None:
    with config_change(f"delete {type(obj).__name__.lower()} {obj}"):
        remove(obj)


def remove(obj: Model) -> None:
    """Delete `obj` and what cascades from it, inside a config change. The server rows it takes
    along are locked first: a web process's runtime report (a row that references its server)
    inserted between Django's collecting of the cascade and the delete broke the foreign key on
    PostgreSQL; locked, the insert waits for the delete and then fails, as its writer expects."""
    servers = (
        Server.objects.filter(pool=obj)
        if isinstance(obj, Pool)
        else Server.objects.filter(pk=obj.pk)
        if isinstance(obj, Server)
        else None
    )
    if servers is not None:
        list(servers.select_for_update().values_list("pk", flat=True))
    obj.delete()


def set_server_state(servers: Iterable[Server], state: ServerState) -> int:
    """Drain, enable or disable servers. Returns how many changed."""
    ids = [s.pk for s in servers]
    with config_change(f"servers {ids} → {state}"):
        return (
            Server.objects.filter(pk__in=ids)
            .exclude(state=state)
            .update(state=state, updated_at=timezone.now())
        )


def create_api_key(
    name: str,
    *,
    pools: Sequence[Pool] = (),
    all_pools: bool = False,
    is_admin: bool = False,
    rate_limit_per_minute: int = 0,
    expires_at: datetime | None = None,
    owner_id: int | None = None,
) -> tuple[ApiKey, str]:
    """Create a key and return it with its secret, which is never stored and never shown again."""
    body = secrets.token_urlsafe(32)
    prefix = secrets.token_hex(API_KEY_PREFIX_LEN // 2)
    secret = f"mcp_{prefix}_{body}"
    key = ApiKey(
        name=name,
        prefix=prefix,
        hashed_secret=hash_secret(secret),
        all_pools=all_pools,
        is_admin=is_admin,
        rate_limit_per_minute=rate_limit_per_minute,
        expires_at=expires_at,
        owner_id=owner_id,
    )
    with config_change(f"create api key {name}"):
        key.full_clean(exclude=["prefix", "hashed_secret"])
        key.save()
        key.pools.set(pools)
    return key, secret


def set_api_key_pools(key: ApiKey, pools: Sequence[Pool]) -> None:
    with config_change(f"api key {key.name} pools"):
        key.pools.set(pools)


def revoke_api_key(key: ApiKey) -> None:
    with config_change(f"revoke api key {key.name}"):
        ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    key.refresh_from_db(fields=["revoked_at"])


def flip_health(
    server_id: int,
    *,
    expected: Iterable[str],
    new: str,
    reason: str,
    source: str,
    **fields: object,
) -> bool:
    """Change a server's health state by compare-and-set; True when this call made the change.

    `UPDATE … WHERE health IN (expected)`: when two workers judge the same server at once, only
    one update matches, so a state never flips twice and the history never shows a double flip.
    The flip is recorded and `health.changed` published after commit.
    """
    expected = list(expected)
    now = timezone.now()
    with transaction.atomic():
        old = Server.objects.filter(pk=server_id).values_list("health", flat=True).first()
        if old is None or old not in expected or old == new:
            if fields:
                Server.objects.filter(pk=server_id).update(**fields)
            return False
        changed = Server.objects.filter(pk=server_id, health=old).update(
            health=new, health_changed_at=now, health_reason=reason[:500], **fields
        )
        if not changed:
            return False
        Flip.objects.create(
            server_id=server_id, at=now, old=old, new=new, source=source, reason=reason[:500]
        )
        # Not a config change: runtimes apply it to this one server (the event, or their poll of
        # recent flips), and the config version row — held by a long `mcppool apply` — is not
        # touched, so check results never wait behind an apply.
        transaction.on_commit(
            lambda: events.publish_health_changed(server_id, new, reason, at=now.timestamp())
        )
    return True


def delete_all(objs: Iterable[Model]) -> int:
    """Delete several objects (an admin bulk delete) as one config change. Returns how many."""
    items = list(objs)
    with config_change(f"delete {len(items)} objects"):
        for obj in items:
            remove(obj)
    return len(items)


# What an operator may change on a key. The secret's hash and prefix never change, and
# `revoked_at` only through revoking, so a stale form can never un-revoke a key.
API_KEY_EDITABLE = ("name", "owner", "all_pools", "is_admin", "rate_limit_per_minute", "expires_at")


def update_api_key(key: ApiKey, *, pools: Sequence[Pool]) -> ApiKey:
    """Save an existing key's editable fields and its pools."""
    with config_change(f"update api key {key.name}"):
        key.full_clean()
        key.save(update_fields=API_KEY_EDITABLE)
        key.pools.set(pools)
    return key


def revoke_api_keys(keys: Iterable[ApiKey]) -> int:
    """Revoke several keys in one config change. Returns how many were still active."""
    ids = [k.pk for k in keys]
    with config_change(f"revoke api keys {ids}"):
        return ApiKey.objects.filter(pk__in=ids, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )


def rotate_secrets() -> int:
    """Re-encrypt every stored secret value with the first key of MCPPOOL_SECRETS_KEY; returns
    how many servers were rewritten. Run after listing a new key first; then the old key can go.
    Every token is read before anything is written: one unreadable secret rewrites nothing."""
    rotated: list[Server] = []
    with config_change("rotate secrets"):
        for server in Server.objects.select_for_update():
            if not server.secret_headers and not server.secret_env:
                continue
            what = f"server {server.name!r} (id {server.pk}): secret"
            for field in ("secret_headers", "secret_env"):
                tokens = getattr(server, field)
                setattr(
                    server,
                    field,
                    {
                        k: upstream_secrets.rotate(t, what=f"{what} {k!r}")
                        for k, t in tokens.items()
                    },
                )
            rotated.append(server)
        for server in rotated:
            server.save(update_fields=["secret_headers", "secret_env", "updated_at"])
        from servers.identity.services import rotate_user_secrets  # imports this module

        rotate_user_secrets()  # callers' own secrets for servers: the same key, the same change
    return len(rotated)


# ---- config writes by natural key (the REST API's admin keys; plain data in, rows out) -------
#
# Each raises a `ConfigError` the API maps to its error contract in one place. An update changes
# only the fields it was given, on the row locked for the transaction (`SELECT … FOR UPDATE`), and
# writes only those columns: two concurrent PATCHes of different fields both stick.


class ConfigError(Exception):
    """A config write that cannot be done; nothing was written."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFound(ConfigError):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # "pool", "server" or "rule"


class InvalidConfig(ConfigError):
    pass


class ConfigConflict(ConfigError):
    pass


class ApiWriteRefused(ConfigError):
    """A write the REST API may not make, whatever the key (the operator's setting decides)."""


def _check_fields(fields: Mapping[str, Any], allowed: Iterable[str]) -> None:
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise InvalidConfig(f"unknown fields: {', '.join(unknown)}", fields=unknown)
    # No config column is nullable (an explicit null used to reach the model and crash `str()`);
    # `pin_server: null` is the one null with a meaning: no pinned server.
    nulls = sorted(name for name, value in fields.items() if value is None and name != "pin_server")
    if nulls:
        raise InvalidConfig(f"may not be null: {', '.join(nulls)}", fields=nulls)


@contextmanager
def _validated(what: str) -> Iterator[None]:
    """One config change whose model errors become `InvalidConfig`/`ConfigConflict`."""
    try:
        with config_change(what):
            yield
    except ValidationError as exc:
        errors = exc.message_dict if hasattr(exc, "error_dict") else {"__all__": exc.messages}
        raise InvalidConfig("the config is not valid", errors=errors) from None
    except IntegrityError as exc:
        raise ConfigConflict(f"conflicts with existing config: {exc}") from None


def _one(query: QuerySet[ConfigModel], kind: str, message: str, slug: str) -> ConfigModel:
    row = query.first()
    if row is None:
        if kind != "pool":
            get_pool(slug)  # an unknown pool says so, not "unknown server"
        raise NotFound(kind, message)
    return row


def get_pool(slug: str, *, lock: bool = False) -> Pool:
    query = Pool.objects.filter(slug=slug)
    return _one(query.select_for_update() if lock else query, "pool", f"no pool {slug!r}", slug)


def get_server(slug: str, name: str, *, lock: bool = False) -> Server:
    query = Server.objects.filter(pool__slug=slug, name=name)
    query = query.select_for_update() if lock else query.select_related("pool")
    return _one(query, "server", f"pool {slug!r} has no server {name!r}", slug)


def get_rule(slug: str, rule_id: int, *, lock: bool = False) -> AffinityRule:
    query = AffinityRule.objects.filter(pool__slug=slug, pk=rule_id)
    query = query.select_for_update() if lock else query.select_related("pin_server")
    return _one(query, "rule", f"pool {slug!r} has no affinity rule {rule_id}", slug)


def _apply(row: ConfigModel, fields: Mapping[str, Any]) -> ConfigModel:
    """Set the given fields, validate the whole row, and write only those columns."""
    for name, value in fields.items():
        setattr(row, name, value)
    row.full_clean()
    columns = list(fields)
    if any(f.name == "updated_at" for f in row._meta.concrete_fields):
        columns.append("updated_at")
    row.save(update_fields=columns)
    return row


def _create(row: ConfigModel) -> ConfigModel:
    row.full_clean()
    row.save()
    return row


def create_pool(fields: Mapping[str, Any]) -> Pool:
    _check_fields(fields, POOL_FIELDS)
    with _validated(f"create pool {fields.get('slug')}"):
        return _create(Pool(**fields))


def update_pool(slug: str, fields: Mapping[str, Any]) -> Pool:
    _check_fields(fields, POOL_FIELDS)
    with _validated(f"update pool {slug}"):
        return _apply(get_pool(slug, lock=True), fields)


def delete_pool(slug: str) -> None:
    with config_change(f"delete pool {slug}"):
        remove(get_pool(slug, lock=True))


def drain_pool(slug: str) -> int:
    """Drain every server of a pool: they finish their calls and take no new ones."""
    return set_server_state(get_pool(slug).servers.all(), ServerState.DRAINING)


def list_servers(slug: str) -> list[Server]:
    return list(get_pool(slug).servers.order_by("priority", "name"))


def create_server(slug: str, fields: Mapping[str, Any]) -> Server:
    _check_fields(fields, SERVER_FIELDS)
    with _validated(f"create server {slug}/{fields.get('name')}"):
        server = Server(pool=get_pool(slug), **fields)
        refuse_api_stdio(server)
        return _create(server)


def update_server(slug: str, name: str, fields: Mapping[str, Any]) -> Server:
    _check_fields(fields, SERVER_FIELDS)
    with _validated(f"update server {slug}/{name}"):
        server = get_server(slug, name, lock=True)
        refuse_api_stdio(server)  # a stdio server now, or one this write would make stdio
        if fields.get("transport") == choices.Transport.STDIO:
            refuse_api_stdio(Server(transport=choices.Transport.STDIO))
        return _apply(server, fields)


def delete_server(slug: str, name: str) -> None:
    with config_change(f"delete server {slug}/{name}"):
        remove(get_server(slug, name, lock=True))


def change_server_state(slug: str, name: str, state: str) -> Server:
    if state not in ServerState.values:
        raise InvalidConfig(f"state must be one of {sorted(ServerState.values)}")
    server = get_server(slug, name)
    set_server_state([server], ServerState(state))
    server.refresh_from_db()
    return server


def list_rules(slug: str) -> list[AffinityRule]:
    rules = get_pool(slug).affinity_rules.select_related("pin_server")
    return list(rules.order_by("order", "id"))


def _rule_fields(pool: Pool, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Rule fields with `pin_server` named (by server name within the pool) resolved to a row."""
    _check_fields(fields, RULE_FIELDS)
    values = dict(fields)
    if "pin_server" in values:
        name = values.pop("pin_server")
        values["pin_server"] = None
        if name:
            server = pool.servers.filter(name=name).first()
            if server is None:
                raise InvalidConfig(f"pool {pool.slug!r} has no server {name!r}")
            values["pin_server"] = server
    return values


def create_rule(slug: str, fields: Mapping[str, Any]) -> AffinityRule:
    with _validated(f"create rule {slug}"):
        pool = get_pool(slug)
        return _create(AffinityRule(pool=pool, **_rule_fields(pool, fields)))


def update_rule(slug: str, rule_id: int, fields: Mapping[str, Any]) -> AffinityRule:
    with _validated(f"update rule {slug}/{rule_id}"):
        rule = get_rule(slug, rule_id, lock=True)
        return _apply(rule, _rule_fields(rule.pool, fields))


def delete_rule(slug: str, rule_id: int) -> None:
    with config_change(f"delete rule {slug}/{rule_id}"):
        get_rule(slug, rule_id, lock=True).delete()
