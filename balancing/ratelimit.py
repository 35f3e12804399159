"""Token buckets per API key and per pool: `N` calls per minute, bursts of up to `N`.

In memory by default (each web process counts on its own). With `REDIS_URL` set the buckets live
in Redis, updated by one Lua script (atomic, and on Redis's clock, so processes agree) and shared
by every web process. Only a key or pool that *has* a limit costs that round trip; an unlimited
one never touches Redis, which keeps the design's rule that the hot path does not cross Redis for
the common case. If Redis is unreachable the limiter lets calls through (logged): a rate limit is
protection, and it should not turn a Redis outage into an API outage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

log = logging.getLogger(__name__)

# Buckets idle this long are full again and can be forgotten.
IDLE_SECONDS: Final = 120.0
SWEEP_EVERY: Final = 10_000


class RateLimiter(Protocol):
    async def take(self, scope: str, ident: str, per_minute: int) -> float:
        """Take one token; 0.0 when allowed, else the seconds until a token is free."""
        ...

    async def close(self) -> None: ...


class MemoryRateLimiter:
    """Buckets in this process's memory."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], list[float]] = {}  # -> [tokens, updated_at]
        self._takes = 0

    async def take(self, scope: str, ident: str, per_minute: int) -> float:
        return self.take_now(scope, ident, per_minute)

    def take_now(self, scope: str, ident: str, per_minute: int) -> float:
        if per_minute <= 0:
            return 0.0
        now = self._clock()
        rate = per_minute / 60.0
        key = (scope, ident)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [float(per_minute), now]
        else:
            bucket[0] = min(float(per_minute), bucket[0] + (now - bucket[1]) * rate)
            bucket[1] = now
        self._takes += 1
        if self._takes >= SWEEP_EVERY:
            self._sweep(now)
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return 0.0
        return (1.0 - bucket[0]) / rate

    def _sweep(self, now: float) -> None:
        self._takes = 0
        for key in [k for k, b in self._buckets.items() if now - b[1] > IDLE_SECONDS]:
            del self._buckets[key]

    async def close(self) -> None:
        self._buckets.clear()


# KEYS[1] = bucket; ARGV = capacity, rate per second. Returns milliseconds to wait (0 = allowed).
_TAKE_LUA: Final = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil then
  tokens = capacity
else
  tokens = math.min(capacity, tokens + (now - at) * rate)
end
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) / rate * 1000)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(capacity / rate) + 60)
return wait
"""


class RedisRateLimiter:
    """Buckets in Redis, shared by every web process."""

    def __init__(self, url: str, *, prefix: str = "mcppool:rl") -> None:
        import redis.asyncio as redis

        self._redis: Any = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._script: Any = self._redis.register_script(_TAKE_LUA)
        self._prefix = prefix
        self._last_warning = 0.0

    async def take(self, scope: str, ident: str, per_minute: int) -> float:
        if per_minute <= 0:
            return 0.0
        try:
            waited_ms = await self._script(
                keys=[f"{self._prefix}:{scope}:{ident}"], args=[per_minute, per_minute / 60.0]
            )
        except Exception as exc:  # Redis away: fail open, loudly but not per call
            now = time.monotonic()
            if now - self._last_warning > 10.0:
                self._last_warning = now
                log.warning("rate limiter: Redis unavailable, letting calls through: %s", exc)
            return 0.0
        return int(waited_ms) / 1000.0

    async def close(self) -> None:
        await self._redis.aclose()


def build_rate_limiter(redis_url: str) -> RateLimiter:
    return RedisRateLimiter(redis_url) if redis_url else MemoryRateLimiter()
