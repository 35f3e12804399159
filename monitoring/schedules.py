"""The beat schedule, kept in the database (django-celery-beat) in step with the pools.

One periodic task per check interval in use, named `mcppool: checks every 5s`, runs
`run_interval_checks(interval)`: one round for every pool with that interval, all probes at once
in one task, with an expiry of one interval. One task per pool cost beat a send and the worker a
task message per pool per interval (at 100 pools, beat alone used 13 CPU s a minute and the worker
ran 17 % of the rounds); a task per interval costs the same for 1 pool or 1000. Two more run
`prune_history` daily and `purge_broker` every minute (the embedded broker's consumed messages).

Beat's `DatabaseScheduler` notices a changed periodic task on its next tick, so a pool's new
interval applies without restarting anything, and operators see (and may pause, per interval)
every schedule under "Periodic tasks" in the admin. The pools stay the source of truth for the
intervals: saving or deleting a pool adds the task for a new interval and removes the one nobody
uses any more; the `enabled` tick box is the operator's and is left alone.

Why signals: every pool write (admin, REST, `mcppool apply`) saves through the ORM in `servers`,
which may not import `monitoring`. `post_save` / `post_delete` on `Pool`, connected in
`MonitoringConfig.ready`, catch all of them and run in the same transaction as the pool's save, so
a rolled-back change never leaves a schedule behind. After every `migrate` (and by hand,
`setup_schedules`) the whole set is repaired.
"""

from __future__ import annotations

import json
from typing import Any

from django.apps import AppConfig
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.models.signals import post_delete, post_migrate, post_save
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from servers.models import Pool

CHECK_TASK = "monitoring.tasks.run_interval_checks"
POOL_CHECK_TASK = "monitoring.tasks.run_health_checks"  # one task per pool, before: removed
PRUNE_TASK = "monitoring.tasks.prune_history"
PRUNE_NAME = "mcppool: prune health history"
PRUNE_EXPIRES = 3600
PURGE_TASK = "monitoring.tasks.purge_broker"
PURGE_NAME = "mcppool: purge consumed broker messages"
PURGE_EVERY = 60


def check_task_name(seconds: float) -> str:
    return f"mcppool: checks every {seconds:g}s"


def interval(seconds: float) -> IntervalSchedule:
    """The interval row for `seconds` (whole seconds when it is whole, else microseconds,
    since django-celery-beat counts in integers)."""
    if seconds == int(seconds):
        every, period = int(seconds), IntervalSchedule.SECONDS
    else:
        every, period = round(seconds * 1_000_000), IntervalSchedule.MICROSECONDS
    schedule, _ = IntervalSchedule.objects.get_or_create(every=every, period=period)
    return schedule


def _kwargs(seconds: float) -> str:
    return json.dumps({"interval": float(seconds)})


def sync_interval(seconds: float) -> PeriodicTask:
    """Create or repair the round of every pool checked every `seconds`."""
    name = check_task_name(seconds)
    expire = max(1, round(seconds))
    with transaction.atomic():
        task = PeriodicTask.objects.filter(task=CHECK_TASK, kwargs=_kwargs(seconds)).first()
        PeriodicTask.objects.filter(name=name).exclude(pk=task.pk if task else None).delete()
        if task is None:
            task = PeriodicTask(task=CHECK_TASK, kwargs=_kwargs(seconds), enabled=True, name=name)
        wanted = interval(seconds)
        if task.pk is None or (task.name, task.interval_id, task.expire_seconds) != (
            name,
            wanted.pk,
            expire,
        ):
            task.name = name
            task.interval = wanted
            task.expire_seconds = expire
            task.description = f"Active health checks of every pool checked every {seconds:g} s"
            task.save()
    return task


def sync_checks() -> dict[str, int]:
    """One check task per interval in use; none for intervals nobody uses, none per pool."""
    intervals = sorted(set(Pool.objects.values_list("check_interval", flat=True)))
    with transaction.atomic():
        for seconds in intervals:
            sync_interval(seconds)
        wanted = {_kwargs(s) for s in intervals}
        stale = PeriodicTask.objects.filter(task=CHECK_TASK).exclude(kwargs__in=wanted)
        removed = stale.delete()[0] + PeriodicTask.objects.filter(task=POOL_CHECK_TASK).delete()[0]
    return {"intervals": len(intervals), "removed": removed}


def sync_housekeeping() -> None:
    daily, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.DAYS)
    PeriodicTask.objects.update_or_create(
        name=PRUNE_NAME,
        defaults={
            "task": PRUNE_TASK,
            "interval": daily,
            "expire_seconds": PRUNE_EXPIRES,
            "description": "Delete health checks older than MCPPOOL_HEALTH_RETENTION_DAYS",
        },
    )
    PeriodicTask.objects.update_or_create(
        name=PURGE_NAME,
        defaults={
            "task": PURGE_TASK,
            "interval": interval(PURGE_EVERY),
            "expire_seconds": PURGE_EVERY,
            "description": "Delete consumed messages of the embedded broker (keeps its file small)",
        },
    )


def sync_all() -> dict[str, int]:
    """Make the periodic tasks match the pools, plus the prune and the broker purge. Returns
    counts for the command's report."""
    with transaction.atomic():
        counts = sync_checks()
        sync_housekeeping()
    return {"pools": Pool.objects.count(), **counts}


def _pool_saved(sender: type[Pool], instance: Pool, raw: bool = False, **_: Any) -> None:
    if not raw:  # fixtures load rows as they are; `setup_schedules` follows up
        sync_checks()


def _pool_deleted(sender: type[Pool], instance: Pool, **_: Any) -> None:
    sync_checks()


def _migrated(sender: AppConfig, using: str = DEFAULT_DB_ALIAS, **_: Any) -> None:
    # After every `migrate` (docker-compose's migrate service, `make run`), so a database set up
    # without `setup_schedules` still gets the housekeeping and a schedule for every interval.
    tables = connections[using].introspection.table_names()
    if PeriodicTask._meta.db_table in tables and Pool._meta.db_table in tables:
        with transaction.atomic(using=using):
            sync_all()


def connect(app: AppConfig) -> None:
    """Keep schedules in step with pool writes and migrations (from `MonitoringConfig.ready`)."""
    post_save.connect(_pool_saved, sender=Pool, dispatch_uid="mcppool-schedule-pool-saved")
    post_delete.connect(_pool_deleted, sender=Pool, dispatch_uid="mcppool-schedule-pool-deleted")
    post_migrate.connect(_migrated, sender=app, dispatch_uid="mcppool-schedule-migrated")
