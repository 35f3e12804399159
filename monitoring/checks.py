"""Active health checks: probe a pool's servers, keep the history, flip states by the rules.

The one place that turns probe results into rows: a `HealthCheck` per probe, the server's
counters and recorded facts (era, tools), and — when `monitoring.health.judge` says so — a state
change through `servers.services.flip_health` (compare-and-set, a `Flip` row, `health.changed`
after commit). Probing happens outside any transaction (it takes up to the check timeout); each
result is then written in a short transaction that locks the server's row, so two workers checking
the same server at once take turns and each judges the counters the other left.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from django.db import connections, transaction
from django.utils import timezone

from balancing import adapter
from balancing.engine.config import Health, PoolConfig, ServerConfig, Transport
from monitoring import health, metrics, probes
from monitoring.models import HealthCheck
from monitoring.probes import Prober, ProbeResult
from servers import events, services
from servers.choices import ServerState
from servers.models import Flip, Pool, RuntimeReport, Server

log = logging.getLogger(__name__)
T = TypeVar("T")

# Probes of a pool start spread over this share of its interval (design: 5 s ± 10 %), so its
# servers are not all hit in the same millisecond, round after round.
JITTER_SHARE = 0.1
# Time given to a round of probes on top of the check timeout before the caller stops waiting.
# Every probe ends within the check timeout (a stdio start goes on in the background), but on a
# starved CPU the loop runs late, and a round given up on loses every result it had: be generous.
ROUND_SLACK = 30.0
# A runtime's report on a stdio server stands for a probe while it is this many intervals old at
# most (runtimes report every half interval): older, the worker probes the server itself.
REPORT_FRESH_INTERVALS = 2.0


class ProbeRunner(Protocol):
    """Runs probe work on some event loop and waits for it (`probes.run_in_process_loop`, or
    `probes.run_once` for one-off checks that must leave nothing running)."""

    def __call__(self, work: Callable[[Prober], Awaitable[T]], timeout: float) -> T: ...


def run_pool_checks(
    pool_id: int, *, runner: ProbeRunner = probes.run_in_process_loop
) -> list[HealthCheck]:
    """Probe every enabled or draining server of a pool at once; one `HealthCheck` each.

    Probe sessions this process kept for the pool's other servers (disabled or removed since) are
    closed, and so are all of a deleted pool's.
    """
    pool = Pool.objects.filter(pk=pool_id).first()
    servers = list(pool.servers.exclude(state=ServerState.DISABLED)) if pool else []
    if pool is None or not servers:
        runner(lambda prober: prober.retain(pool_id, ()), timeout=30)
        return []
    return _check([(pool, servers)], runner, whole=True)


def run_interval_checks(
    interval: float, *, runner: ProbeRunner = probes.run_in_process_loop
) -> list[HealthCheck]:
    """One round for every pool checked every `interval` seconds: all their probes at once on
    this process's probe loop, the results written in batches (beat sends one task per interval,
    not one per pool: at 100 pools, 100 task messages every 5 s cost more than the probes)."""
    pools = {p.pk: p for p in Pool.objects.filter(check_interval=interval)}
    servers: dict[int, list[Server]] = {pk: [] for pk in pools}
    for server in Server.objects.filter(pool__in=pools).exclude(state=ServerState.DISABLED):
        servers[server.pool_id].append(server)
    rounds = [(pools[pk], found) for pk, found in servers.items() if found]
    empty = [pk for pk, found in servers.items() if not found]
    if empty:
        runner(lambda prober: _retain_none(prober, empty), timeout=30)
    return _check(rounds, runner, whole=True) if rounds else []


async def _retain_none(prober: Prober, pool_ids: list[int]) -> None:
    for pool_id in pool_ids:
        await prober.retain(pool_id, ())


def check_servers(
    servers: Iterable[Server], *, runner: ProbeRunner = probes.run_once
) -> list[HealthCheck]:
    """Check these servers now (the admin's "check now"): probe, record, judge, as a round does.

    By default on fresh sessions that are closed afterwards, so the web process keeps no probe
    sessions or stdio probe processes of its own.
    """
    by_pool: dict[int, list[Server]] = {}
    for server in servers:
        by_pool.setdefault(server.pool_id, []).append(server)
    rounds = [(pool, by_pool[pool.pk]) for pool in Pool.objects.filter(pk__in=by_pool)]
    return _check(rounds, runner, whole=False, jitter=False) if rounds else []


def reported(servers: Iterable[Server], interval: float) -> dict[int, ProbeResult]:
    """Fresh runtime reports on these stdio servers, as probe results (see
    `balancing.engine.liveness`): a server a web process runs needs no probe process."""
    stdio = [s.pk for s in servers if s.transport == Transport.STDIO]
    if not stdio:
        return {}
    since = timezone.now() - timedelta(seconds=interval * REPORT_FRESH_INTERVALS)
    rows = RuntimeReport.objects.filter(server_id__in=stdio, at__gte=since)
    return {
        row.server_id: ProbeResult(
            ok=row.ok,
            latency_ms=row.latency_ms,
            error=row.error if row.ok else f"runtime: {row.error}",
            era=row.era if row.ok else "",
            protocol_version=row.protocol_version if row.ok else "",
            starting=row.starting,
        )
        for row in rows
    }


def announce(done: Iterable[HealthCheck]) -> None:
    """Tell the dashboard pages open on each server's pool how its "check now" went."""
    for check in done:
        server = Server.objects.select_related("pool").get(pk=check.server_id)
        events.publish_health_checked(
            pool=server.pool.slug,
            server=server.name,
            ok=check.ok,
            error=check.error,
            latency_ms=check.latency_ms,
            at=check.at.isoformat(),
        )


Round = tuple[Pool, list[Server]]


def _check(
    rounds: list[Round], runner: ProbeRunner, *, whole: bool, jitter: bool = True
) -> list[HealthCheck]:
    """Probe the servers of these pools (the ones a runtime reports on excepted), all at once on
    one runner call, then record every result in batches."""
    plans = []
    for pool, servers in rounds:
        config = adapter.pool_config(pool, servers, [])
        known = reported(servers, pool.check_interval)
        probed = [s for s in servers if s.pk not in known]
        wanted = [
            (
                adapter.server_config(s),
                health.wants_tool_list(
                    Health(s.health), consecutive_ok=s.consecutive_ok, tools_hash=s.tools_hash
                ),
            )
            for s in probed
        ]
        plans.append((pool, servers, config, known, probed, wanted))

    async def probe_all(prober: Prober) -> list[list[ProbeResult]]:
        async def one_pool(
            pool: Pool, config: PoolConfig, known: dict[int, ProbeResult], probed: list[Server],
            wanted: list[tuple[ServerConfig, bool]],
        ) -> list[ProbeResult]:  # fmt: skip
            # A server a runtime reports on is not probed: end this process's copy of it too.
            await prober.forget(server_id for server_id in known if server_id in prober.kept)
            spread = pool.check_interval * JITTER_SHARE if jitter else 0.0
            results = await prober.probe_pool(config, wanted, jitter=spread, rng=random.Random())
            if whole:
                await prober.retain(pool.pk, [s.pk for s in probed])
            return results

        return list(
            await asyncio.gather(*(one_pool(p, c, k, pr, w) for p, _, c, k, pr, w in plans))
        )

    longest = max(p.check_interval * JITTER_SHARE + p.check_timeout for p, _ in rounds)
    probe_results = runner(probe_all, timeout=longest + ROUND_SLACK)
    done: list[tuple[Server, ProbeResult, PoolConfig]] = []
    for (pool, servers, config, known, probed, _), results in zip(
        plans, probe_results, strict=True
    ):
        found = dict(known)
        found.update(zip((s.pk for s in probed), results, strict=True))
        for server in servers:
            result = found[server.pk]
            if not result.starting:  # no verdict while a stdio server starts
                metrics.record_health_check(pool.slug, server.name, result.ok, result.seconds)
                done.append((server, result, config))
    checks = record_many([(s.pk, r, c) for s, r, c in done])
    for pool, _, _, _, _, _ in plans:
        if any(r.tools_count is not None for s, r, _ in done if s.pool_id == pool.pk):
            refresh_tools_differ(pool.pk)
    return checks


def record(server_id: int, result: ProbeResult, pool: PoolConfig) -> HealthCheck | None:
    """Write one probe result (see `record_many`); None when the server was deleted meanwhile."""
    found = record_many([(server_id, result, pool)])
    return found[0] if found else None


# Results written per transaction: one SELECT … FOR UPDATE, one INSERT of the checks and an
# UPDATE per set of new counter values per batch, instead of three statements and a commit per
# server.
BATCH = 250


def record_many(results: list[tuple[int, ProbeResult, PoolConfig]]) -> list[HealthCheck]:
    """Write probe results: the history rows, the counters, and state flips when due.

    The servers' rows are locked for the batch (in id order, so two workers never deadlock), so
    two workers checking one server take turns and each judges the counters the other left; a
    flip is still `services.flip_health`'s compare-and-set. Deleted servers are skipped.
    """
    written: list[HealthCheck] = []
    for start in range(0, len(results), BATCH):
        written += _record_batch(results[start : start + BATCH])
    return written


def _record_batch(batch: list[tuple[int, ProbeResult, PoolConfig]]) -> list[HealthCheck]:
    with transaction.atomic():
        rows = {
            s.pk: s
            for s in Server.objects.select_for_update()
            .filter(pk__in=[server_id for server_id, _, _ in batch])
            .order_by("pk")
        }
        now = timezone.now()
        checks: list[HealthCheck] = []
        steady: dict[tuple[tuple[str, object], ...], list[int]] = {}
        flips: list[tuple[Server, Health, health.Verdict, dict[str, object]]] = []
        for server_id, result, pool in batch:
            server = rows.get(server_id)
            if server is None:
                continue
            checks.append(_history_row(server, result, now))
            current = Health(server.health)
            changed_at = server.health_changed_at
            verdict = health.judge(
                current,
                consecutive_ok=server.consecutive_ok,
                consecutive_failed=server.consecutive_failed,
                ok=result.ok,
                fall=pool.fall,
                rise=pool.rise,
                since_change=(now - changed_at).total_seconds() if changed_at else float("inf"),
                slow_start_window=pool.slow_start_window,
                error=result.error,
            )
            fields: dict[str, object] = {
                "consecutive_ok": verdict.consecutive_ok,
                "consecutive_failed": verdict.consecutive_failed,
                "last_checked_at": now,
                "last_error": result.error,
            }
            if result.ok:
                fields.update(negotiated_era=result.era, protocol_version=result.protocol_version)
            if result.tools_count is not None:
                fields.update(tools_count=result.tools_count, tools_hash=result.tools_hash)
            if verdict.health is None:
                key = tuple(sorted(fields.items()))
                steady.setdefault(key, []).append(server.pk)
            else:
                flips.append((server, current, verdict, fields))
        HealthCheck.objects.bulk_create(checks)
        # Servers checked together mostly share their new values (the same time, counters, no
        # error): one `UPDATE … WHERE id IN (…)` per set of values. Django's `bulk_update` (a
        # CASE per field and row) took 40 % of the worker's CPU at 1000 servers.
        for key, ids in steady.items():
            Server.objects.filter(pk__in=ids).update(**dict(key))
        for server, current, verdict, fields in flips:
            assert verdict.health is not None  # noqa: S101  # narrows the type only
            services.flip_health(
                server.pk,
                expected=[current],
                new=verdict.health,
                reason=verdict.reason,
                source=Flip.Source.CHECK,
                **fields,
            )
    return checks


def _history_row(server: Server, result: ProbeResult, now: datetime) -> HealthCheck:
    return HealthCheck(
        server=server,
        at=now,
        ok=result.ok,
        latency_ms=result.latency_ms,
        error=result.error,
        era=result.era,
        protocol_version=result.protocol_version,
        tools_count=result.tools_count,
        tools_hash=result.tools_hash,
    )


def still_wanted(server_ids: set[int]) -> set[int]:
    """Which of these servers still exist and are not disabled (the probe loop's sweep, from a
    thread of its own: the connection is closed after, so none is left behind idle)."""
    try:
        alive = Server.objects.filter(pk__in=server_ids).exclude(state=ServerState.DISABLED)
        return set(alive.values_list("pk", flat=True))
    finally:
        connections.close_all()


def refresh_tools_differ(pool_id: int) -> None:
    """Flag the servers of a pool whose tool set differs from their siblings'."""
    servers = Server.objects.filter(pool_id=pool_id).exclude(state=ServerState.DISABLED)
    flagged = health.differing(dict(servers.values_list("pk", "tools_hash")))
    Server.objects.filter(pool_id=pool_id, tools_differ=True).exclude(pk__in=flagged).update(
        tools_differ=False
    )
    Server.objects.filter(pk__in=flagged, tools_differ=False).update(tools_differ=True)


def prune_history(days: int) -> int:
    """Delete health checks older than `days`, in batches (no long lock on a busy table).

    Flips are kept: there are few of them (hysteresis sees to that) and they are the history an
    operator asks about months later.
    """
    cutoff = timezone.now() - timedelta(days=days)
    deleted = 0
    while True:
        batch = list(HealthCheck.objects.filter(at__lt=cutoff).values_list("pk", flat=True)[:5000])
        if not batch:
            return deleted
        deleted += HealthCheck.objects.filter(pk__in=batch).delete()[0]
