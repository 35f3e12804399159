"""Every `mcppool_*` Prometheus metric, in one module (`docs/metrics.md` lists them).

Two sources:
- The web process's runtime keeps plain counters and bucket arrays (`RuntimeMetrics`, per-server
  `ServerStats`, session pools). `RuntimeCollector` turns them into metric families when Prometheus
  scrapes, so a tool call never touches the Prometheus client (no lock, no label lookup) and
  `balancing` never imports `monitoring`.
- Health checks run in Celery workers and report through `record_health_check`, ordinary
  `prometheus_client` metrics; `monitoring.worker_metrics` serves them from the worker.

Labels stay bounded: pool slug, server name, outcome, health/session state and strategy, all
drawn from the operator's config or a fixed vocabulary — never a request, client or key id.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import REGISTRY, Counter
from prometheus_client import Histogram as PromHistogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from balancing.engine.config import AdminState, Health
from balancing.engine.metrics import BUCKETS, Histogram

if TYPE_CHECKING:  # the runtime pulls in the transports and the mcp SDK: not for `mcppool` commands
    from balancing.engine.runtime import Runtime

PREFIX = "mcppool_"
HEALTH_STATES = tuple(h.value for h in Health)
SESSION_STATES = ("idle", "busy", "retiring", "opening")
_LE = [repr(float(b)) for b in BUCKETS] + ["+Inf"]  # as prometheus_client writes `le`

K = TypeVar("K")
V = TypeVar("V")


def _items(mapping: Mapping[K, V]) -> list[tuple[K, V]]:
    """A copy of a mapping the event loop may be changing while a scrape runs in a thread.

    `list(dict.items())` runs in C under the GIL, so it is consistent; the retry covers the
    rare resize of a defaultdict between Python-level steps.
    """
    for _ in range(5):
        try:
            return list(mapping.items())
        except RuntimeError:
            continue
    return []


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    counts = list(histogram.counts)
    cumulative, running = [], 0
    for le, count in zip(_LE, counts, strict=True):
        running += count
        cumulative.append((le, float(running)))
    return cumulative


def server_health(runtime_health: Health, state: AdminState, ejected: bool) -> str:
    """The health word shown for a server: local ejection wins over the stored health."""
    if state is AdminState.DISABLED:
        return "disabled"
    if ejected:
        return Health.EJECTED.value
    return runtime_health.value


class _Families:
    """One scrape's metric families (fresh each time: a collector must not keep samples)."""

    def __init__(self) -> None:
        ps = ["pool", "server"]
        self.calls = _counter(
            "calls", "Tool calls and requests forwarded, by outcome.", [*ps, "outcome"]
        )
        self.duration = _histogram("call_duration_seconds", "Time from pick to answer.", ps)
        self.acquire = _histogram("acquire_wait_seconds", "Wait for a session call slot.", ["pool"])
        self.waiting = _gauge("acquire_waiting", "Calls waiting for a session call slot.", ps)
        self.sessions = _gauge("sessions", "Upstream sessions by state.", [*ps, "state"])
        self.in_flight = _gauge("in_flight", "Calls in flight to the server.", ps)
        self.up = _gauge("server_up", "1 when the server takes new calls in this process.", ps)
        self.health = _gauge("server_health", "1 for the server's current health.", [*ps, "health"])
        self.weight = _gauge("server_weight", "Configured balancing weight.", ps)
        self.latency = _gauge("server_latency_seconds", "Peak-EWMA latency the balancer sees.", ps)
        self.error_ratio = _gauge("server_error_ratio", "Recent share of failed calls (EWMA).", ps)
        self.picks = _counter("picks", "Times the balancer picked the server.", [*ps, "strategy"])
        self.ejections = _counter("ejections", "Passive-health ejections (outlier detection).", ps)
        self.recoveries = _counter("recoveries", "Ejected servers back in service.", ps)
        self.reinit = _counter(
            "session_reinitializations", "Sessions re-opened after 404/exit.", ps
        )
        self.retries = _counter("retries", "Calls retried on another server.", ["pool"])
        self.refused = _counter("retries_refused", "Retries the retry budget refused.", ["pool"])
        self.panic = _counter("panic", "Picks made in panic mode (too few healthy).", ["pool"])
        self.pool_panic = _gauge(
            "pool_panic", "1 while the pool is below its panic threshold.", ["pool"]
        )
        self.rate_limited = _counter("rate_limited", "Requests refused by a rate limit.", ["pool"])
        self.listen_streams = _gauge(
            "listen_streams", "Open subscriptions/listen streams of clients.", ["pool"]
        )
        self.feeds = _gauge(
            "listen_feeds", "Upstream subscriptions kept for listen streams (0 or 1).", ps
        )
        self.version = _gauge("config_version", "Config version the runtime runs.", [])

    def all(self) -> list[Metric]:
        return [v for v in vars(self).values() if isinstance(v, Metric)]


