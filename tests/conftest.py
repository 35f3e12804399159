"""Fixtures shared by every app's tests.

Tests that need Redis or PostgreSQL use the real servers (REDIS_URL / DATABASE_URL, as `.ci/run`
sets them). Locally, without them, those tests skip; in CI (CI=true) a missing server fails.
"""

from __future__ import annotations

import os

import pytest


def require_env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        if os.environ.get("CI"):
            pytest.fail(f"{name} must be set in CI: this test needs the real server")
        pytest.skip(f"{name} is not set")
    return value


@pytest.fixture
def redis_url() -> str:
    return require_env("REDIS_URL")
