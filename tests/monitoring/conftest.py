"""Fixtures for health-monitoring tests: probers, real upstream processes, pools in the DB."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from monitoring import probes
from tests.upstreams import procs


@pytest.fixture(autouse=True)
def _no_probe_loop_left() -> Iterator[None]:
    """Tasks run eagerly here and start this process's probe loop: close its sessions (and stdio
    probe processes) after every test."""
    yield
    probes.stop_process_loop()


@pytest.fixture
async def prober() -> AsyncIterator[probes.Prober]:
    p = probes.Prober()
    yield p
    await p.close()


@pytest.fixture
def replica() -> Iterator[procs.UpstreamProcess]:
    """A faulty HTTP server of the test's own, for tests that break it."""
    server = procs.start_faulty_http(name="replica", json_response=True)
    yield server
    server.stop()
