"""Fake upstream sessions under a real `Runtime`, and a hand-driven clock: the engine's behaviour
(balancing, retries, passive health, dashboard numbers) without processes or sockets."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from balancing.engine.config import PoolConfig, ServerConfig, Transport
from balancing.engine.errors import UpstreamClosed, UpstreamTimeout
from balancing.engine.runtime import Runtime

TOOLS = [{"name": "echo", "inputSchema": {"type": "object"}}, {"name": "fail", "inputSchema": {}}]


class Clock:
    """A clock that moves only when the test sets `now`."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeServers:
    """What the fake servers of a runtime share: their tool lists, which of them are broken
    (every call fails after it was delivered, like a connection reset mid-call; listing tools
    still works), and the log of the calls each one received."""

    def __init__(
        self,
        tools: dict[str, list[dict[str, Any]]] | None = None,
        broken: set[str] | None = None,
    ) -> None:
        self.tools = tools or {}
        self.broken = broken if broken is not None else set()  # the test's own set: it may change
        self.calls: list[tuple[str, str]] = []  # (server, tool)

    def received(self, tool: str) -> list[str]:
        """The servers a call to `tool` reached, in order."""
        return [server for server, name in self.calls if name == tool]


class FakeSession:
    """One server's session: lists its tools; `tools/call` answers with the server's name, `fail`
    with a tool error, `hang` with a timeout; a broken server fails every request."""

    def __init__(self, server: str, servers: FakeServers) -> None:
        self.server = server
        self.servers = servers
        self.alive = True

    async def request(
        self,
        method: str,
        params: dict[str, Any] | None,
        *,
        timeout: float,
        on_message: Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        if method == "tools/list":
            return {"tools": self.servers.tools.get(self.server, TOOLS)}
        name = str((params or {}).get("name", ""))
        self.servers.calls.append((self.server, name))
        if self.server in self.servers.broken:
            raise UpstreamClosed("connection reset", server=self.server)
        if name == "hang":
            raise UpstreamTimeout("no answer in time", server=self.server)
        return {"content": [{"type": "text", "text": self.server}], "isError": name == "fail"}

    async def ping(self, timeout: float) -> float:
        return 0.0

    async def close(self) -> None:
        self.alive = False


def fake_runtime(
    clock: Clock,
    tools: dict[str, list[dict[str, Any]]] | None = None,
    *,
    servers: FakeServers | None = None,
    **options: Any,
) -> Runtime:
    """A runtime whose sessions are `FakeSession`s (`tools`: server name → its tool list)."""
    shared = servers or FakeServers(tools)

    async def open_session(pool: PoolConfig, server: ServerConfig) -> FakeSession:
        return FakeSession(server.name, shared)

    return Runtime(clock=clock, open_session=open_session, **options)


def server(server_id: int, name: str, **knobs: Any) -> ServerConfig:
    return ServerConfig(
        id=server_id, name=name, transport=Transport.STREAMABLE_HTTP, url="http://x/mcp", **knobs
    )
