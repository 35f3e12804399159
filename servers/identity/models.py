"""Who may call which tools: trusted token issuers, grants, and per-user upstream credentials.

A grant belongs either to an API key or to the tokens of a trusted issuer that carry a claim value
(`scope` holding `mcp:read`, `groups` holding `sre`...). It gives access to a pool (or every pool)
and, there, to the tools its allow globs match and its deny globs do not, with optional per-tool
rate limits. The policy language is `balancing.engine.toolpolicy`; docs/security.md shows examples.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator
from django.db import models

from servers.models import ApiKey, Pool, Server

_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_CLAIM_NAME = re.compile(r"^[A-Za-z0-9_:.@/-]+$")
# Headers an operator may not have the gateway set from a caller's identity.
_RESERVED_HEADERS = frozenset(
    {"authorization", "host", "content-length", "content-type", "mcp-session-id", "cookie"}
)
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
# Asymmetric JWS algorithms only (RFC 7518 / RFC 8037): `none` and the HMAC family can never be
# configured, so an issuer's public key can never be used as an HMAC secret.
ALLOWED_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)  # fmt: skip
DEFAULT_ALGORITHMS = ("RS256", "ES256")


def _default_algorithms() -> list[str]:
    return list(DEFAULT_ALGORITHMS)


def _default_allow() -> list[str]:
    return ["*"]


def _check_url(value: str, what: str) -> None:
    parts = urlsplit(value)
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOCAL_HOSTS):
        return
    raise ValidationError(f"{what} must use https (http only for localhost)")


def _check_globs(value: Any, field: str, errors: dict[str, str]) -> None:
    if not isinstance(value, list) or not all(isinstance(g, str) and g for g in value):
        errors[field] = 'Give a list of tool name globs, e.g. ["read_*", "search"].'


def _check_header(value: str, field: str, errors: dict[str, str]) -> None:
    if not value:
        return
    if not _HEADER_NAME.match(value):
        errors[field] = f"{value!r} is not a valid header name"
    elif value.lower() in _RESERVED_HEADERS:
        errors[field] = f"{value} cannot be set from a caller's identity"


class TrustedIssuer(models.Model):
    """An authorization server whose JWT access tokens the gateway accepts."""

    name = models.CharField(max_length=100, unique=True)
    issuer = models.CharField(
        max_length=500, unique=True, help_text="The exact `iss` of its tokens (its issuer URL)."
    )
    jwks_uri = models.CharField(
        max_length=500,
        blank=True,
        help_text="Its JWK set; blank: taken from the issuer's metadata (RFC 8414 / OpenID).",
    )
    algorithms = models.JSONField(
        default=_default_algorithms,
        help_text="Signature algorithms accepted, pinned: " + ", ".join(ALLOWED_ALGORITHMS),
    )
    subject_claim = models.CharField(
        max_length=100, default="sub", help_text="The claim that names the caller."
    )
    leeway_seconds = models.PositiveSmallIntegerField(
        default=30,
        validators=[MaxValueValidator(300)],
        help_text="Clock skew tolerated on exp/nbf.",
    )
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors: dict[str, str] = {}
        for field, what in (("issuer", "the issuer"), ("jwks_uri", "the JWKS URI")):
            value = getattr(self, field)
            if value:
                try:
                    _check_url(value, what)
                except ValidationError as exc:
                    errors[field] = exc.messages[0]
        algorithms = self.algorithms
        if (
            not isinstance(algorithms, list)
            or not algorithms
            or not all(a in ALLOWED_ALGORITHMS for a in algorithms)
        ):
            errors["algorithms"] = (
                f"Give a non-empty list of {', '.join(ALLOWED_ALGORITHMS)} "
                "(symmetric algorithms and 'none' are never accepted)."
            )
        if not _CLAIM_NAME.match(self.subject_claim or ""):
            errors["subject_claim"] = "Give a claim name, e.g. sub or email."
        if errors:
            raise ValidationError(errors)


class AccessGrant(models.Model):
    """Tools of a pool (or of every pool) for an API key, or for tokens with a claim value."""

    api_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.CASCADE, related_name="grants"
    )
    issuer = models.ForeignKey(
        TrustedIssuer, null=True, blank=True, on_delete=models.CASCADE, related_name="grants"
    )
    claim = models.CharField(
        max_length=100,
        blank=True,
        default="scope",
        help_text="Token claim to match (scope, groups, roles, a.b for nested); tokens only.",
    )
    value = models.CharField(
        max_length=200, blank=True, help_text="Value the claim must hold; * = any token."
    )
    pool = models.ForeignKey(
        Pool,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="grants",
        help_text="Blank: every pool.",
    )
    allow_tools = models.JSONField(default=_default_allow, help_text='Tool globs, e.g. ["*"].')
    deny_tools = models.JSONField(default=list, blank=True, help_text="Tool globs; deny wins.")
    tool_rate_limits = models.JSONField(
        default=dict,
        blank=True,
        help_text='Calls per minute per caller, by tool glob, e.g. {"search": 60}.',
    )

    class Meta:
        ordering = ("id",)
        constraints = [
            models.CheckConstraint(
                name="grant_for_key_or_issuer",
                condition=(
                    models.Q(api_key__isnull=False, issuer__isnull=True)
                    | models.Q(api_key__isnull=True, issuer__isnull=False)
                ),
            )
        ]

    def __str__(self) -> str:
        who = (
            f"key {self.api_key}" if self.api_key_id else f"{self.issuer} {self.claim}={self.value}"
        )
        return f"{who} → {self.pool.slug if self.pool is not None else 'every pool'}"

    def clean(self) -> None:
        errors: dict[str, str] = {}
        # The related objects, not their ids: a config file plans a grant of an issuer it is
        # creating in the same change, which has no id yet.
        for_token = self.issuer is not None
        if (self.api_key is not None) == for_token:
            errors["__all__"] = "A grant is for an API key or for an issuer's tokens, not both."
        if for_token and not _CLAIM_NAME.match(self.claim or ""):
            errors["claim"] = "Give the claim to match, e.g. scope or groups."
        if for_token and not self.value:
            errors["value"] = "Give the value the claim must hold (* for any token)."
        _check_globs(self.allow_tools, "allow_tools", errors)
        _check_globs(self.deny_tools, "deny_tools", errors)
        limits = self.tool_rate_limits
        if not isinstance(limits, dict) or not all(
            isinstance(k, str) and k and isinstance(v, int) and not isinstance(v, bool) and v > 0
            for k, v in limits.items()
        ):
            errors["tool_rate_limits"] = 'Give tool globs and positive calls per minute: {"x": 60}.'
        if errors:
            raise ValidationError(errors)


class ServerIdentity(models.Model):
    """How one upstream server learns who calls: a header with a claim of the caller's token (or
    its API key's name), and/or a header with the caller's own secret (`UserSecret`). Never the
    caller's token itself."""

    server = models.OneToOneField(Server, on_delete=models.CASCADE, related_name="identity")
    identity_header = models.CharField(max_length=100, blank=True, help_text="e.g. X-User")
    identity_claim = models.CharField(
        max_length=100, default="sub", help_text="Token claim sent in that header."
    )
    secret_header = models.CharField(
        max_length=100, blank=True, help_text="Header carrying the caller's own secret."
    )

    class Meta:
        verbose_name_plural = "server identities"

    def __str__(self) -> str:
        return f"identity for {self.server}"

    def clean(self) -> None:
        errors: dict[str, str] = {}
        _check_header(self.identity_header, "identity_header", errors)
        _check_header(self.secret_header, "secret_header", errors)
        if not self.identity_header and not self.secret_header:
            errors["__all__"] = "Set an identity header, a secret header, or both."
        if not _CLAIM_NAME.match(self.identity_claim or ""):
            errors["identity_claim"] = "Give a claim name, e.g. sub or email."
        if errors:
            raise ValidationError(errors)


class UserSecret(models.Model):
    """One caller's own credential for one server, Fernet-encrypted (`servers.secrets`)."""

    server = models.ForeignKey(Server, on_delete=models.CASCADE, related_name="user_secrets")
    issuer = models.ForeignKey(
        TrustedIssuer,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        help_text="Blank: the subject is an API key's name.",
    )
    subject = models.CharField(max_length=200, help_text="The caller's subject (token claim).")
    secret = models.TextField(editable=False)  # a Fernet token, never the plain value

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=("server", "issuer", "subject"), name="one_secret_per_user_and_server"
            )
        ]

    def __str__(self) -> str:
        return f"{self.subject} on {self.server}"


# What a config file may hold of this app (per-user secrets and API-key grants never: they are
# secrets, or belong to keys, which are never in the file either).
FileObject = TrustedIssuer | AccessGrant | ServerIdentity
