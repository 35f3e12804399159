"""Sealing the 2026-07-28 multi-round-trip `requestState` around the replica that issued it.

A server that needs input answers `resultType: "input_required"` with an opaque `requestState`;
the client retries the same method (new id) with `inputResponses` and that state. Only the replica
that issued the state can continue it (the SDK's servers seal it with a key of their own), so the
retry must reach the same replica — through whichever web process the client's retry lands on.

The gateway hands the client `requestState` sealed with AES-256-GCM under a key derived once
(HKDF) from the deployment's secrets key: inside are the pool, the replica's server id and the
upstream's own state. Any web process can open it and route the retry; a state the client changed
fails authentication and is refused with the spec's error (-32602 "Invalid or expired
requestState"), and no shared store is needed. The pool is bound as associated data, so a state
from one pool is worthless in another.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from typing import Final, NamedTuple

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_INFO: Final = b"mcppool/request-state/v1"
_PREFIX: Final = "mcppool1."
_NONCE: Final = 12
INVALID_MESSAGE: Final = "Invalid or expired requestState"


class InvalidState(ValueError):
    """The client's `requestState` is not one this deployment sealed (or was altered)."""


class Opened(NamedTuple):
    server_id: int
    state: str | None  # the upstream's own requestState (None: it sent none)
    # the era bridge: a call the gateway holds for the client (`seal_held`), not a server's state
    held: str | None = None


class StateSealer:
    """Seal and open `requestState`s; `keys[0]` seals, every key opens (rotation)."""

    def __init__(self, keys: Sequence[str | bytes]) -> None:
        if not keys:
            raise ValueError("a StateSealer needs at least one key")
        self._aeads = [AESGCM(_derive(k.encode() if isinstance(k, str) else k)) for k in keys]

    def seal(self, pool: str, server_id: int, state: str | None) -> str:
        return self._seal(pool, [server_id, state])

    def _seal(self, pool: str, fields: list[object]) -> str:
        nonce = os.urandom(_NONCE)
        payload = orjson.dumps(fields)
        sealed = self._aeads[0].encrypt(nonce, payload, pool.encode())
        return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    def seal_held(self, pool: str, held: str) -> str:
        """A state naming a call the gateway itself holds (the era bridge), not a server's."""
        return self._seal(pool, [0, None, held])

    def open(self, pool: str, token: object) -> Opened:
        if not isinstance(token, str) or not token.startswith(_PREFIX):
            raise InvalidState("not sealed here")
        body = token[len(_PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except ValueError:
            raise InvalidState("malformed") from None
        nonce, sealed = raw[:_NONCE], raw[_NONCE:]
        for aead in self._aeads:
            try:
                payload = aead.decrypt(nonce, sealed, pool.encode())
            except (InvalidTag, ValueError):
                continue
            server_id, state, *held = orjson.loads(payload)
            return Opened(
                int(server_id),
                state if isinstance(state, str) else None,
                held[0] if held and isinstance(held[0], str) else None,
            )
        raise InvalidState("authentication failed")


def _derive(secret: bytes) -> bytes:
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=_INFO).derive(secret)
