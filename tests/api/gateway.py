"""A live gateway for tests: the real ASGI app under uvicorn, in this test's event loop.

The runtime host is a fresh one installed as the process's host, started on the test database;
the app is `mcppool.asgi.application` itself (router, hot path, Django), served on a free port, so
tests speak real HTTP to it — body limits, SSE and keep-alive included.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import uvicorn
from asgiref.sync import sync_to_async
from django.db import connections

from balancing import host as host_module
from balancing.host import RuntimeHost
from servers import services
from servers.models import AffinityRule, ApiKey, ConfigState, Flip, Pool, Server
from tests.upstreams import procs


@dataclass
class Gateway:
    url: str
    host: RuntimeHost
    http: aiohttp.ClientSession
    keys: dict[str, str] = field(default_factory=dict)  # name -> secret

    def auth(self, key: str = "app") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[key]}"}

    async def get(self, path: str, key: str | None = "app") -> tuple[int, Any]:
        """GET `/api/v1<path>` with key `key` (None: no key); the status and the JSON body."""
        headers = self.auth(key) if key else {}
        async with self.http.get(f"{self.url}/api/v1{path}", headers=headers) as response:
            return response.status, orjson.loads(await response.read() or b"null")

    async def send(
        self, method: str, path: str, body: Any = None, key: str = "admin", raw: bytes = b""
    ) -> tuple[int, Any]:
        """A REST write with a JSON body (or `raw` bytes); the status and the JSON body."""
        data = raw or (orjson.dumps(body) if body is not None else b"")
        headers = {**self.auth(key), "Content-Type": "application/json"}
        url = f"{self.url}/api/v1{path}"
        async with self.http.request(method, url, data=data, headers=headers) as response:
            payload = await response.read()
            return response.status, orjson.loads(payload) if payload else None

    async def settle(self) -> None:
        """Apply every committed config change to the runtime now (instead of the next poll)."""
        await self.host.reload(if_newer_than=self.host.runtime.version)

    def _idle(self) -> bool:
        for live in self.host.runtime.pools.values():
            for sp in live.sessions.values():
                if sp.in_flight or sp.counts().get("busy", 0):
                    return False
            if any(ep.stats.in_flight for ep in live.endpoints.values()):
                return False
        return True

    async def sessions_idle(self, seconds: float = 5.0) -> bool:
        """Every borrowed call slot went back to its pool and nothing is in flight (waiting a
        little for the runtime's own background work, such as refreshing tool lists)."""
        for _ in range(int(seconds / 0.05)):
            if self._idle():
                return True
            await asyncio.sleep(0.05)
        return self._idle()


def db_state() -> tuple[Any, ...]:
    """A fingerprint of everything stored: equal before and after = nothing was written."""
    return (
        services.config_version(),
        ConfigState.objects.values_list("changed_at", flat=True).first(),
        list(Pool.objects.values_list("pk", "updated_at")),
        list(Server.objects.values_list("pk", "updated_at", "health", "ejections")),
        AffinityRule.objects.count(),
        list(ApiKey.objects.values_list("pk", "revoked_at")),
        Flip.objects.count(),
    )


def add_pool(
    slug: str, servers: list[tuple[str, str]], *, session_mode: str = "shared", **knobs: Any
) -> Pool:
    """A pool with Streamable HTTP servers `(name, url)`, each spoken to in `era` (a knob;
    default auto)."""
    era = knobs.pop("era", "auto")
    pool = services.save(Pool(name=slug.title(), slug=slug, session_mode=session_mode, **knobs))
    for name, url in servers:
        services.save(Server(pool=pool, name=name, transport="streamable_http", url=url, era=era))
    return pool


def add_stdio_server(pool: Pool, name: str, config: Any) -> Server:
    return services.save(
        Server(pool=pool, name=name, transport="stdio", command=config.command,
               args=list(config.args), cwd=config.cwd)
    )  # fmt: skip


def add_key(name: str, pools: list[str] = (), **options: Any) -> str:  # type: ignore[assignment]
    rows = list(Pool.objects.filter(slug__in=pools))
    _, secret = services.create_api_key(name, pools=rows, **options)
    return secret


@contextlib.asynccontextmanager
async def serve_gateway() -> AsyncIterator[Gateway]:
    """Start a host on the current DB config and serve the app; stop both afterwards."""
    from mcppool.asgi import application

    previous = host_module._host
    host = host_module._host = RuntimeHost()
    await host.start()
    port = procs.free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            application, host="127.0.0.1", port=port, lifespan="off", log_level="warning"
        )
    )
    task = asyncio.create_task(server._serve())
    http = aiohttp.ClientSession()
    try:
        for _ in range(200):
            if server.started:
                break
            await asyncio.sleep(0.025)
        yield Gateway(url=f"http://127.0.0.1:{port}", host=host, http=http)
    finally:
        await http.close()
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        await host.stop()
        host_module._host = previous
        await sync_to_async(connections.close_all)()
