"""Fixtures for upstream-session tests: real upstream processes on free 127.0.0.1 ports.

The servers tests only read from (`faulty_json`, `faulty_sse`) are the session's, from
`tests/conftest.py`; tests that break a server (crash it, make it forget sessions) start their
own. Everything started here is stopped and reaped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol

import aiohttp
import pytest

from balancing.engine.config import ServerConfig
from balancing.engine.upstream import MessageHandler, UpstreamSession
from tests.conftest import missing_prerequisite
from tests.upstreams import procs

CLIENT_INFO = {"name": "mcppool-tests", "version": "0"}
OPEN_TIMEOUT = 60.0  # bound of a condition wait (the session opens as soon as it can)


def require_everything() -> None:
    """server-everything comes from npm (`make node`): skip without it locally, fail in CI."""
    if procs.everything_installed():
        return
    missing_prerequisite(
        f"npm server-everything is not installed in {procs.NODE_DIR} (run `make node`)"
    )


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=400, keepalive_timeout=30)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


class Connect(Protocol):
    async def __call__(
        self,
        config: ServerConfig,
        *,
        capabilities: dict[str, Any] | None = None,
        on_event: MessageHandler | None = None,
        listen: bool = True,
    ) -> UpstreamSession: ...


async def open_session(
    http: aiohttp.ClientSession,
    config: ServerConfig,
    *,
    capabilities: dict[str, Any] | None = None,
    on_event: MessageHandler | None = None,
    listen: bool = True,
) -> UpstreamSession:
    """A session as the runtime opens one, with this suite's client info and open timeout."""
    return await UpstreamSession.open(
        config,
        http=http,
        client_info=CLIENT_INFO,
        capabilities=capabilities or {},
        on_event=on_event,
        timeout=OPEN_TIMEOUT,
        listen=listen,
    )


@pytest.fixture
async def connect(http: aiohttp.ClientSession) -> AsyncIterator[Connect]:
    """`await connect(config)` opens a session that is closed when the test ends."""
    sessions: list[UpstreamSession] = []

    async def open_(
        config: ServerConfig,
        *,
        capabilities: dict[str, Any] | None = None,
        on_event: MessageHandler | None = None,
        listen: bool = True,
    ) -> UpstreamSession:
        session = await open_session(
            http, config, capabilities=capabilities, on_event=on_event, listen=listen
        )
        sessions.append(session)
        return session

    yield open_
    for session in sessions:
        await session.close()


@pytest.fixture
def faulty_private() -> Iterator[procs.UpstreamProcess]:
    """A server of the test's own, for tests that break it."""
    with procs.faulty_server("faulty-private") as server:
        yield server


@pytest.fixture(scope="module")
def everything_http() -> Iterator[procs.UpstreamProcess]:
    require_everything()
    server = procs.start_everything_http()
    yield server
    server.stop()
