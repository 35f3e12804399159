"""Callers beyond API keys: token subjects, their tool policies, and what upstreams learn of them.

The host keeps one `AccessBook`, refilled with the config (`adapter.load_access`): the trusted
issuers (handed to the `TokenValidator`), the claim rules that turn a token's claims into grants,
the grants of API keys, and per-server identity forwarding with the per-user secrets it needs. No
database and no Django on the request path: like the key cache, all of it is in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from balancing.engine.runtime import HeadersFor
from balancing.engine.toolpolicy import (
    UNRESTRICTED,
    ClaimRule,
    Grant,
    PoolPolicy,
    ToolPolicy,
    claim_values,
    policy_for_claims,
)
from balancing.keys import KeyRecord
from balancing.oauth import IssuerConfig, TokenValidator, ValidToken


@dataclass(frozen=True, slots=True)
class TokenSubject(KeyRecord):
    """The caller behind a valid access token. It is a `KeyRecord` so that everything that takes
    a key's record takes it unchanged: pool permission (`may_use`), client sessions bound to the
    caller's `id` (stable per issuer and subject, so a refreshed token keeps its session),
    affinity rules on the caller's `name` (the subject), rate limits by `prefix`."""

    issuer: str = ""
    subject: str = ""
    claims: Mapping[str, Any] = field(default_factory=dict)
    policy: ToolPolicy = field(default_factory=ToolPolicy)

    def may_use(self, slug: str) -> bool:
        return self.policy.on(slug) is not None


def subject_id(issuer: str, subject: str) -> int:
    """A stable negative id (API key ids are positive) for an issuer's subject."""
    digest = hashlib.sha256(f"{issuer}\0{subject}".encode()).digest()
    return -(int.from_bytes(digest[:7], "big") + 1)


@dataclass(frozen=True, slots=True)
class ServerIdentity:
    """What a server is told about its caller (never the caller's token)."""

    identity_header: str = ""
    identity_claim: str = "sub"
    secret_header: str = ""


@dataclass(frozen=True)
class AccessSnapshot:
    issuers: tuple[IssuerConfig, ...] = ()
    claim_rules: tuple[ClaimRule, ...] = ()
    key_grants: Mapping[int, tuple[Grant, ...]] = field(default_factory=dict)
    identities: Mapping[int, ServerIdentity] = field(default_factory=dict)  # by server id
    # (server id, issuer or "" for an API key's name, subject) → plain secret
    user_secrets: Mapping[tuple[int, str, str], str] = field(default_factory=dict)


class AccessBook:
    def __init__(self, validator: TokenValidator) -> None:
        self.validator = validator
        self._snapshot = AccessSnapshot()
        self._key_policies: dict[int, ToolPolicy] = {}
        # The subject of each verdict the validator keeps, so a reused token maps its claims to
        # grants once (the verdict object itself is the key: `is` compared, bounded).
        self._subjects: dict[int, tuple[ValidToken, TokenSubject]] = {}

    def replace(self, snapshot: AccessSnapshot) -> None:
        self._snapshot = snapshot
        self._key_policies = {k: ToolPolicy(g) for k, g in snapshot.key_grants.items()}
        self._subjects.clear()
        self.validator.configure(snapshot.issuers)
        self.validator.prefetch()

    @property
    def has_issuers(self) -> bool:
        return bool(self._snapshot.issuers)

    def issuers_for(self, slug: str) -> list[str]:
        """Issuers whose tokens some rule lets onto pool `slug` (its metadata lists them)."""
        return list(
            dict.fromkeys(r.issuer for r in self._snapshot.claim_rules if r.grant.covers(slug))
        )

    def scopes_for(self, slug: str) -> list[str]:
        rules = self._snapshot.claim_rules
        return sorted(
            {
                r.value
                for r in rules
                if r.claim == "scope" and r.value != "*" and r.grant.covers(slug)
            }
        )

    def subject_for(self, token: ValidToken) -> TokenSubject:
        known = self._subjects.get(id(token))
        if known is not None and known[0] is token:
            return known[1]
        subject = self._new_subject(token)
        if len(self._subjects) >= 10_000:
            self._subjects.clear()
        self._subjects[id(token)] = (token, subject)
        return subject

    def _new_subject(self, token: ValidToken) -> TokenSubject:
        policy = policy_for_claims(token.issuer, token.claims, self._snapshot.claim_rules)
        ident = subject_id(token.issuer, token.subject)
        return TokenSubject(
            id=ident,
            name=token.subject,
            prefix=f"t{-ident:x}",
            hashed_secret="",
            pools=frozenset(),
            expires_at=token.expires_at,
            issuer=token.issuer,
            subject=token.subject,
            claims=token.claims,
            policy=policy,
        )

    def on_pool(self, caller: KeyRecord, slug: str) -> PoolPolicy:
        """The caller's tool policy on a pool it may use. A key without grants may use every
        tool of its pools, as before grants existed."""
        if isinstance(caller, TokenSubject):
            policy = caller.policy
        else:
            found = self._key_policies.get(caller.id)
            if found is None:
                return UNRESTRICTED
            policy = found
        return policy.on(slug) or PoolPolicy(allow=(), deny=(), tool_limits=())

    def upstream_headers(self, caller: KeyRecord) -> HeadersFor | None:
        """Per-server headers that tell an upstream who calls; None when no server wants any."""
        identities = self._snapshot.identities
        if not identities:
            return None
        secrets = self._snapshot.user_secrets
        if isinstance(caller, TokenSubject):
            issuer, subject, claims = caller.issuer, caller.subject, caller.claims
        else:
            issuer, subject, claims = "", caller.name, {"sub": caller.name}

        def headers_for(server_id: int) -> Mapping[str, str] | None:
            identity = identities.get(server_id)
            if identity is None:
                return None
            out: dict[str, str] = {}
            if identity.identity_header:
                values = _claim_text(claims, identity.identity_claim)
                if values is not None:
                    out[identity.identity_header] = values
            if identity.secret_header:
                secret = secrets.get((server_id, issuer, subject))
                if secret is not None:
                    out[identity.secret_header] = secret
            return out

        return headers_for


def _claim_text(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if not isinstance(value, str):
        values: Sequence[str] = sorted(claim_values(claims, name))
        value = " ".join(values) if values else None
    if value is None or any(ord(c) < 0x20 or c == "\x7f" for c in value):
        return None  # never a header a claim could split
    return value
