"""Every write to the operator's config goes through here: admin, REST API and YAML apply alike.

Each function owns its transaction, validates with `full_clean()` (nothing is saved when that
fails), bumps the config version in the same transaction and publishes `config.changed` only once
the transaction has committed, so no runtime ever sees a change that was rolled back.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TypeVar

from django.db import transaction
from django.db.models import F, Model
from django.utils import timezone

from servers import events
from servers import secrets as upstream_secrets
from servers.choices import ServerState
from servers.models import AffinityRule, ApiKey, ConfigState, Flip, Pool, Server

ConfigModel = TypeVar("ConfigModel", Pool, Server, AffinityRule)

API_KEY_PREFIX_LEN = 8


@contextmanager
def config_change(reason: str) -> Iterator[None]:
    """A transaction that bumps the config version and announces it after commit."""
    with transaction.atomic():
        yield
        version = bump_config_version()
        transaction.on_commit(lambda: events.publish_config_changed(version, reason))


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


def save(obj: ConfigModel) -> ConfigModel:
    """Validate and save a pool, server or affinity rule."""
    with config_change(f"save {type(obj).__name__.lower()} {obj}"):
        obj.full_clean()
        obj.save()
    return obj


def delete(obj: Model) -> None:
    with config_change(f"delete {type(obj).__name__.lower()} {obj}"):
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


def hash_secret(secret: str) -> str:
    # API secrets are 256-bit random tokens, so a fast hash is enough (no dictionary to guess from).
    return hashlib.sha256(secret.encode()).hexdigest()


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


def parse_api_key(secret: str) -> str | None:
    """The lookup prefix of a presented secret, or None when it is not shaped like one of ours."""
    parts = secret.split("_", 2)
    if len(parts) != 3 or parts[0] != "mcp" or len(parts[1]) != API_KEY_PREFIX_LEN:
        return None
    return parts[1]


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
    The flip is recorded, the version bumped and `health.changed` published after commit.
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
        version = bump_config_version()
        transaction.on_commit(
            lambda: (
                events.publish_health_changed(server_id, new, reason),
                events.publish_config_changed(version, f"health {server_id} → {new}"),
            )
        )
    return True


def delete_all(objs: Iterable[Model]) -> int:
    """Delete several objects (an admin bulk delete) as one config change. Returns how many."""
    items = list(objs)
    with config_change(f"delete {len(items)} objects"):
        for obj in items:
            obj.delete()
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
