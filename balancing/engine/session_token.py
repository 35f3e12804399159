"""The handshake era's `Mcp-Session-Id`, sealed: everything another web process needs to
continue a client session that it did not create.

A client session lives in the web process that answered its `initialize` (its owner). Behind a
load balancer without affinity the client's next request lands anywhere, so the id handed to the
client is an AEAD token (`engine/sealing.py`, the secrets key, rotation included) holding the
pool, the bound server, the upstream's own session id, the negotiated version and capabilities,
the client's info and capabilities, the API key and the owner. Any process opens it, checks it
against the caller (same key, same pool) and, for an HTTP upstream, speaks on the upstream's
session directly — no store shared between processes, no new `initialize`. A stdio upstream is a
child of its owner, so only the owner can serve it.

The pool is associated data: an id from one pool opens in no other. A changed id, one sealed by
another deployment, or one sealed under a key since removed from `MCPPOOL_SECRETS_KEY` does not
open at all, and the client gets the spec's 404 for an unknown session.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from balancing.engine.sealing import Sealer, Unsealed

_PURPOSE: Final = b"mcppool/client-session/v1"
PREFIX: Final = "mcps1."


class ForeignSession(ValueError):
    """The id is not one this deployment sealed, or it was altered."""


@dataclass(frozen=True, slots=True)
class SessionToken:
    pool: str
    key_id: int
    owner: str  # the process that created the session (its `RuntimeHost.process_id`)
    protocol_version: str
    server_id: int = 0  # 0: a shared pool's session (no upstream session of its own)
    upstream_session_id: str | None = None  # HTTP: the upstream's `Mcp-Session-Id`
    server_capabilities: dict[str, Any] = field(default_factory=dict)
    client_info: dict[str, Any] = field(default_factory=dict)
    client_capabilities: dict[str, Any] = field(default_factory=dict)


class SessionSealer:
    """Seals `SessionToken`s into session ids and opens them again, on any process."""

    def __init__(self, keys: Sequence[str | bytes]) -> None:
        self._sealer = Sealer(keys, purpose=_PURPOSE, prefix=PREFIX)

    def seal(self, token: SessionToken) -> str:
        payload = orjson.dumps(
            [
                token.key_id,
                token.owner,
                token.protocol_version,
                token.server_id,
                token.upstream_session_id,
                token.server_capabilities,
                token.client_info,
                token.client_capabilities,
            ]
        )
        return self._sealer.seal(payload, token.pool.encode())

    def open(self, pool: str, session_id: str) -> SessionToken:
        try:
            payload = self._sealer.open(session_id, pool.encode())
        except Unsealed as exc:
            raise ForeignSession(str(exc)) from None
        try:
            key_id, owner, version, server_id, upstream_id, caps, info, client_caps = orjson.loads(
                payload
            )
            return SessionToken(
                pool=pool,
                key_id=int(key_id),
                owner=str(owner),
                protocol_version=str(version),
                server_id=int(server_id),
                upstream_session_id=upstream_id if isinstance(upstream_id, str) else None,
                server_capabilities=_dict(caps),
                client_info=_dict(info),
                client_capabilities=_dict(client_caps),
            )
        except (ValueError, TypeError):
            # Authentic but not this layout: a token of a future version; treat as unknown.
            raise ForeignSession("unreadable") from None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
