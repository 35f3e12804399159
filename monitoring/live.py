"""Live numbers for the dashboard, and the publisher that pushes them to open pages.

`Sampler` keeps a minute of once-a-second totals read from the runtime, so pages show rates and a
windowed p99 rather than totals since start. `pool_numbers` turns the runtime (or, when this
process runs none, the stored config) into plain per-pool / per-server numbers; the views render
them and the publisher sends them as JSON.

`Publisher` runs in the web process while at least one dashboard page is open (the consumer starts
it): every `interval` seconds, or soon after a `health.changed` event, it sends each pool's numbers
to that pool's group and a summary to the overview group. However busy a pool is, a page gets at
most one message per `min_gap` seconds: the rate depends on the clock, never on traffic.

Groups are named per process: each web process shows the numbers of its own runtime, and with
Redis a page must not receive every process's numbers interleaved (Grafana shows the sums).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import BaseChannelLayer, get_channel_layer
from django.conf import settings

from balancing.engine.balancer import PanicState, panic_state
from balancing.engine.config import AdminState, Health, PoolConfig, ServerConfig, pool_status
from balancing.engine.metrics import BUCKETS
from balancing.engine.runtime import LivePool, Runtime
from monitoring.metrics import server_health

log = logging.getLogger(__name__)

# Outcomes of `mcppool_calls_total` that are not errors: an answer, a tool's own error result
# (`isError`, the tool's answer as MCP defines it), and a caller that went away.
NOT_ERRORS = frozenset({"ok", "tool_error", "cancelled"})
RATE_WINDOW = 10.0  # calls/s over this many seconds: follows a change within a few updates
WINDOW = 60.0  # error rate, p99 and share of picks: enough calls to mean something
SAMPLE_EVERY = 0.5
PROCESS = uuid.uuid4().hex[:12]  # group names are per process (see the module docstring)
OVERVIEW = "overview"


def group_name(slug: str | None) -> str:
    """The channel-layer group of one pool's page (or of the overview when `slug` is None)."""
    return f"dashboard.{PROCESS}.{slug or OVERVIEW}"


# ---- sampling ---------------------------------------------------------------------------------
@dataclass(slots=True)
class Totals:
    """Counters of one (pool, server) since the runtime started; server "" = the whole pool."""

    calls: int = 0
    errors: int = 0
    picks: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))

    def add(self, other: Totals) -> None:
        self.calls += other.calls
        self.errors += other.errors
        self.picks += other.picks
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]

    def minus(self, older: Totals) -> Totals:
        # A server removed and added again starts from zero: never report a negative delta.
        return Totals(
            max(self.calls - older.calls, 0),
            max(self.errors - older.errors, 0),
            max(self.picks - older.picks, 0),
            [max(a - b, 0) for a, b in zip(self.buckets, older.buckets, strict=True)],
        )


Key = tuple[str, str]
Sample = tuple[float, dict[Key, Totals]]


def read_totals(runtime: Runtime) -> dict[Key, Totals]:
    """Every pool's and server's totals now (pool totals under server "")."""
    totals: dict[Key, Totals] = {}

    def at(key: Key) -> Totals:
        found = totals.get(key)
        if found is None:
            found = totals[key] = Totals()
        return found

    metrics = runtime.metrics
    for (slug, server, outcome), n in list(metrics.calls.items()):
        for key in ((slug, server), (slug, "")) if server else ((slug, ""),):
            t = at(key)
            t.calls += n
            if outcome not in NOT_ERRORS:
                t.errors += n
    for (slug, server), histogram in list(metrics.durations.items()):
        counts = list(histogram.counts)
        for key in ((slug, server), (slug, "")):
            t = at(key)
            t.buckets = [a + b for a, b in zip(t.buckets, counts, strict=True)]
    for slug, live in list(runtime.pools.items()):
        for endpoint in list(live.endpoints.values()):
            picks = endpoint.stats.picks
            at((slug, endpoint.config.name)).picks += picks
            at((slug, "")).picks += picks
    return totals