def _counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, labels=labels)


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, labels=labels)


def _histogram(name: str, doc: str, labels: list[str]) -> HistogramMetricFamily:
    return HistogramMetricFamily(PREFIX + name, doc, labels=labels)


class RuntimeCollector(Collector):
    """Reads one process's runtime at scrape time and yields the `mcppool_*` families."""

    def __init__(self, runtime: Callable[[], Runtime | None]) -> None:
        self._runtime = runtime

    def describe(self) -> Iterable[Metric]:
        # Names only: registering must not read a runtime that may not exist yet.
        return _Families().all()

    def collect(self) -> Iterable[Metric]:
        families = _Families()
        runtime = self._runtime()
        if runtime is not None:
            _fill(runtime, families)
        return families.all()


def _fill(runtime: Runtime, f: _Families) -> None:
    m = runtime.metrics
    now = runtime.clock()
    for (pool, server, outcome), n in _items(m.calls):
        f.calls.add_metric([pool, server, outcome], n)
    for (pool, server), h in _items(m.durations):
        f.duration.add_metric([pool, server], _buckets(h), h.sum)
    for pool, h in _items(m.acquire_wait):
        f.acquire.add_metric([pool], _buckets(h), h.sum)
    for per_server, family in (
        (m.ejections, f.ejections),
        (m.recoveries, f.recoveries),
        (m.reinitialized, f.reinit),
    ):
        for (pool, server), n in _items(per_server):
            family.add_metric([pool, server], n)
    for per_pool, family in (
        (m.retries, f.retries),
        (m.retries_refused, f.refused),
        (m.panics, f.panic),
        (m.rate_limited, f.rate_limited),
    ):
        for pool, n in _items(per_pool):
            family.add_metric([pool], n)
    f.version.add_metric([], max(runtime.version, 0))
    for slug, live in _items(runtime.pools):
        panic = live.balancer.panic_state(list(live.endpoints.values()), now)
        f.pool_panic.add_metric([slug], 1 if panic.panic else 0)
        f.listen_streams.add_metric([slug], len(live.listeners))
        strategy = live.config.strategy.value
        for server_id, endpoint in _items(live.endpoints):
            config, stats = endpoint.config, endpoint.stats
            labels = [slug, config.name]
            f.in_flight.add_metric(labels, stats.in_flight)
            f.picks.add_metric([*labels, strategy], stats.picks)
            f.up.add_metric(labels, 1 if endpoint.available(now) else 0)
            current = server_health(config.health, config.state, endpoint.outlier.ejected(now))
            for state in HEALTH_STATES:
                f.health.add_metric([*labels, state], 1 if state == current else 0)
            f.weight.add_metric(labels, config.weight)
            feed = runtime.feeds.get(server_id)
            f.feeds.add_metric(labels, 1 if feed is not None and not feed.closed else 0)
            f.latency.add_metric(labels, stats.latency(now) if stats.sampled else math.nan)
            f.error_ratio.add_metric(labels, stats.error_rate(now))
            sessions = live.sessions.get(server_id)
            if sessions is not None:
                for state, n in sessions.counts().items():
                    f.sessions.add_metric([*labels, state], n)
                f.waiting.add_metric(labels, sessions.waiting)


def _current_runtime() -> Runtime | None:
    from balancing.host import get_host

    return get_host().runtime


def install() -> RuntimeCollector:
    """Register the runtime collector on the default registry (the one `/metrics` serves), once."""
    global _installed
    if _installed is None:
        _installed = RuntimeCollector(_current_runtime)
        REGISTRY.register(_installed)
    return _installed


_installed: RuntimeCollector | None = None


# ---- health checks (Celery workers) ---------------------------------------------------------
HEALTH_CHECKS = Counter(
    PREFIX + "health_checks",
    "Active health checks run, by outcome (ok / failed).",
    ["pool", "server", "outcome"],
)
HEALTH_CHECK_DURATION = PromHistogram(
    PREFIX + "health_check_duration_seconds",
    "Duration of an active health check probe.",
    ["pool", "server"],
    buckets=BUCKETS,
)


def record_health_check(pool: str, server: str, ok: bool, seconds: float) -> None:
    """Count one active check of `pool`/`server` (called by the health-check task)."""
    HEALTH_CHECKS.labels(pool, server, "ok" if ok else "failed").inc()
    HEALTH_CHECK_DURATION.labels(pool, server).observe(max(seconds, 0.0))


def metric_names() -> Iterator[str]:
    """Every `mcppool_*` family name this module defines (for docs and the dashboard test)."""
    for family in _Families().all():
        yield family.name
    yield HEALTH_CHECKS._name
    yield HEALTH_CHECK_DURATION._name
