"""Fixtures shared by every app's tests.

Tests that need Redis or PostgreSQL use the real servers (REDIS_URL / DATABASE_URL, as `.ci/run`
sets them). Locally, without them, those tests skip; in CI (CI=true) a missing server fails.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any, NoReturn

import pytest

from tests.upstreams import procs


def missing_prerequisite(message: str) -> NoReturn:
    """Skip locally; in CI (CI=true) a missing prerequisite is a failure, never a skip (.ci/run
    installs or provides every one)."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must provide this: {message}")
    pytest.skip(message)


def require_env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        missing_prerequisite(f"{name} is not set (this test needs the real server)")
    return value


def require_postgres(why: str) -> None:
    """The test database must be PostgreSQL (CI's first pass); the SQLite pass skips these."""
    from django.db import connection

    if connection.vendor != "postgresql":
        missing_prerequisite(f"{why}: PostgreSQL only")


@pytest.fixture(scope="session")
def faulty_json() -> Iterator[procs.UpstreamProcess]:
    """The faulty test server over HTTP, answering `application/json` (for reads only: tests
    that break a server start their own)."""
    upstream = procs.start_faulty_http(name="faulty-json", json_response=True)
    yield upstream
    upstream.stop()


@pytest.fixture(scope="session")
def faulty_sse() -> Iterator[procs.UpstreamProcess]:
    """Answers over SSE, so notifications can flow during a call (JSON mode has no stream)."""
    upstream = procs.start_faulty_http(name="faulty-sse")
    yield upstream
    upstream.stop()


@pytest.fixture
def redis_url() -> str:
    return require_env("REDIS_URL")


@pytest.fixture
def redis_events(settings: Any, redis_url: str) -> Iterator[str]:
    """Config and health events over a real Redis channel layer (a prefix of this test's own),
    with the config poll too slow to matter: what reaches a runtime came by event."""
    from channels.layers import channel_layers

    settings.REDIS_URL = redis_url
    settings.MCPPOOL_CONFIG_POLL_SECONDS = 3600
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [redis_url], "prefix": f"mcppool-test-{uuid.uuid4().hex[:8]}"},
        }
    }
    channel_layers.backends.clear()
    yield redis_url
    channel_layers.backends.clear()
