"""Caching hints of the 2026-07-28 wire (`ttlMs`, `cacheScope`) and the gateway's result cache.

A list or read result says how long it stays fresh (`ttlMs`) and who may share it
(`cacheScope`: `public` — anyone; `private` — only the same authorization context). A merged answer
(the pool's tool list, built from every replica's) carries the strictest hints of the answers it
was built from, so a client never keeps a merged list longer than one of its parts allows. A
result without hints (a handshake-era server's) counts as `ttlMs: 0, cacheScope: private`:
nothing may be assumed.

`ResultCache` keeps results within their TTL and serves them without asking the upstream:
`public` ones for every caller of the pool, `private` ones only to the API key that fetched them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Final

import orjson

PUBLIC: Final = "public"
PRIVATE: Final = "private"
NO_HINTS: Final = (0, PRIVATE)
# Results kept at most (least recently used go first); results larger than this are not kept.
MAX_ENTRIES: Final = 1024
MAX_RESULT_BYTES: Final = 256 * 1024

Hints = tuple[int, str]


def hints_of(result: dict[str, Any]) -> Hints:
    """A result's own hints; missing or malformed ones mean "do not cache"."""
    ttl = result.get("ttlMs")
    scope = result.get("cacheScope")
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 0:
        return NO_HINTS
    return (ttl, scope) if scope in (PUBLIC, PRIVATE) else (ttl, PRIVATE)


def strictest(hints: Iterable[Hints]) -> Hints:
    """The shortest TTL and the narrowest scope of several answers (none: no hints)."""
    ttl: int | None = None
    scope = PUBLIC
    for each_ttl, each_scope in hints:
        ttl = each_ttl if ttl is None else min(ttl, each_ttl)
        if each_scope != PUBLIC:
            scope = PRIVATE
    return NO_HINTS if ttl is None else (ttl, scope)


class ResultCache:
    """Fresh results by (pool, method, params), `private` ones per API key."""

    def __init__(self, clock: Callable[[], float], max_entries: int = MAX_ENTRIES) -> None:
        self._clock = clock
        self._max = max_entries
        self._entries: OrderedDict[tuple[Any, ...], tuple[float, dict[str, Any]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _key(pool: str, method: str, params: dict[str, Any] | None, owner: Any) -> tuple[Any, ...]:
        if params and "_meta" in params:
            params = {k: v for k, v in params.items() if k != "_meta"}
        return (pool, method, orjson.dumps(params, option=orjson.OPT_SORT_KEYS), owner)

    def get(
        self, pool: str, method: str, params: dict[str, Any] | None, key_id: int
    ) -> dict[str, Any] | None:
        now = self._clock()
        for owner in (None, key_id):  # a public entry first, then this key's private one
            k = self._key(pool, method, params, owner)
            entry = self._entries.get(k)
            if entry is None:
                continue
            expires, result = entry
            if now >= expires:
                del self._entries[k]
                continue
            self._entries.move_to_end(k)
            return _aged(result, expires - now)
        return None

    def put(
        self, pool: str, method: str, params: dict[str, Any] | None, key_id: int, result: Any
    ) -> None:
        if not isinstance(result, dict) or result.get("resultType", "complete") != "complete":
            return
        ttl, scope = hints_of(result)
        if ttl <= 0 or len(orjson.dumps(result)) > MAX_RESULT_BYTES:
            return
        owner = None if scope == PUBLIC else key_id
        self._entries[self._key(pool, method, params, owner)] = (
            self._clock() + ttl / 1000.0,
            result,
        )
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


def _aged(result: dict[str, Any], remaining: float) -> dict[str, Any]:
    """A cached result tells the client only the freshness it has left."""
    return {**result, "ttlMs": max(0, int(remaining * 1000))}
