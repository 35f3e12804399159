"""Hosts the process's one `Runtime` inside the ASGI app and keeps it in step with the database.

Config and health changes reach the runtime two ways, and either is enough on its own:
- the `config.changed` / `health.changed` events on the channel layer group (Redis: every web
  process hears them within milliseconds);
- a poll every `MCPPOOL_CONFIG_POLL_SECONDS` (1 s) of the config version row and of the servers
  whose health flipped since the last poll, which is how changes arrive in the embedded default,
  where the in-memory channel layer is per process, and which also covers an event lost while
  Redis was restarting.
A config change reloads the whole config (four queries) and applies it as a diff; a health flip
is applied to its one server (`Runtime.apply_health`): at a thousand servers coming up, a reload
per flip kept the web process reloading every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import close_old_connections, connections

from balancing import adapter, observe
from balancing.engine import liveness
from balancing.engine.config import Health, ServerConfig
from balancing.engine.outlier import Ejected, OutlierEvent
from balancing.engine.request_state import StateSealer
from balancing.engine.runtime import Runtime
from balancing.engine.session_token import SessionSealer
from balancing.engine.sticky import SessionTable, close_sessions
from balancing.identity import AccessBook
from balancing.keys import KeyCache, KeyRecord
from balancing.oauth import TokenValidator
from balancing.ratelimit import RateLimiter, build_rate_limiter

log = logging.getLogger(__name__)
T = TypeVar("T")
# Messages between web processes about one client session (`mcpserver.crossing`).
CHANNEL_PREFIX = "mcppool-runtime."  # each web process's own channel on the layer
SESSION_ANSWER = "session.answer"
SESSION_STREAM = "session.stream"
SESSION_EVENTS = "session.events"
SESSION_LEVEL = "session.level"  # a shared pool's client set its log level (told to all)
# Log levels of shared-pool sessions heard from other processes, kept for sessions this process
# continues later (the most recent this many; a level is a few bytes).
SESSION_LEVELS_KEPT = 10_000
EXCHANGE = "session.exchange"  # a request for a session served by the process it is sent to
EXCHANGE_REPLY = "session.exchange.reply"  # its answer (ASGI messages), a heartbeat, or "gone"
# What serves an EXCHANGE (`mcpserver.remote` sets it; the host does not import the endpoint).
exchange_handler: Callable[[dict[str, Any]], Awaitable[None]] | None = None
# How far back each poll of health flips reaches before the previous one began.
HEALTH_OVERLAP = timedelta(seconds=5)


class BackgroundTaskDied(RuntimeError):
    """A host loop (config poll, control events) ended with an error instead of running on."""


class RuntimeHost:
    def __init__(self) -> None:
        secrets_keys = settings.MCPPOOL_SECRETS_KEYS or [settings.SECRET_KEY]
        self.runtime = Runtime(
            on_outlier=self._on_outlier,
            policy=settings.MCPPOOL_UPSTREAM_POLICY,
            sealer=StateSealer(secrets_keys),
        )
        # Client session ids any web process can open (`engine/session_token.py`), naming this
        # process as the owner of the sessions it creates.
        self.session_sealer = SessionSealer(secrets_keys)
        self.process_id = uuid.uuid4().hex
        self.session_levels: dict[str, str] = {}  # `_on_session_level`
        self._tasks: list[asyncio.Task[None]] = []
        self._reload_lock = asyncio.Lock()
        self._started = False
        self._starting: asyncio.Future[None] | None = None
        self._pending_reports: set[asyncio.Task[Any]] = set()
        self._panicking: set[str] = set()  # pools in panic at the last look (for the log)
        self._health_since = datetime.now(UTC)  # flips before this are in the loaded config
        # The host's own database thread: its connection is reused between polls (CONN_MAX_AGE)
        # and closed on stop, and DB work never waits behind a busy request thread.
        self._db_thread: ThreadPoolExecutor | None = None
        # The app-facing endpoints' auth and rate limits; the key cache is refilled with the
        # config (creating or revoking a key bumps the version), so it is never staler than it.
        self.keys = KeyCache(
            self._find_key, parse=adapter.parse_api_key, verify=adapter.secret_matches
        )
        self.limiter: RateLimiter = build_rate_limiter(settings.REDIS_URL)
        # Token issuers, tool grants and per-user upstream credentials (balancing.identity).
        self.access = AccessBook(
            TokenValidator(
                min_refetch=settings.MCPPOOL_JWKS_MIN_REFETCH_SECONDS,
                max_age=settings.MCPPOOL_JWKS_MAX_AGE_SECONDS,
            )
        )
        # The MCP endpoint's client sessions (sticky ones own upstream sessions: closed on stop).
        self.client_sessions = SessionTable(clock=self.runtime.clock)
        # Set once the control-event listener has joined its group (tests wait on it).
        self.events_joined = asyncio.Event()
        # This process's own channel on the layer (Redis only; "" until joined): where other web
        # processes send what belongs to a client session served here (`mcpserver.crossing`,
        # `mcpserver.remote`), and the exchanges with them waiting for a reply (id → handler).
        self.channel = ""
        self.exchanges: dict[str, Callable[[dict[str, Any]], None]] = {}

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
            self._health_since = await self._db(adapter.now)
            snapshot = await self._db(adapter.load_snapshot)
            self.keys.replace(await self._db(adapter.load_api_keys))
            self.runtime.observer = await self._db(observe.refresh)
            self.access.replace(await self._db(adapter.load_access))
            await self.runtime.start(snapshot)
            self._tasks = [
                asyncio.create_task(self._poll_forever(), name="mcppool-config-poll"),
                asyncio.create_task(self._listen_forever(), name="mcppool-config-events"),
                asyncio.create_task(self._report_forever(), name="mcppool-liveness"),
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
        # the MCP endpoint's calls held for 2026 clients (imported here: it imports this module)
        from balancing.mcpserver import bridge

        await bridge.close_all()
        await self.runtime.close(grace=settings.MCPPOOL_SHUTDOWN_GRACE_SECONDS)
        with contextlib.suppress(Exception):
            await self.limiter.close()
        await self.access.validator.close()
        if self._pending_reports:
            await asyncio.gather(*self._pending_reports, return_exceptions=True)
        if self._db_thread is not None:
            await self._db(observe.flush)
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
            with observe.span("mcppool.config.reload") as span:
                snapshot = await self._db(adapter.load_snapshot)
                if snapshot.version == self.runtime.version and if_newer_than is not None:
                    return False
                keys = await self._db(adapter.load_api_keys)  # all read before any applies
                access = await self._db(adapter.load_access)
                await self.runtime.apply(snapshot)
                self.keys.replace(keys)
                self.access.replace(access)
                self.runtime.observer = await self._db(observe.refresh)
                if span is not None:
                    span.set_attribute("mcppool.config.version", snapshot.version)
                self._end_orphaned_sessions()
            log.info("config v%d applied", snapshot.version)
            return True

    def _end_orphaned_sessions(self) -> None:
        """Client sessions of a deleted pool, or bound to a deleted or disabled server, end now:
        their upstream sessions (child processes over stdio) are closed in the background, not
        left for the idle sweep, which only runs when some request comes in."""
        serving = {
            slug: set(live.endpoints) for slug, live in self.runtime.pools.items()
        }  # the runtime keeps no endpoint for a disabled server
        orphans = self.client_sessions.orphans(serving)
        if orphans:
            log.info("ending %d client sessions of removed pools or servers", len(orphans))
            task = asyncio.ensure_future(close_sessions(orphans))
            self._pending_reports.add(task)
            task.add_done_callback(self._pending_reports.discard)

    async def _poll_forever(self) -> None:
        interval = settings.MCPPOOL_CONFIG_POLL_SECONDS
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reload(if_newer_than=self.runtime.version)
                await self.poll_health()
            except Exception as exc:  # database away: keep serving on the last known config
                log.warning("config poll failed (serving the last known config): %s", exc)

    async def poll_health(self) -> int:
        """Apply the health flips since the last poll, server by server (no config reload).

        The window starts a little before the last poll began, so a flip committed late with an
        earlier timestamp is not missed; applying one twice changes nothing."""
        started = await self._db(adapter.now)
        changes = await self._db(adapter.health_changes, self._health_since - HEALTH_OVERLAP)
        applied = sum(self.runtime.apply_health(*change) for change in changes)
        self._health_since = started
        return applied

    def _on_health_event(self, message: dict[str, Any]) -> bool:
        try:
            server_id, health = int(message["server_id"]), Health(message["health"])
            at = float(message.get("at") or 0.0)
        except (KeyError, TypeError, ValueError):
            return False
        return self.runtime.apply_health(server_id, health, at)

    async def _report_forever(self) -> None:
        """Report the stdio servers this runtime runs to the health checks (see
        `balancing.engine.liveness`): they then need no probe process of their own. Log each
        pool entering or leaving panic on the way."""
        while True:
            await asyncio.sleep(liveness.period(self.runtime))
            self.watch_panic()
            try:
                await self.report_liveness()
            except Exception as exc:  # database away: the checks probe on their own meanwhile
                log.warning("liveness report failed: %s", exc)

    def watch_panic(self) -> None:
        """One log line when a pool enters panic (with the reason) and one when it leaves."""
        now = self.runtime.clock()
        for slug, live in list(self.runtime.pools.items()):
            state = live.balancer.panic_state(list(live.endpoints.values()), now)
            if state.panic and slug not in self._panicking:
                log.warning("pool %s in panic: %s", slug, state.reason)
            elif not state.panic and slug in self._panicking:
                log.info(
                    "pool %s out of panic: %d of %d servers healthy",
                    slug,
                    state.healthy,
                    state.enabled,
                )
            if state.panic:
                self._panicking.add(slug)
            else:
                self._panicking.discard(slug)
        self._panicking &= set(self.runtime.pools)

    async def report_liveness(self) -> int:
        reports = await liveness.survey(self.runtime)
        return await self._db(adapter.record_liveness, reports) if reports else 0

    async def _listen_forever(self) -> None:
        if not settings.REDIS_URL:
            return  # in-memory layer: other processes cannot reach us; the poll does it
        layer = get_channel_layer()
        if layer is None:
            return
        # One channel name for the process's life: client session ids name it (the owner of a
        # stdio session), so after Redis comes back the same name is joined again.
        channel = ""
        joined = False
        while True:
            try:
                if not joined:
                    if not channel:
                        # every real layer takes a prefix; the stubs' base does not say so
                        channel = await layer.new_channel(CHANNEL_PREFIX)  # type: ignore[call-arg]
                    await layer.group_add(adapter.CONTROL_GROUP, channel)
                    joined = True
                    self.channel = channel
                    if self.events_joined.is_set():
                        # Rejoined after the broker was away: what was published meanwhile
                        # never reaches us, so catch up with the database now.
                        await self.reload(if_newer_than=self.runtime.version)
                        await self.poll_health()
                    self.events_joined.set()
                message = await layer.receive(channel)
                self._on_message(message)
                if message.get("type") == "config.changed":
                    await self.reload(if_newer_than=self.runtime.version)
            except asyncio.CancelledError:
                self.channel = ""
                if channel:
                    with contextlib.suppress(Exception):
                        await layer.group_discard(adapter.CONTROL_GROUP, channel)
                raise
            except Exception as exc:  # Redis restarting: retry; the poll covers the gap
                log.warning("control events unavailable (%s); retrying", exc)
                joined = False
                self.channel = ""
                await asyncio.sleep(1.0)

    def _on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "health.changed":
            self._on_health_event(message)
        elif kind == SESSION_ANSWER:
            self._on_session_answer(message)
        elif kind == SESSION_STREAM:
            self._on_session_stream(message)
        elif kind == SESSION_EVENTS:
            self._on_session_events(message)
        elif kind == SESSION_LEVEL:
            self._on_session_level(message)
        elif kind == EXCHANGE_REPLY:
            deliver = self.exchanges.get(str(message.get("id")))
            if deliver is not None:
                deliver(message)
        elif kind == EXCHANGE and exchange_handler is not None:
            task = asyncio.ensure_future(exchange_handler(message))
            self._pending_reports.add(task)
            task.add_done_callback(self._pending_reports.discard)

    def owns(self, owner: str) -> bool:
        """Whether a session id's owner names this process."""
        return owner in (self.process_id, self.channel) and bool(owner)

    # ---- a client session's traffic that landed on another web process -------------------

    async def send_to(self, channel: str, message: dict[str, Any]) -> bool:
        """Send to another web process's channel; False when the layer cannot (Redis away)."""
        layer = get_channel_layer() if self.channel else None
        if layer is None:
            return False
        try:
            await layer.send(channel, message)
        except Exception as exc:
            log.warning("cannot reach web process %s: %s", channel, exc)
            return False
        return True

    async def tell_all(self, message: dict[str, Any]) -> bool:
        """Tell every web process (the control group); False when the layer cannot."""
        layer = get_channel_layer() if self.channel else None
        if layer is None:
            return False
        try:
            await layer.group_send(adapter.CONTROL_GROUP, message)
        except Exception as exc:
            log.warning("cannot reach the other web processes: %s", exc)
            return False
        return True

    def _on_session_answer(self, message: dict[str, Any]) -> None:
        """A client's answer to a request this process relayed, posted to another process."""
        session = self.client_sessions.peek(str(message.get("session")))
        future = session.pending.pop(str(message.get("relay")), None) if session else None
        answer = message.get("message")
        if future is not None and not future.done() and isinstance(answer, dict):
            future.set_result(answer)

    def _on_session_stream(self, message: dict[str, Any]) -> None:
        """Another process now serves this session's GET stream: what the server sends for it
        goes there from now on, and what waited here for it goes there now."""
        channel = str(message.get("channel"))
        session = self.client_sessions.peek(str(message.get("session")))
        if channel == self.channel or session is None or not channel:
            return
        session.stream_at = channel
        waiting = []
        while session.events is not None and not session.events.empty():
            waiting.append(session.events.get_nowait())
        if waiting:
            self.pass_events(session.id, channel, waiting)

    def _on_session_level(self, message: dict[str, Any]) -> None:
        """A shared pool's client set its log level through some process: every copy of its
        session sends it with the calls from now on, and a copy made later starts with it."""
        session_id, level = str(message.get("session")), message.get("level")
        if not isinstance(level, str):
            return
        levels = self.session_levels
        levels.pop(session_id, None)
        levels[session_id] = level
        while len(levels) > SESSION_LEVELS_KEPT:
            del levels[next(iter(levels))]
        session = self.client_sessions.peek(session_id)
        if session is not None:
            session.log_level = level

    def pass_events(self, session_id: str, channel: str, messages: list[dict[str, Any]]) -> None:
        """Send messages for a client's GET stream to the process serving it (background)."""
        event = {"type": SESSION_EVENTS, "session": session_id, "messages": messages}
        task = asyncio.ensure_future(self.send_to(channel, event))
        self._pending_reports.add(task)
        task.add_done_callback(self._pending_reports.discard)

    def _on_session_events(self, message: dict[str, Any]) -> None:
        """Messages for a client's GET stream served here, handed over by another process."""
        session = self.client_sessions.peek(str(message.get("session")))
        messages = message.get("messages")
        if session is not None and session.events is not None and isinstance(messages, list):
            for event in messages:
                with contextlib.suppress(asyncio.QueueFull):
                    session.events.put_nowait(event)

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
