"""Sealing the 2026-07-28 multi-round-trip `requestState` around the replica that issued it.

A server that needs input answers `resultType: "input_required"` with an opaque `requestState`;
the client retries the same method (new id) with `inputResponses` and that state. Only the replica
that issued the state can continue it (the SDK's servers seal it with a key of their own), so the
retry must reach the same replica — through whichever web process the client's retry lands on.

The gateway hands the client `requestState` sealed (`engine/sealing.py`: AES-256-GCM under a
key derived once from the deployment's secrets key): inside are the pool, the replica's server
id and the upstream's own state. Any web process can open it and route the retry; a state the
client changed fails authentication and is refused with the spec's error (-32602 "Invalid or
expired requestState"), and no shared store is needed. The pool is bound as associated data, so
a state from one pool is worthless in another.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, NamedTuple

import orjson

from balancing.engine.sealing import Sealer, Unsealed

_INFO: Final = b"mcppool/request-state/v1"
_PREFIX: Final = "mcppool1."
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
        self._sealer = Sealer(keys, purpose=_INFO, prefix=_PREFIX)

    def seal(self, pool: str, server_id: int, state: str | None) -> str:
        return self._sealer.seal(orjson.dumps([server_id, state]), pool.encode())

    def seal_held(self, pool: str, held: str) -> str:
        """A state naming a call the gateway itself holds (the era bridge), not a server's."""
        return self._sealer.seal(orjson.dumps([0, None, held]), pool.encode())

    def open(self, pool: str, token: object) -> Opened:
        try:
            payload = self._sealer.open(token, pool.encode())
        except Unsealed as exc:
            raise InvalidState(str(exc)) from None
        server_id, state, *held = orjson.loads(payload)
        return Opened(
            int(server_id),
            state if isinstance(state, str) else None,
            held[0] if held and isinstance(held[0], str) else None,
        )
