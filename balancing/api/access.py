"""Who may do what: API-key authentication, pool permission and rate limits, for REST and MCP."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from balancing.engine.config import SessionMode
from balancing.engine.runtime import LivePool
from balancing.engine.sticky import SessionLimit
from balancing.errors_http import ApiError, rate_limited, session_limit
from balancing.host import RuntimeHost, get_host
from balancing.keys import KeyRecord, bearer_secret


async def started_host() -> RuntimeHost:
    """The process's host, started on first use (servers without ASGI lifespan)."""
    host = get_host()
    if not host.started:
        await host.start()
    return host


async def authenticate(host: RuntimeHost, authorization: bytes | str | None) -> KeyRecord:
    return await host.keys.authenticate(bearer_secret(authorization))


def pool_for(host: RuntimeHost, key: KeyRecord, slug: str) -> LivePool:
    """The live pool `slug`, if this key may use it. A key not allowed on a pool gets 403 whether
    or not the pool exists, so a restricted key cannot probe which pools there are."""
    if not key.may_use(slug):
        raise ApiError("pool_forbidden", f"this API key may not use pool {slug!r}")
    live = host.runtime.pools.get(slug)
    if live is None:
        raise ApiError("unknown_pool", f"no pool {slug!r}")
    return live


def require_admin(key: KeyRecord) -> None:
    if not key.is_admin:
        raise ApiError("admin_required", "this API key may not change the config")


@contextlib.asynccontextmanager
async def admit_session(host: RuntimeHost, key: KeyRecord, live: LivePool) -> AsyncIterator[None]:
    """Around a session-creating request (MCP `initialize`): it is charged to the key's and the
    pool's rate limits like a call, and in a sticky pool it holds a slot under the pool's caps
    while the session's upstream opens (over a cap: 429 with Retry-After)."""
    await charge(host, key, live)
    config = live.config
    if config.session_mode is not SessionMode.STICKY:
        yield
        return
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(
                host.client_sessions.slot(
                    config.slug,
                    key.id,
                    config.max_sticky_sessions,
                    config.max_sticky_sessions_per_key,
                )
            )
        except SessionLimit as full:
            host.runtime.metrics.rate_limited[config.slug] += 1
            raise session_limit(str(full)) from None
        yield


async def charge(host: RuntimeHost, key: KeyRecord, live: LivePool) -> None:
    """Take one token from the key's and the pool's buckets (only those that have a limit)."""
    if key.rate_limit_per_minute:
        # by prefix, not id: ids can be reused (a restored database), prefixes are random
        wait = await host.limiter.take("key", key.prefix, key.rate_limit_per_minute)
        if wait > 0:
            host.runtime.metrics.rate_limited[live.config.slug] += 1
            raise rate_limited(wait, "API key")
    per_pool = live.config.rate_limit_per_minute
    if per_pool:
        wait = await host.limiter.take("pool", live.config.slug, per_pool)
        if wait > 0:
            host.runtime.metrics.rate_limited[live.config.slug] += 1
            raise rate_limited(wait, "pool")
