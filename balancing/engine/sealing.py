"""AEAD tokens under the deployment's secrets key: what a client carries so that any web process
can continue what another one started, with no shared store.

AES-256-GCM under a key derived once per purpose (HKDF-SHA256 with the purpose as `info`) from
each configured secret: a per-request cost of one AES-GCM pass (microseconds), never a KDF (a
100k-iteration KDF per token costs tens of milliseconds). `keys[0]` seals and every key opens, as
for stored secrets (`MCPPOOL_SECRETS_KEY`: a new key goes first, the old one stays until rotation
completes; a token sealed under a key that was removed no longer opens). The `bound_to` bytes
are associated data: a token bound to one pool is worthless in another.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_NONCE: Final = 12


class Unsealed(ValueError):
    """Not a token this deployment sealed for this purpose and binding (or one altered since)."""


class Sealer:
    """Seal and open tokens of one purpose; `keys[0]` seals, every key opens (rotation)."""

    def __init__(self, keys: Sequence[str | bytes], *, purpose: bytes, prefix: str) -> None:
        if not keys:
            raise ValueError("a Sealer needs at least one key")
        self._aeads = [
            AESGCM(_derive(k.encode() if isinstance(k, str) else k, purpose)) for k in keys
        ]
        self._prefix = prefix

    def seal(self, payload: bytes, bound_to: bytes) -> str:
        nonce = os.urandom(_NONCE)
        sealed = self._aeads[0].encrypt(nonce, payload, bound_to)
        return self._prefix + base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    def open(self, token: object, bound_to: bytes) -> bytes:
        if not isinstance(token, str) or not token.startswith(self._prefix):
            raise Unsealed("not sealed here")
        body = token[len(self._prefix) :]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except ValueError:
            raise Unsealed("malformed") from None
        nonce, sealed = raw[:_NONCE], raw[_NONCE:]
        for aead in self._aeads:
            try:
                return aead.decrypt(nonce, sealed, bound_to)
            except (InvalidTag, ValueError):
                continue
        raise Unsealed("authentication failed")


def _derive(secret: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=purpose).derive(secret)