class Sampler:
    """The last minute of totals, one sample per `SAMPLE_EVERY` at most; thread-safe (views read
    it from request threads while the publisher writes it from the event loop)."""

    def __init__(self, keep: float = WINDOW + 5.0) -> None:
        self._keep = keep
        self._samples: deque[Sample] = deque()
        self._lock = threading.Lock()

    def record(self, runtime: Runtime, now: float) -> None:
        with self._lock:
            if self._samples and now - self._samples[-1][0] < SAMPLE_EVERY:
                return
        totals = read_totals(runtime)
        with self._lock:
            self._samples.append((now, totals))
            while self._samples and now - self._samples[0][0] > self._keep:
                self._samples.popleft()

    def delta(self, key: Key, now: float, seconds: float) -> tuple[Totals, float] | None:
        """What happened to `key` over about the last `seconds` (None: not enough history)."""
        with self._lock:
            if len(self._samples) < 2:
                return None
            newest_at, newest = self._samples[-1]
            older = next(
                (s for s in self._samples if now - s[0] <= seconds + SAMPLE_EVERY),
                self._samples[0],
            )
        older_at, old = older
        if newest_at - older_at <= 0:
            return None
        current = newest.get(key, Totals())
        return current.minus(old.get(key, Totals())), newest_at - older_at

    def clear(self) -> None:
        with self._lock:
            self._samples.clear()


SAMPLER = Sampler()


def p99_ms(buckets: list[int]) -> float | None:
    """Upper bound (ms) of the bucket holding the 99th percentile; None without calls."""
    total = sum(buckets)
    if not total:
        return None
    rank, running = 0.99 * total, 0
    for i, count in enumerate(buckets):
        running += count
        if running >= rank:
            return 1000.0 * (BUCKETS[i] if i < len(BUCKETS) else BUCKETS[-1])
    return 1000.0 * BUCKETS[-1]


# ---- numbers ----------------------------------------------------------------------------------
@dataclass(slots=True)
class ServerNumbers:
    id: int
    name: str
    state: str  # enabled / draining
    health: str  # unknown / up / down / ejected / recovering
    up: bool  # takes new calls here
    weight: int
    priority: int
    in_flight: int = 0
    latency_ms: float | None = None  # peak-EWMA, what the balancer sees
    p99_ms: float | None = None
    calls_per_s: float | None = None
    error_rate: float | None = None
    share: float | None = None  # of the pool's picks over the window
    ejections: int = 0
    sessions: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class PoolNumbers:
    slug: str
    name: str
    strategy: str
    healthy: int
    total: int
    in_flight: int = 0
    calls_per_s: float | None = None
    error_rate: float | None = None
    p99_ms: float | None = None
    live: bool = False  # False: this process runs no runtime for the pool (config only)
    panic: bool = False  # too few healthy servers: calls go to every enabled server
    panic_reason: str = ""
    servers: list[ServerNumbers] = field(default_factory=list)

    @property
    def status(self) -> str:
        """What the overview colours the row by: the REST API's pool status."""
        return pool_status(self.healthy, self.total).value

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status
        return data


def _rates(
    numbers: ServerNumbers | PoolNumbers, key: Key, sampler: Sampler, now: float
) -> Totals | None:
    recent = sampler.delta(key, now, RATE_WINDOW)
    if recent is not None:
        totals, seconds = recent
        numbers.calls_per_s = round(totals.calls / seconds, 2)
    window = sampler.delta(key, now, WINDOW)
    if window is None:
        return None
    totals, _ = window
    numbers.error_rate = round(totals.errors / totals.calls, 4) if totals.calls else 0.0
    numbers.p99_ms = p99_ms(totals.buckets)
    return totals


def _server_numbers(
    slug: str,
    server: ServerConfig,
    live: LivePool | None,
    runtime: Runtime | None,
    sampler: Sampler,
    now: float,
) -> tuple[ServerNumbers, Totals | None]:
    endpoint = live.endpoints.get(server.id) if live is not None else None
    if endpoint is None or runtime is None:
        up = server.state is AdminState.ENABLED and server.health is not Health.DOWN
        health = server_health(server.health, server.state, ejected=False)
        return ServerNumbers(
            server.id, server.name, server.state.value, health, up, server.weight, server.priority
        ), None
    stats = endpoint.stats
    numbers = ServerNumbers(
        server.id,
        server.name,
        server.state.value,
        server_health(server.health, server.state, endpoint.outlier.ejected(now)),
        endpoint.available(now),
        server.weight,
        server.priority,
        in_flight=stats.in_flight,
        latency_ms=round(stats.latency(now) * 1000.0, 2) if stats.measured(now) else None,
        ejections=runtime.metrics.ejections.get((slug, server.name), 0),
    )
    sessions = live.sessions.get(server.id) if live is not None else None
    if sessions is not None:
        numbers.sessions = sessions.counts()
    return numbers, _rates(numbers, (slug, server.name), sampler, now)


