"""Who may do what: authentication (API keys, or access tokens of trusted issuers), pool and tool
permission, and rate limits, for REST and MCP."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from balancing.api.http import Scope
from balancing.api.resource import challenge, resource_url
from balancing.engine.config import SessionMode
from balancing.engine.runtime import HeadersFor, LivePool
from balancing.engine.sticky import SessionLimit
from balancing.engine.toolpolicy import UNRESTRICTED
from balancing.errors_http import ApiError, rate_limited, session_limit
from balancing.host import RuntimeHost, get_host
from balancing.identity import TokenSubject
from balancing.keys import KeyRecord, bearer_secret
from balancing.oauth import TokenRejected, looks_like_jwt


async def started_host() -> RuntimeHost:
    """The process's host, started on first use (servers without ASGI lifespan)."""
    host = get_host()
    if not host.started:
        await host.start()
    return host


async def authenticate(
    host: RuntimeHost,
    authorization: bytes | str | None,
    *,
    scope: Scope | None = None,
    slug: str = "",
) -> KeyRecord:
    """The caller: an API key's record, or (given the request's `scope` and the pool, whose
    resource URL is the token's audience) a `TokenSubject` for a valid access token. A 401
    carries the `WWW-Authenticate` challenge that points a client to the pool's metadata."""
    secret = bearer_secret(authorization)
    try:
        if secret is None or scope is None or not looks_like_jwt(secret):
            return await host.keys.authenticate(secret)
        if not host.access.has_issuers:
            raise ApiError("invalid_token", "this gateway trusts no token issuer")
        try:
            token = await host.access.validator.validate(secret, resource_url(scope, slug))
        except TokenRejected as exc:
            raise ApiError("invalid_token", str(exc)) from None
        return host.access.subject_for(token)
    except ApiError as error:
        if scope is None or error.status != 401:
            raise
        error_code = "invalid_token" if secret is not None else ""
        value = challenge(host, scope, slug, error_code, error.message if secret else "")
        raise ApiError(
            error.code, error.message, headers=((b"www-authenticate", value),), **error.details
        ) from None


def pool_for(host: RuntimeHost, key: KeyRecord, slug: str) -> LivePool:
    """The live pool `slug`, if this key may use it. A key not allowed on a pool gets 403 whether
    or not the pool exists, so a restricted key cannot probe which pools there are."""
    if not key.may_use(slug):
        who = (
            "no grant of this token covers"
            if isinstance(key, TokenSubject)
            else "this API key may not use"
        )
        raise ApiError("pool_forbidden", f"{who} pool {slug!r}")
    live = host.runtime.pools.get(slug)
    if live is None:
        raise ApiError("unknown_pool", f"no pool {slug!r}")
    return live


def still_allowed(host: RuntimeHost, key: KeyRecord, slug: str) -> bool:
    """Whether the caller of a long-lived stream may still use pool `slug`: an API key that was
    revoked, expired, removed or taken off the pool since (the config follows every change within
    a second), or an access token past its expiry, may not."""
    if isinstance(key, TokenSubject):
        current: KeyRecord | None = key
    else:
        current = host.keys.get(key.prefix)
    return (
        current is not None
        and not current.revoked
        and (current.expires_at is None or current.expires_at > time.time())
        and current.may_use(slug)
    )


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


async def allowed_tool(host: RuntimeHost, key: KeyRecord, live: LivePool, tool: str) -> None:
    """403 (`tool_forbidden`) for a tool outside the caller's policy on this pool; 429 when the
    caller's per-tool rate limit is spent."""
    slug = live.config.slug
    policy = host.access.on_pool(key, slug)
    if policy is UNRESTRICTED:  # a key without grants: every tool, no tool limit (the hot path)
        return
    if not policy.allows(tool):
        raise ApiError("tool_forbidden", f"Tool not allowed for this caller: {tool}")
    per_minute = policy.limit(tool)
    if per_minute:
        wait = await host.limiter.take("tool", f"{key.prefix}:{slug}:{tool}", per_minute)
        if wait > 0:
            host.runtime.metrics.rate_limited[slug] += 1
            raise rate_limited(wait, f"tool ({tool})")


def visible_tools(
    host: RuntimeHost, key: KeyRecord, slug: str, tools: Sequence[Mapping[str, Any]]
) -> list[Any]:
    """The tools of a listing this caller may call (a client sees only what it may call)."""
    return list(host.access.on_pool(key, slug).visible(tools))


def upstream_headers(host: RuntimeHost, key: KeyRecord) -> HeadersFor | None:
    """Headers that tell each upstream server who calls, as its operator configured."""
    return host.access.upstream_headers(key)
