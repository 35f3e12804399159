"""Hosts the process's one `Runtime` inside the ASGI app and keeps it in step with the database.

Config and health changes reach the runtime two ways, and either is enough on its own:
- the `config.changed` / `health.changed` events on the channel layer group (Redis: every web
  process hears them within milliseconds);
- a poll of the config version row every `MCPPOOL_CONFIG_POLL_SECONDS` (1 s), which is how changes
  arrive in the embedded default, where the in-memory channel layer is per process, and which
  also covers an event lost while Redis was restarting.
A reload reads the whole config (four queries) and applies it as a diff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import close_old_connections, connections

from balancing import adapter
from balancing.engine.config import ServerConfig
from balancing.engine.outlier import Ejected, OutlierEvent
from balancing.engine.runtime import Runtime
from balancing.engine.sticky import SessionTable, close_sessions
from balancing.keys import KeyCache, KeyRecord
from balancing.ratelimit import RateLimiter, build_rate_limiter

log = logging.getLogger(__name__)
T = TypeVar("T")


class BackgroundTaskDied(RuntimeError):
    """A host loop (config poll, control events) ended with an error instead of running on."""


class RuntimeHost:
    def __init__(self) -> None:
        self.runtime = Runtime(on_outlier=self._on_outlier)
        self._tasks: list[asyncio.Task[None]] = []
        self._reload_lock = asyncio.Lock()
        self._started = False
        self._starting: asyncio.Future[None] | None = None
        self._pending_reports: set[asyncio.Task[Any]] = set()
        # The host's own database thread: its connection is reused between polls (CONN_MAX_AGE)
        # and closed on stop, and DB work never waits behind a busy request thread.
        self._db_thread: ThreadPoolExecutor | None = None
        # The app-facing endpoints' auth and rate limits; the key cache is refilled with the
        # config (creating or revoking a key bumps the version), so it is never staler than it.
        self.keys = KeyCache(
            self._find_key, parse=adapter.parse_api_key, verify=adapter.secret_matches
        )
        self.limiter: RateLimiter = build_rate_limiter(settings.REDIS_URL)
        # The MCP endpoint's client sessions (sticky ones own upstream sessions: closed on stop).
        self.client_sessions = SessionTable(clock=self.runtime.clock)
        # Set once the control-event listener has joined its group (tests wait on it).
        self.events_joined = asyncio.Event()

    async def _find_key(self, prefix: str) -> KeyRecord | None:
        return await self._db(adapter.find_api_key, prefix)

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        if self._db_thread is None:
            self._db_thread = ThreadPoolExecutor(1, thread_name_prefix="mcppool-host-db")

        def run() -> T:
            close_old_connections()  # drop a connection the database closed or that is too old
            return fn(*args)

        return await asyncio.get_running_loop().run_in_executor(self._db_thread, run)

    @property
    def started(self) -> bool:
        return self._started

    async def start(self) -> None:
        if self._started:
            return
        if self._starting is not None:
            await self._starting
            return
        self._starting = asyncio.get_running_loop().create_future()
        try:
            snapshot = await self._db(adapter.load_snapshot)
            self.keys.replace(await self._db(adapter.load_api_keys))
            await self.runtime.start(snapshot)
            self._tasks = [
                asyncio.create_task(self._poll_forever(), name="mcppool-config-poll"),
                asyncio.create_task(self._listen_forever(), name="mcppool-config-events"),
            ]
            for task in self._tasks:
                task.add_done_callback(self._background_done)
            self._started = True
            log.info("runtime started: %d pools, config v%d", len(snapshot.pools), snapshot.version)
            self._starting.set_result(None)
        except BaseException as exc:
            self._starting.set_exception(exc)
            self._starting = None
            raise

    def _background_done(self, task: asyncio.Task[None]) -> None:
        """A background loop ends only when cancelled; anything else is a bug, said at once."""
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s died", task.get_name(), exc_info=task.exception())

    async def stop(self) -> None:
        """Stop everything; then raise `BackgroundTaskDied` if a background loop had died
        (it would have left the runtime serving a config that no longer follows the database)."""
        for task in self._tasks:
            task.cancel()
        outcomes = await asyncio.gather(*self._tasks, return_exceptions=True)
        died = [
            (task.get_name(), outcome)
            for task, outcome in zip(self._tasks, outcomes, strict=True)
            if isinstance(outcome, Exception)
        ]
        self._tasks = []
        await close_sessions(self.client_sessions.drain())
        await self.runtime.close(grace=settings.MCPPOOL_SHUTDOWN_GRACE_SECONDS)
        with contextlib.suppress(Exception):
            await self.limiter.close()
        if self._pending_reports:
            await asyncio.gather(*self._pending_reports, return_exceptions=True)
        if self._db_thread is not None:
            await self._db(connections.close_all)
            self._db_thread.shutdown(wait=True)
            self._db_thread = None
        self._started = False
        self._starting = None
        if died:
            name, exc = died[0]
            raise BackgroundTaskDied(f"background task {name} died: {exc!r}") from exc

    async def reload(self, *, if_newer_than: int | None = None) -> bool:
        """Re-read the config and apply it; True when something was applied."""
        async with self._reload_lock:
            if if_newer_than is not None:
                version = await self._db(adapter.config_version)
                if version <= if_newer_than:
                    return False
            snapshot = await self._db(adapter.load_snapshot)
            if snapshot.version == self.runtime.version and if_newer_than is not None:
                return False
            keys = await self._db(adapter.load_api_keys)  # both read before either applies
            await self.runtime.apply(snapshot)
            self.keys.replace(keys)
            log.info("config v%d applied", snapshot.version)
            return True

    async def _poll_forever(self) -> None:
        interval = settings.MCPPOOL_CONFIG_POLL_SECONDS
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reload(if_newer_than=self.runtime.version)
            except Exception as exc:  # database away: keep serving on the last known config
                log.warning("config poll failed (serving the last known config): %s", exc)

    async def _listen_forever(self) -> None:
        if not settings.REDIS_URL:
            return  # in-memory layer: other processes cannot reach us; the poll does it
        layer = get_channel_layer()
        if layer is None:
            return
        channel = ""
        while True:
            try:
                if not channel:
                    # every real layer takes a prefix; the stubs' abstract base does not say so
                    channel = await layer.new_channel("mcppool-runtime.")  # type: ignore[call-arg]
                    await layer.group_add(adapter.CONTROL_GROUP, channel)
                    self.events_joined.set()
                message = await layer.receive(channel)
                if message.get("type") in ("config.changed", "health.changed"):
                    await self.reload(if_newer_than=self.runtime.version)
            except asyncio.CancelledError:
                if channel:
                    with contextlib.suppress(Exception):
                        await layer.group_discard(adapter.CONTROL_GROUP, channel)
                raise
            except Exception as exc:  # Redis restarting: retry; the poll covers the gap
                log.warning("control events unavailable (%s); retrying", exc)
                channel = ""
                await asyncio.sleep(1.0)

    def _on_outlier(self, slug: str, server: ServerConfig, event: OutlierEvent) -> None:
        ejected = isinstance(event, Ejected)
        task = asyncio.ensure_future(self._db(adapter.record_outlier, server.id, ejected))
        self._pending_reports.add(task)
        task.add_done_callback(self._report_done)

    def _report_done(self, task: asyncio.Task[Any]) -> None:
        self._pending_reports.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not record an ejection: %s", task.exception())


_host: RuntimeHost | None = None


def get_host() -> RuntimeHost:
    """The process's runtime host (created on first use)."""
    global _host
    if _host is None:
        _host = RuntimeHost()
    return _host


async def ensure_runtime() -> Runtime:
    """The started runtime; starts it on first use under servers without ASGI lifespan (daphne)."""
    host = get_host()
    if not host.started:
        await host.start()
    return host.runtime


class LifespanApp:
    """ASGI wrapper: starts the runtime on `lifespan.startup`, stops it on `lifespan.shutdown`.

    Servers without lifespan (daphne) get the runtime started on first use (`ensure_runtime`).
    After start-up everything allocated so far is moved out of the garbage collector's reach
    (`gc.freeze()`): full collections over the long-lived Django and SDK objects caused most p99
    spikes measured here (30–70 ms pauses).
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        import gc

        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if settings.MCPPOOL_RUNTIME_ENABLED:
                        await get_host().start()
                    gc.collect()
                    gc.freeze()
                except Exception as exc:
                    log.exception("runtime start failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await get_host().stop()
                except Exception:
                    log.exception("runtime stop found a problem")
                await send({"type": "lifespan.shutdown.complete"})
                return
