"""The beat schedule, kept in the database (django-celery-beat) in step with the pools.

One periodic task per pool, named `mcppool: check <slug>`, runs `run_health_checks(pool_id)` every
`check_interval` seconds, with an expiry of one interval; one more runs `prune_history` daily.
Beat's `DatabaseScheduler` notices a changed periodic task on its next tick, so a pool's new
interval applies without restarting anything, and operators see (and may pause) every schedule
under "Periodic tasks" in the admin. The pool stays the source of truth for the interval: saving
the pool rewrites it; the `enabled` tick box is the operator's and is left alone.

Why signals: every pool write (admin, REST, `mcppool apply`) saves through the ORM in `servers`,
which may not import `monitoring`. `post_save` / `post_delete` on `Pool`, connected in
`MonitoringConfig.ready`, catch all of them and run in the same transaction as the pool's save, so
a rolled-back change never leaves a schedule behind. After every `migrate` (and by hand,
`setup_schedules`) the whole set is repaired: the daily prune, pools saved before this module
existed, tasks deleted by hand.
"""

from __future__ import annotations

import json
from typing import Any

from django.apps import AppConfig
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.models.signals import post_delete, post_migrate, post_save
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from servers.models import Pool

CHECK_TASK = "monitoring.tasks.run_health_checks"
PRUNE_TASK = "monitoring.tasks.prune_history"
PRUNE_NAME = "mcppool: prune health history"
PRUNE_EXPIRES = 3600


def check_task_name(slug: str) -> str:
    return f"mcppool: check {slug}"


def interval(seconds: float) -> IntervalSchedule:
    """The interval row for `seconds` (whole seconds when it is whole, else microseconds,
    since django-celery-beat counts in integers)."""
    if seconds == int(seconds):
        every, period = int(seconds), IntervalSchedule.SECONDS
    else:
        every, period = round(seconds * 1_000_000), IntervalSchedule.MICROSECONDS
    schedule, _ = IntervalSchedule.objects.get_or_create(every=every, period=period)
    return schedule


def _pool_kwargs(pool_id: int) -> str:
    return json.dumps({"pool_id": pool_id})


def sync_pool(pool: Pool) -> PeriodicTask:
    """Create or update the pool's check schedule (interval, expiry, name after a slug change)."""
    name = check_task_name(pool.slug)
    expire = max(1, round(pool.check_interval))
    with transaction.atomic():
        task = PeriodicTask.objects.filter(task=CHECK_TASK, kwargs=_pool_kwargs(pool.pk)).first()
        # A stale task holding the name (its pool gone, the slug reused) gives way.
        PeriodicTask.objects.filter(name=name).exclude(pk=task.pk if task else None).delete()
        if task is None:
            task = PeriodicTask(
                task=CHECK_TASK, kwargs=_pool_kwargs(pool.pk), enabled=True, name=name
            )
        wanted = interval(pool.check_interval)
        current = (task.name, task.interval_id, task.expire_seconds)
        if task.pk is None or current != (name, wanted.pk, expire):
            task.name = name
            task.interval = wanted
            task.expire_seconds = expire
            task.description = f"Active health checks of pool {pool.name}"
            task.save()
    return task


def remove_pool(pool_id: int) -> int:
    """Delete a pool's check schedule; returns how many tasks went."""
    deleted, _ = PeriodicTask.objects.filter(task=CHECK_TASK, kwargs=_pool_kwargs(pool_id)).delete()
    return int(deleted)


def sync_prune() -> PeriodicTask:
    daily, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.DAYS)
    task, _ = PeriodicTask.objects.update_or_create(
        name=PRUNE_NAME,
        defaults={
            "task": PRUNE_TASK,
            "interval": daily,
            "expire_seconds": PRUNE_EXPIRES,
            "description": "Delete health checks older than MCPPOOL_HEALTH_RETENTION_DAYS",
        },
    )
    return task


def sync_all() -> dict[str, int]:
    """Make the periodic tasks match the pools: one check task each, the daily prune, nothing
    for pools that are gone. Returns counts for the command's report."""
    pools = list(Pool.objects.all())
    with transaction.atomic():
        for pool in pools:
            sync_pool(pool)
        wanted = {_pool_kwargs(p.pk) for p in pools}
        stale = PeriodicTask.objects.filter(task=CHECK_TASK).exclude(kwargs__in=wanted)
        removed = stale.delete()[0]
        sync_prune()
    return {"pools": len(pools), "removed": removed}


def _pool_saved(sender: type[Pool], instance: Pool, raw: bool = False, **_: Any) -> None:
    if not raw:  # fixtures load rows as they are; `setup_schedules` follows up
        sync_pool(instance)


def _pool_deleted(sender: type[Pool], instance: Pool, **_: Any) -> None:
    remove_pool(instance.pk)


def _migrated(sender: AppConfig, using: str = DEFAULT_DB_ALIAS, **_: Any) -> None:
    # After every `migrate` (docker-compose's migrate service, `make run`), so a database set up
    # without `setup_schedules` still gets the prune and a schedule for every pool.
    tables = connections[using].introspection.table_names()
    if PeriodicTask._meta.db_table in tables and Pool._meta.db_table in tables:
        with transaction.atomic(using=using):
            sync_all()


def connect(app: AppConfig) -> None:
    """Keep schedules in step with pool writes and migrations (from `MonitoringConfig.ready`)."""
    post_save.connect(_pool_saved, sender=Pool, dispatch_uid="mcppool-schedule-pool-saved")
    post_delete.connect(_pool_deleted, sender=Pool, dispatch_uid="mcppool-schedule-pool-deleted")
    post_migrate.connect(_migrated, sender=app, dispatch_uid="mcppool-schedule-migrated")
