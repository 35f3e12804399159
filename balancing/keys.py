"""API-key authentication from memory: no database on the call path.

The cache holds every key (prefix → `KeyRecord`), loaded from the database when the runtime
starts and again on every config reload; creating or revoking a key bumps the config version, so
a revocation takes effect within the host's poll interval (1 s) — or milliseconds with Redis.
Expiry is checked against the clock on every request, so it needs no reload.

A prefix missing from the cache (a key created since the last reload) costs one database lookup
off the event loop. A miss is remembered briefly, and lookups are capped per second overall, so a
flood of made-up keys cannot turn into a flood of queries.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Final

from balancing.errors_http import ApiError

NEGATIVE_TTL: Final = 5.0
NEGATIVE_MAX: Final = 10_000
LOOKUPS_PER_SECOND: Final = 20


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What a request needs to know about its key."""

    id: int
    name: str
    prefix: str
    hashed_secret: str  # hex SHA-256 of the whole secret
    pools: frozenset[str]  # pool slugs
    all_pools: bool = False
    is_admin: bool = False
    rate_limit_per_minute: int = 0  # 0 = unlimited
    expires_at: float | None = None  # epoch seconds
    revoked: bool = False

    def may_use(self, slug: str) -> bool:
        return self.all_pools or slug in self.pools


Lookup = Callable[[str], Awaitable["KeyRecord | None"]]
# The key format is the servers app's (it creates the keys): the host passes its one parser
# (secret → lookup prefix or None) and its one hash check (secret, stored hash → bool).
Parse = Callable[[str], "str | None"]
Verify = Callable[[str, str], bool]


def bearer_secret(authorization: bytes | str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value."""
    if not authorization:
        return None
    if isinstance(authorization, bytes):
        try:
            authorization = authorization.decode("ascii")
        except UnicodeDecodeError:
            return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


class KeyCache:
    """Every API key, in memory; `authenticate` turns a presented secret into its record."""

    def __init__(
        self,
        lookup: Lookup | None = None,
        *,
        parse: Parse,
        verify: Verify,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._records: dict[str, KeyRecord] = {}
        self._lookup = lookup
        self._parse = parse
        self._verify = verify
        self._clock = clock
        self._monotonic = monotonic
        self._misses: dict[str, float] = {}  # prefix -> until (monotonic)
        self._window = 0.0
        self._lookups_in_window = 0
        self.loaded = False

    def replace(self, records: Iterable[KeyRecord]) -> None:
        """Swap in the whole key set (start and every config reload)."""
        self._records = {r.prefix: r for r in records}
        self._misses.clear()
        self.loaded = True

    def get(self, prefix: str) -> KeyRecord | None:
        return self._records.get(prefix)

    def prefix_of(self, secret: str) -> str | None:
        """The lookup prefix of a presented secret (None: not shaped like a key)."""
        return self._parse(secret)

    def __len__(self) -> int:
        return len(self._records)

    async def authenticate(self, secret: str | None) -> KeyRecord:
        """The record of a valid, unrevoked, unexpired key; `ApiError` (401) otherwise."""
        if not secret:
            raise ApiError("missing_api_key", "send your API key as 'Authorization: Bearer <key>'")
        prefix = self._parse(secret)
        if prefix is None:
            raise ApiError("invalid_api_key", "the API key is not valid")
        record = self._records.get(prefix)
        if record is None:
            record = await self._find(prefix)
        if record is None or not self._verify(secret, record.hashed_secret):
            raise ApiError("invalid_api_key", "the API key is not valid")
        if record.revoked:
            raise ApiError("api_key_revoked", "the API key has been revoked")
        if record.expires_at is not None and record.expires_at <= self._clock():
            raise ApiError("api_key_expired", "the API key has expired")
        return record

    async def _find(self, prefix: str) -> KeyRecord | None:
        """One database lookup for a prefix the cache does not know, within the caps."""
        if self._lookup is None:
            return None
        now = self._monotonic()
        until = self._misses.get(prefix)
        if until is not None and until > now:
            return None
        if now - self._window >= 1.0:
            self._window, self._lookups_in_window = now, 0
        if self._lookups_in_window >= LOOKUPS_PER_SECOND:
            return None  # over the cap: a real new key still arrives with the next reload
        self._lookups_in_window += 1
        record = await self._lookup(prefix)
        if record is None:
            if len(self._misses) >= NEGATIVE_MAX:
                self._misses.clear()
            self._misses[prefix] = now + NEGATIVE_TTL
        else:
            self._records[prefix] = record
        return record
