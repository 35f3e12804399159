"""Fixtures for the conformance test: real web processes on the test database (the reliability
tests' own), and the suite's prerequisites."""

from __future__ import annotations

import os

import pytest

from tests.conformance import suite
from tests.reliability.conftest import (  # noqa: F401
    balanced,
    channel_prefix,
    postgres,
    start_webs,
    var_dir,
    webs,
)


@pytest.fixture
def conformance_suite() -> None:
    """The suite and node 22 are installed (`make node`): skipped without them, failed in CI."""
    if suite.installed():
        return
    message = "the conformance suite or node 22 is missing: run `make node`"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
