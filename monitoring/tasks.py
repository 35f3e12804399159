"""Celery tasks of health monitoring: thin wrappers over `monitoring.checks`.

Beat sends `run_interval_checks` once per check interval in use (schedules in
`monitoring.schedules`), each round covering every pool with that interval, with an expiry of one
interval: a worker that fell behind drops stale rounds instead of working through a backlog of
checks nobody needs any more. `run_health_checks(pool_id)` checks one pool (by hand, scripts).
"""

from __future__ import annotations

from typing import Any

from celery import shared_task
from celery.signals import worker_init, worker_process_shutdown, worker_shutdown
from django.conf import settings

from monitoring import broker, checks, probes
from servers.choices import ServerState
from servers.models import Server

# Defaults for calls without their own expiry (beat passes the periodic task's `expire_seconds`).
CHECK_EXPIRES = 60
PRUNE_EXPIRES = 3600


@shared_task(name="monitoring.tasks.run_health_checks", expires=CHECK_EXPIRES)  # type: ignore[untyped-decorator]
def run_health_checks(pool_id: int) -> int:
    """Probe every server of one pool at once; returns how many were checked."""
    return len(checks.run_pool_checks(pool_id))


@shared_task(name="monitoring.tasks.run_interval_checks", expires=CHECK_EXPIRES)  # type: ignore[untyped-decorator]
def run_interval_checks(interval: float) -> int:
    """One round for every pool checked every `interval` seconds; returns how many were checked."""
    return len(checks.run_interval_checks(interval))


@shared_task(name="monitoring.tasks.purge_broker", expires=PRUNE_EXPIRES)  # type: ignore[untyped-decorator]
def purge_broker() -> int:
    """Delete consumed messages from the embedded SQLite broker; returns how many."""
    return broker.purge_consumed(settings.CELERY_BROKER_URL)


@shared_task(name="monitoring.tasks.check_server", expires=CHECK_EXPIRES)  # type: ignore[untyped-decorator]
def check_server(server_id: int) -> bool | None:
    """Check one server now; returns whether it passed (None: no such server)."""
    found = checks.check_servers(
        Server.objects.filter(pk=server_id), runner=probes.run_in_process_loop
    )
    return found[0].ok if found else None


@shared_task(name="monitoring.tasks.check_now", expires=CHECK_EXPIRES)  # type: ignore[untyped-decorator]
def check_now(server_ids: list[int]) -> int:
    """The admin's "check now", queued so the page never waits for a probe: check the servers,
    record the results like any check, and announce each to the dashboard pages open on them."""
    servers = Server.objects.filter(pk__in=server_ids).exclude(state=ServerState.DISABLED)
    done = checks.check_servers(servers, runner=probes.run_in_process_loop)
    checks.announce(done)
    return len(done)


@shared_task(name="monitoring.tasks.prune_history", expires=PRUNE_EXPIRES)  # type: ignore[untyped-decorator]
def prune_history() -> int:
    """Delete health checks older than `MCPPOOL_HEALTH_RETENTION_DAYS`; returns how many."""
    return checks.prune_history(settings.MCPPOOL_HEALTH_RETENTION_DAYS)


@worker_init.connect  # type: ignore[untyped-decorator]
def _sweep_removed_servers(**_: Any) -> None:
    # A deleted or disabled server's probe sessions end within a second in every worker process
    # (a deleted pool has no next round that would close them). Set before the pool forks, so
    # every child inherits it; not in eager mode (tests), whose rows other threads cannot see.
    probes.use_sweeper(checks.still_wanted)


@worker_process_shutdown.connect  # type: ignore[untyped-decorator]
@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _close_probe_sessions(**_: Any) -> None:
    # Kept probe sessions include stdio processes: end them with the worker, not after it.
    probes.stop_process_loop()