def pool_numbers(
    config: PoolConfig, runtime: Runtime | None, sampler: Sampler, now: float
) -> PoolNumbers:
    """Numbers of one pool: live from this process's runtime, or config-only without one."""
    live = runtime.pools.get(config.slug) if runtime is not None else None
    servers = [s for s in config.servers if s.state is not AdminState.DISABLED]
    pool = PoolNumbers(
        config.slug,
        config.name or config.slug,
        config.strategy.value,
        healthy=0,
        total=len(servers),
        live=live is not None,
    )
    picks: dict[str, int] = {}
    for server in sorted(servers, key=lambda s: (s.priority, s.name)):
        numbers, window = _server_numbers(config.slug, server, live, runtime, sampler, now)
        pool.servers.append(numbers)
        pool.healthy += numbers.up
        pool.in_flight += numbers.in_flight
        if window is not None:
            picks[server.name] = window.picks
    state = pool_panic(config, live, now)
    pool.panic, pool.panic_reason = state.panic, state.reason
    if live is not None:
        _rates(pool, (config.slug, ""), sampler, now)
    total_picks = sum(picks.values())
    for numbers in pool.servers:
        if numbers.name in picks:
            # No picks in the window: no share to speak of (rather than a misleading 0 %).
            numbers.share = round(picks[numbers.name] / total_picks, 4) if total_picks else None
    return pool


def pool_panic(config: PoolConfig, live: LivePool | None, now: float) -> PanicState:
    """The pool's panic as this process's balancer sees it (or, without a runtime, as the stored
    health says): one answer for the dashboard, the metric and the REST pool status."""
    if live is not None:
        return live.balancer.panic_state(list(live.endpoints.values()), now)
    return panic_state(
        config,
        (
            (s.priority, s.health not in (Health.DOWN, Health.EJECTED))
            for s in config.servers
            if s.state is AdminState.ENABLED
        ),
    )


def all_numbers(
    configs: Iterable[PoolConfig], runtime: Runtime | None, sampler: Sampler | None = None
) -> list[PoolNumbers]:
    """Every pool's numbers, sampling the runtime first (at most every `SAMPLE_EVERY`)."""
    sampler = SAMPLER if sampler is None else sampler
    now = runtime.clock() if runtime is not None else time.monotonic()
    if runtime is not None:
        sampler.record(runtime, now)
    pools = [pool_numbers(c, runtime, sampler, now) for c in configs]
    return sorted(pools, key=lambda p: p.name.lower())


def runtime_configs(runtime: Runtime) -> list[PoolConfig]:
    return [live.config for live in list(runtime.pools.values())]


# ---- publisher --------------------------------------------------------------------------------
RuntimeSource = Callable[[], Awaitable[Runtime | None]]
FlipSource = Callable[[str], Awaitable[list[dict[str, Any]]]]


async def host_runtime() -> Runtime | None:
    """This process's runtime, started if the ASGI server had no lifespan to start it (daphne)."""
    from balancing.host import ensure_runtime, get_host

    host = get_host()
    if not host.started and settings.MCPPOOL_RUNTIME_ENABLED:
        try:
            await ensure_runtime()
        except Exception as exc:
            log.warning("dashboard: runtime not started (%s)", exc)
    return host.runtime if host.started else None


def recent_flips_sync(slug: str, limit: int = 10) -> list[dict[str, Any]]:
    from servers.models import Flip

    rows = Flip.objects.filter(server__pool__slug=slug).select_related("server")[:limit]
    return [
        {
            "server": f.server.name,
            "at": f.at.isoformat(),
            "old": f.old,
            "new": f.new,
            "source": f.source,
            "reason": f.reason,
        }
        for f in rows
    ]


async def recent_flips(slug: str) -> list[dict[str, Any]]:
    flips: list[dict[str, Any]] = await database_sync_to_async(recent_flips_sync)(slug)
    return flips


def _health_signature(pool: PoolNumbers) -> tuple[tuple[int, str, bool], ...]:
    return tuple((s.id, s.health, s.up) for s in pool.servers)


