"""A runtime over fake upstream sessions and a hand-driven clock, for dashboard numbers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from balancing.engine.config import PoolConfig, ServerConfig, Transport
from balancing.engine.errors import UpstreamTimeout
from balancing.engine.runtime import Runtime

TOOLS = [{"name": "echo", "inputSchema": {"type": "object"}}, {"name": "fail", "inputSchema": {}}]


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeSession:
    """Answers `echo` at once, `fail` with a tool error, `hang` with a timeout; lists `tools`."""

    def __init__(self, tools: list[dict[str, Any]]) -> None:
        self.tools = tools

    @property
    def alive(self) -> bool:
        return True

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
            return {"tools": self.tools}
        name = (params or {}).get("name")
        if name == "hang":
            raise UpstreamTimeout("no answer in time")
        return {"content": [{"type": "text", "text": "ok"}], "isError": name == "fail"}

    async def ping(self, timeout: float) -> float:
        return 0.0

    async def close(self) -> None:
        return None


def fake_runtime(clock: Clock, tools: dict[str, list[dict[str, Any]]] | None = None) -> Runtime:
    """A runtime whose sessions are `FakeSession`s (server name → its tool list)."""

    async def open_session(pool: PoolConfig, server: ServerConfig) -> FakeSession:
        return FakeSession((tools or {}).get(server.name, TOOLS))

    return Runtime(clock=clock, open_session=open_session)


def server(server_id: int, name: str, **knobs: Any) -> ServerConfig:
    return ServerConfig(
        id=server_id, name=name, transport=Transport.STREAMABLE_HTTP, url="http://x/mcp", **knobs
    )
