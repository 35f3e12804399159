"""Beat schedules follow the pools: created, retimed, renamed, removed, repaired."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.sql import emit_post_migrate_signal
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from monitoring import schedules
from servers import services
from servers.models import Pool
from tests.monitoring.conftest import make_pool

pytestmark = pytest.mark.django_db


def task_of(pool: Pool) -> PeriodicTask:
    return PeriodicTask.objects.get(
        task=schedules.CHECK_TASK, kwargs=json.dumps({"pool_id": pool.pk})
    )


def test_pool_saved_gets_a_check_schedule_with_its_interval_and_expiry() -> None:
    pool = make_pool("web", check_interval=5.0, check_timeout=2.0)

    task = task_of(pool)

    assert task.name == "mcppool: check web"
    assert task.enabled
    assert (task.interval.every, task.interval.period) == (5, IntervalSchedule.SECONDS)
    assert task.expire_seconds == 5  # a round not started within one interval is dropped


def test_pool_interval_change_retimes_its_schedule() -> None:
    pool = make_pool("web", check_interval=5.0, check_timeout=2.0)

    pool.check_interval = 2.5
    services.save(pool)

    interval = task_of(pool).interval
    assert (interval.every, interval.period) == (2_500_000, IntervalSchedule.MICROSECONDS)


def test_pool_slug_change_renames_its_schedule_and_keeps_it_paused() -> None:
    # given an operator paused the pool's checks in the beat admin
    pool = make_pool("web")
    PeriodicTask.objects.filter(pk=task_of(pool).pk).update(enabled=False)

    pool.slug = "www"
    services.save(pool)

    task = task_of(pool)
    assert task.name == "mcppool: check www"
    assert not task.enabled
    assert PeriodicTask.objects.filter(task=schedules.CHECK_TASK).count() == 1


def test_pool_deleted_loses_its_schedule() -> None:
    pool = make_pool("web")

    services.delete(pool)

    assert not PeriodicTask.objects.filter(task=schedules.CHECK_TASK).exists()


def test_pool_save_rolled_back_leaves_no_schedule() -> None:
    def doomed() -> None:
        with services.config_change("doomed"):
            Pool.objects.create(name="Doomed", slug="doomed")
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        doomed()

    assert not PeriodicTask.objects.filter(task=schedules.CHECK_TASK).exists()


def test_setup_schedules_repairs_missing_drops_stale_and_adds_the_prune() -> None:
    # given a pool whose task was deleted by hand and a task left from a deleted pool
    pool = make_pool("web")
    PeriodicTask.objects.filter(task=schedules.CHECK_TASK).delete()
    PeriodicTask.objects.create(
        name="mcppool: check gone", task=schedules.CHECK_TASK,
        kwargs=json.dumps({"pool_id": 999}), interval=schedules.interval(5),
    )  # fmt: skip
    out = StringIO()

    call_command("setup_schedules", stdout=out)
    call_command("setup_schedules", stdout=StringIO())  # idempotent

    names = set(PeriodicTask.objects.values_list("name", flat=True))
    assert names == {"mcppool: check web", schedules.PRUNE_NAME}
    assert task_of(pool).interval.every == 1
    prune = PeriodicTask.objects.get(name=schedules.PRUNE_NAME)
    assert (prune.task, prune.interval.period) == ("monitoring.tasks.prune_history", "days")
    assert "1 pool schedule(s) in place, 1 stale removed" in out.getvalue()


def test_migrate_schedules_the_daily_prune_and_every_pool() -> None:
    # given a pool whose schedule went missing (e.g. saved before monitoring existed)
    pool = make_pool("web")
    PeriodicTask.objects.all().delete()

    # when the database is migrated (docker-compose's migrate service, `make run`)
    emit_post_migrate_signal(verbosity=0, interactive=False, db="default")

    # then the prune and the pool's checks are scheduled
    assert PeriodicTask.objects.filter(name=schedules.PRUNE_NAME).count() == 1
    assert task_of(pool).name == "mcppool: check web"
