"""Writes to issuers, grants and per-user credentials: each one config change (version bump and
`config.changed` after commit), like every other config write (`servers.services`)."""

from __future__ import annotations

from typing import TypeVar

from django.core.exceptions import ValidationError

from servers import secrets, services
from servers.identity.models import (
    AccessGrant,
    ServerIdentity,
    TrustedIssuer,
    UserSecret,
)
from servers.models import Server

IdentityModel = TypeVar("IdentityModel", TrustedIssuer, AccessGrant, ServerIdentity)


def save(obj: IdentityModel) -> IdentityModel:
    with services.config_change(f"save {type(obj).__name__.lower()} {obj}"):
        obj.full_clean()
        obj.save()
    return obj


def delete(obj: TrustedIssuer | AccessGrant | ServerIdentity | UserSecret) -> None:
    with services.config_change(f"delete {type(obj).__name__.lower()} {obj}"):
        obj.delete()


def set_user_secret(
    server: Server, subject: str, value: str, *, issuer: TrustedIssuer | None = None
) -> UserSecret:
    """Store (encrypted) one caller's own secret for a server; replaces the one stored."""
    if not subject or not value:
        raise ValidationError("a user secret needs a subject and a value")
    if any(ord(c) < 0x20 for c in value):
        raise ValidationError("a secret sent as a header cannot hold control characters")
    with services.config_change(f"user secret of {subject} for {server}"):
        row = UserSecret.objects.filter(server=server, issuer=issuer, subject=subject).first()
        if row is None:
            row = UserSecret(server=server, issuer=issuer, subject=subject)
        row.secret = secrets.encrypt(value)
        row.full_clean(exclude=["secret"])
        row.save()
    return row


def rotate_user_secrets() -> int:
    """Re-encrypt every per-user secret with the first key (inside `rotate-secrets`' change);
    every one is read before any is written. Returns how many."""
    rows = list(UserSecret.objects.select_for_update())
    for row in rows:
        row.secret = secrets.rotate(row.secret, what=f"user secret of {row.subject!r}")
    for row in rows:
        row.save(update_fields=["secret"])
    return len(rows)
