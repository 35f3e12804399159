"""Beat schedules follow the pools: one check task per interval in use, retimed, removed,
repaired — never one per pool (at 100 pools that cost beat and the worker most of their CPU)."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.sql import emit_post_migrate_signal
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from audit import schedule as audit_schedule
from monitoring import schedules
from servers import services
from servers.models import Pool
from tests.monitoring.conftest import make_pool

pytestmark = pytest.mark.django_db


def check_tasks() -> dict[float, PeriodicTask]:
    return {
        json.loads(t.kwargs)["interval"]: t
        for t in PeriodicTask.objects.filter(task=schedules.CHECK_TASK)
    }


def test_pools_of_one_interval_share_one_check_task_with_that_interval_and_expiry() -> None:
    for slug in ("web", "api", "db"):
        make_pool(slug, check_interval=5.0, check_timeout=2.0)

    [task] = check_tasks().values()

    assert task.name == "mcppool: checks every 5s"
    assert task.enabled
    assert (task.interval.every, task.interval.period) == (5, IntervalSchedule.SECONDS)
    assert task.expire_seconds == 5  # a round not started within one interval is dropped


def test_pool_interval_change_adds_its_interval_and_drops_the_unused_one() -> None:
    pool = make_pool("web", check_interval=5.0, check_timeout=2.0)

    pool.check_interval = 2.5
    services.save(pool)

    [(seconds, task)] = check_tasks().items()
    assert seconds == 2.5
    assert (task.interval.every, task.interval.period) == (2_500_000, IntervalSchedule.MICROSECONDS)


def test_paused_interval_stays_paused_when_a_pool_is_saved() -> None:
    # given an operator paused the 1 s checks in the beat admin
    pool = make_pool("web")
    PeriodicTask.objects.filter(task=schedules.CHECK_TASK).update(enabled=False)

    pool.slug = "www"
    services.save(pool)
    make_pool("api")

    [task] = check_tasks().values()
    assert not task.enabled


def test_last_pool_of_an_interval_deleted_drops_its_task() -> None:
    web = make_pool("web", check_interval=1.0)
    api = make_pool("api", check_interval=5.0, check_timeout=2.0)

    services.delete(api)
    assert set(check_tasks()) == {1.0}
    services.delete(web)
    assert check_tasks() == {}


def test_pool_save_rolled_back_leaves_no_schedule() -> None:
    def doomed() -> None:
        with services.config_change("doomed"):
            Pool.objects.create(name="Doomed", slug="doomed")
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        doomed()

    assert not PeriodicTask.objects.filter(task=schedules.CHECK_TASK).exists()


def test_setup_schedules_repairs_missing_drops_stale_and_per_pool_tasks() -> None:
    # given the interval's task deleted by hand, a stale one, and a per-pool task of old
    make_pool("web")
    PeriodicTask.objects.filter(task=schedules.CHECK_TASK).delete()
    PeriodicTask.objects.create(
        name="mcppool: checks every 7s", task=schedules.CHECK_TASK,
        kwargs=json.dumps({"interval": 7.0}), interval=schedules.interval(7),
    )  # fmt: skip
    PeriodicTask.objects.create(
        name="mcppool: check web", task=schedules.POOL_CHECK_TASK,
        kwargs=json.dumps({"pool_id": 1}), interval=schedules.interval(5),
    )  # fmt: skip
    out = StringIO()

    call_command("setup_schedules", stdout=out)
    call_command("setup_schedules", stdout=StringIO())  # idempotent

    names = set(PeriodicTask.objects.values_list("name", flat=True))
    # (the audit trail's daily prune is kept by migrate, beside these)
    assert names == {
        "mcppool: checks every 1s",
        schedules.PRUNE_NAME,
        schedules.PURGE_NAME,
        audit_schedule.PRUNE_NAME,
    }
    prune = PeriodicTask.objects.get(name=schedules.PRUNE_NAME)
    assert (prune.task, prune.interval.period) == ("monitoring.tasks.prune_history", "days")
    purge = PeriodicTask.objects.get(name=schedules.PURGE_NAME)
    assert purge.task == "monitoring.tasks.purge_broker"
    assert "1 pool(s) checked by 1 interval schedule(s), 2 stale removed" in out.getvalue()


def test_migrate_schedules_the_housekeeping_and_every_interval() -> None:
    # given a pool whose schedule went missing (e.g. saved before monitoring existed)
    make_pool("web")
    PeriodicTask.objects.all().delete()

    # when the database is migrated (docker-compose's migrate service, `make run`)
    emit_post_migrate_signal(verbosity=0, interactive=False, db="default")

    # then the prune, the purge and the pool's interval are scheduled
    assert PeriodicTask.objects.filter(name=schedules.PRUNE_NAME).count() == 1
    assert PeriodicTask.objects.filter(name=schedules.PURGE_NAME).count() == 1
    assert set(check_tasks()) == {1.0}
