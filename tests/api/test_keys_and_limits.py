"""The in-memory key cache and the token buckets, without a database or a server."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from balancing.errors_http import ApiError
from balancing.keys import LOOKUPS_PER_SECOND, KeyRecord, bearer_secret
from balancing.ratelimit import MemoryRateLimiter, RedisRateLimiter
from servers import keyformat
from tests.helpers.fakes import Clock
from tests.helpers.keys import a_wrong_secret, key_cache


def _record(secret: str, **fields: Any) -> KeyRecord:
    prefix = secret.split("_")[1]
    digest = keyformat.hash_secret(secret)
    return KeyRecord(id=1, name="k", prefix=prefix, hashed_secret=digest, pools=frozenset({"p"}),
                     **fields)  # fmt: skip


SECRET = "mcp_abcd1234_" + "s" * 43


def test_bearer_secret_parses_only_bearer_scheme() -> None:
    assert bearer_secret(b"Bearer abc") == "abc"
    assert bearer_secret("bearer  abc ") == "abc"
    assert bearer_secret(b"Basic abc") is None
    assert bearer_secret(None) is None


async def test_key_cache_authenticates_a_known_key_and_refuses_a_wrong_secret() -> None:
    cache = key_cache()
    cache.replace([_record(SECRET)])
    assert (await cache.authenticate(SECRET)).name == "k"
    with pytest.raises(ApiError) as caught:
        await cache.authenticate(a_wrong_secret(SECRET))
    assert caught.value.code == "invalid_api_key"


async def test_key_cache_expiry_needs_no_reload() -> None:
    clock = Clock()
    cache = key_cache(clock=clock)
    cache.replace([_record(SECRET, expires_at=clock.now + 10)])
    await cache.authenticate(SECRET)
    clock.now += 11
    with pytest.raises(ApiError) as caught:
        await cache.authenticate(SECRET)
    assert caught.value.code == "api_key_expired"


async def test_key_cache_misses_are_looked_up_once_then_remembered() -> None:
    lookups: list[str] = []

    async def lookup(prefix: str) -> KeyRecord | None:
        lookups.append(prefix)
        return None

    cache = key_cache(lookup, monotonic=Clock())
    for _ in range(5):
        with pytest.raises(ApiError):
            await cache.authenticate(SECRET)
    assert lookups == ["abcd1234"]


async def test_key_cache_flood_of_made_up_keys_is_capped_per_second() -> None:
    lookups: list[str] = []

    async def lookup(prefix: str) -> KeyRecord | None:
        lookups.append(prefix)
        return None

    cache = key_cache(lookup, monotonic=Clock())
    for _ in range(200):
        with pytest.raises(ApiError):
            await cache.authenticate(f"mcp_{uuid.uuid4().hex[:8]}_body")
    assert len(lookups) == LOOKUPS_PER_SECOND


async def test_key_cache_new_key_found_by_lookup_then_cached() -> None:
    found = _record(SECRET)
    calls = 0

    async def lookup(prefix: str) -> KeyRecord | None:
        nonlocal calls
        calls += 1
        return found

    cache = key_cache(lookup)
    cache.replace([])
    await cache.authenticate(SECRET)
    await cache.authenticate(SECRET)
    assert calls == 1


async def test_memory_bucket_allows_burst_then_refills_at_rate() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(clock)
    assert [await limiter.take("key", "1", 3) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = await limiter.take("key", "1", 3)
    assert wait == pytest.approx(20.0)  # 3 per minute: one token every 20 s
    clock.now += 20
    assert await limiter.take("key", "1", 3) == 0.0
    assert await limiter.take("key", "2", 3) == 0.0  # buckets are per identity
    assert await limiter.take("key", "1", 0) == 0.0  # 0 = unlimited


async def test_redis_bucket_is_shared_between_limiters(redis_url: str) -> None:
    prefix = f"mcppool-test:{uuid.uuid4().hex}"
    one, two = (
        RedisRateLimiter(redis_url, prefix=prefix),
        RedisRateLimiter(redis_url, prefix=prefix),
    )
    try:
        assert await one.take("key", "1", 2) == 0.0
        assert await two.take("key", "1", 2) == 0.0
        # the third call, through the other "process", finds the bucket empty
        assert await one.take("key", "1", 2) > 0
    finally:
        await one.close()
        await two.close()


async def test_redis_limiter_unreachable_lets_calls_through() -> None:
    limiter = RedisRateLimiter("redis://127.0.0.1:1/0")
    try:
        assert await limiter.take("key", "1", 1) == 0.0
    finally:
        await limiter.close()
