"""A short soak in the suite (`make soak` runs the full minute): clients calling tools through a
real mcppool process over REST and the MCP endpoint, across three replicas, with no failed call
and no descriptor or session left behind as the run goes on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench import soak

pytestmark = pytest.mark.upstream

CLIENTS = 16
SECONDS = 8.0
WARMUP = 3.0
# The gateway keeps one upstream connection per call it has had in flight at once on a replica, so
# its descriptors climb to a plateau as the balancer's spread moves (at most one per client per
# replica); a leak of one per call or per session would be thousands. Allow one client's worth.
FD_TOLERANCE = CLIENTS


@pytest.fixture(scope="module")
def stack() -> Iterator[soak.Stack]:
    with soak.running_stack() as running:
        yield running


async def test_soak_short_many_clients_no_errors_and_no_leaks(stack: soak.Stack) -> None:
    # given three replicas behind a real gateway
    # when 16 clients, half REST and half MCP, call tools for a while
    result = await soak.soak(stack, clients=CLIENTS, seconds=SECONDS, warmup=WARMUP)

    # then every call succeeded, on both routes
    assert result.errors == 0, result.error_kinds
    assert result.calls > 0
    # and the gateway holds no more descriptors or upstream sessions at the end than at the start
    assert result.growth["fds"] <= FD_TOLERANCE, result.samples
    assert result.growth["sessions"] <= 0, result.samples
    assert result.samples[-1].sessions > 0  # the metric was read, not just absent