class Publisher:
    """Pushes numbers to the dashboard groups of this process (see the module docstring)."""

    def __init__(
        self,
        layer: BaseChannelLayer,
        runtime: RuntimeSource,
        *,
        flips: FlipSource | None = None,
        interval: float = 1.0,
        min_gap: float = 0.5,
        sampler: Sampler | None = None,
    ) -> None:
        self.layer = layer
        self.interval = interval
        self.min_gap = min_gap
        self.sent = 0  # messages sent per group, for tests and curiosity
        self._runtime = runtime
        self._flips = flips or recent_flips
        self._sampler = SAMPLER if sampler is None else sampler
        self._nudged = asyncio.Event()
        self._signatures: dict[str, tuple[tuple[int, str, bool], ...]] = {}
        self._flip_cache: dict[str, list[dict[str, Any]]] = {}
        self._latest: dict[str, dict[str, Any]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._tasks = [
            asyncio.create_task(self._run(), name="dashboard-publisher"),
            asyncio.create_task(self._listen(), name="dashboard-events"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    @property
    def running(self) -> bool:
        return any(not t.done() for t in self._tasks)

    def nudge(self) -> None:
        """Publish soon (a health change): still no sooner than `min_gap` after the last one."""
        self._nudged.set()

    def latest(self, group: str) -> dict[str, Any] | None:
        """The last message sent to `group`, for a page that just connected."""
        return self._latest.get(group)

    async def _run(self) -> None:
        last = -float("inf")
        loop = asyncio.get_running_loop()
        while True:
            wait = self.min_gap - (loop.time() - last)
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                await self.publish()
            except Exception:
                log.exception("dashboard publish failed")
            last = loop.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._nudged.wait(), self.interval)
            self._nudged.clear()

    async def publish(self) -> None:
        """Build every pool's numbers once and send them to the groups."""
        runtime = await self._runtime()
        if runtime is None:
            return
        pools = all_numbers(runtime_configs(runtime), runtime, self._sampler)
        for pool in pools:
            signature = _health_signature(pool)
            if self._signatures.get(pool.slug) != signature:
                self._signatures[pool.slug] = signature
                with contextlib.suppress(Exception):  # no database: the list just stays as is
                    self._flip_cache[pool.slug] = await self._flips(pool.slug)
            data = {
                "type": "pool",
                "pool": pool.as_json(),
                "flips": self._flip_cache.get(pool.slug),
            }
            await self._send(group_name(pool.slug), data)
        await self._send(
            group_name(None), {"type": "overview", "pools": [p.as_json() for p in pools]}
        )
        self.sent += 1

    async def forward_check(self, event: dict[str, Any]) -> None:
        """A "check now" result: to the pages open on its pool, at once (not kept as `latest`:
        a page opened later reads the result from the history instead)."""
        fields = ("server", "ok", "error", "latency_ms", "at")
        data = {"type": "check", "pool": event.get("pool"), **{k: event.get(k) for k in fields}}
        slug = event.get("pool")
        if isinstance(slug, str):
            await self.layer.group_send(
                group_name(slug), {"type": "dashboard.update", "data": data}
            )

    async def _send(self, group: str, data: dict[str, Any]) -> None:
        self._latest[group] = data
        await self.layer.group_send(group, {"type": "dashboard.update", "data": data})

    async def _listen(self) -> None:
        """Health and config events (from this process, or every process with Redis) → nudge."""
        from servers.events import CONFIG_CHANGED, CONTROL_GROUP, HEALTH_CHANGED, HEALTH_CHECKED

        # every real layer takes a prefix; the stubs' abstract base does not say so
        channel = await self.layer.new_channel("dashboard-events.")  # type: ignore[call-arg]
        await self.layer.group_add(CONTROL_GROUP, channel)
        try:
            while True:
                try:
                    message = await self.layer.receive(channel)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # Redis restarting: the periodic push carries on
                    log.debug("dashboard events unavailable: %s", exc)
                    await asyncio.sleep(1.0)
                    continue
                if message.get("type") == HEALTH_CHECKED:
                    await self.forward_check(message)
                elif message.get("type") in (HEALTH_CHANGED, CONFIG_CHANGED):
                    # Let the runtime's own listener reload first, so the push shows the change;
                    # without waiting here, so a storm of events drains at once (a backlog would
                    # fill the channel and drop what comes next, "check now" results included).
                    asyncio.get_running_loop().call_later(0.2, self.nudge)
        finally:
            with contextlib.suppress(Exception):
                await self.layer.group_discard(CONTROL_GROUP, channel)


# One publisher per process, alive while at least one page is open.
_publisher: Publisher | None = None
_subscribers = 0
runtime_source: RuntimeSource = host_runtime
INTERVAL = 1.0  # a push a second: numbers move visibly, a page costs almost nothing
MIN_GAP = 0.5  # so at most two messages a second per page, health changes included


def subscribe() -> Publisher:
    """A page opened: the running publisher, started if none runs in this event loop."""
    global _publisher, _subscribers
    _subscribers += 1
    current = _publisher
    if current is None or not current.running or current.loop is not asyncio.get_running_loop():
        layer = get_channel_layer()
        if layer is None:
            raise RuntimeError("the dashboard needs a channel layer (CHANNEL_LAYERS)")
        current = _publisher = Publisher(layer, runtime_source, interval=INTERVAL, min_gap=MIN_GAP)
        current.start()
    return current


async def unsubscribe() -> None:
    """A page closed: the last one stops the publisher."""
    global _publisher, _subscribers
    _subscribers = max(_subscribers - 1, 0)
    if _subscribers == 0 and _publisher is not None:
        publisher, _publisher = _publisher, None
        await publisher.stop()
