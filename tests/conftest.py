"""Fixtures shared by every app's tests.

Tests that need Redis or PostgreSQL use the real servers (REDIS_URL / DATABASE_URL, as `.ci/run`
sets them). Locally, without them, those tests skip; in CI (CI=true) a missing server fails.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


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


@pytest.fixture
def redis_url() -> str:
    return require_env("REDIS_URL")
