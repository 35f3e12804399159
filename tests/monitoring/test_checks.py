"""Active checks end to end on the database: history rows, fall/rise flips, tools, pruning."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client import REGISTRY

from monitoring import broker, checks, tasks
from monitoring.models import HealthCheck
from servers import events
from servers.choices import Health, ServerState
from servers.models import Flip, Server
from tests.monitoring.conftest import Restartable, add_http, add_stdio, make_pool
from tests.upstreams import procs

pytestmark = [pytest.mark.django_db, pytest.mark.upstream]
CHECKS_OK = "mcppool_health_checks_total"


def check(pool_id: int, rounds: int = 1) -> None:
    for _ in range(rounds):
        tasks.run_health_checks.delay(pool_id)  # eager in tests: runs here, on the probe loop


def health_of(server: Server) -> str:
    server.refresh_from_db()
    return server.health


def test_run_health_checks_new_server_is_up_after_one_check(
    restartable: Callable[[str], Restartable],
) -> None:
    # given a new server nobody has checked
    replica = restartable("a")
    pool = make_pool()
    server = add_http(pool, "a", replica.url)

    counted = REGISTRY.get_sample_value(CHECKS_OK, {"pool": "web", "server": "a", "outcome": "ok"})

    # when one round of checks runs
    check(pool.pk)

    # then it is up, with the probe's findings recorded
    server.refresh_from_db()
    assert server.health == Health.UP
    assert (server.negotiated_era, server.protocol_version) == ("modern", "2026-07-28")
    assert server.tools_count == 12
    assert len(server.tools_hash) == 64
    row = HealthCheck.objects.get(server=server)
    assert row.ok
    assert row.latency_ms is not None
    assert row.tools_hash == server.tools_hash
    flip = Flip.objects.get(server=server)
    assert (flip.old, flip.new, flip.source) == ("unknown", "up", "check")
    labels = {"pool": "web", "server": "a", "outcome": "ok"}
    assert REGISTRY.get_sample_value(CHECKS_OK, labels) == (counted or 0) + 1  # on /metrics


def test_run_health_checks_stopped_server_is_down_after_fall_checks(
    restartable: Callable[[str], Restartable],
) -> None:
    # given a server that is up, in a pool that marks servers down after 2 failures
    replica = restartable("a")
    pool = make_pool(fall=2)
    server = add_http(pool, "a", replica.url)
    check(pool.pk)

    # when the server stops
    replica.stop()
    check(pool.pk)
    after_one = health_of(server)
    check(pool.pk)

    # then one failure is not enough, two are; the flip says why
    assert after_one == Health.UP
    server.refresh_from_db()
    assert server.health == Health.DOWN
    assert server.consecutive_failed == 2
    assert server.last_error
    flip = Flip.objects.filter(server=server).first()
    assert flip is not None
    assert (flip.old, flip.new) == ("up", "down")
    assert "2 failed checks in a row" in flip.reason


def test_run_health_checks_restarted_server_recovers_then_is_up(
    restartable: Callable[[str], Restartable],
) -> None:
    # given a server that went down, in a pool with rise 2 and a slow-start window
    replica = restartable("a")
    pool = make_pool(fall=1, rise=2, slow_start_window=30.0)
    server = add_http(pool, "a", replica.url)
    check(pool.pk)
    replica.stop()
    check(pool.pk)
    assert health_of(server) == Health.DOWN

    # when it is started again
    replica.start()
    check(pool.pk)
    after_one = health_of(server)
    check(pool.pk)
    after_rise = health_of(server)
    # ... and its slow-start window has passed
    Server.objects.filter(pk=server.pk).update(
        health_changed_at=timezone.now() - timedelta(seconds=31)
    )
    check(pool.pk)

    # then it comes back only after `rise` passes, ramps in, then is up
    assert (after_one, after_rise, health_of(server)) == (
        Health.DOWN,
        Health.RECOVERING,
        Health.UP,
    )
    history = list(Flip.objects.filter(server=server).order_by("at", "id").values_list("new"))
    assert [h for (h,) in history] == ["up", "down", "recovering", "up"]


def test_run_health_checks_flapping_server_does_not_spin_the_state(
    restartable: Callable[[str], Restartable],
) -> None:
    # given a server that is up
    replica = restartable("a")
    pool = make_pool(fall=2, rise=2, check_timeout=0.3)
    server = add_http(pool, "a", replica.url)
    check(pool.pk)

    # when it hangs on every other check
    for _ in range(3):
        replica.freeze()
        check(pool.pk)
        replica.thaw()
        check(pool.pk)

    # then it never flipped: hysteresis absorbed the flapping; the history shows every check
    assert health_of(server) == Health.UP
    assert Flip.objects.filter(server=server).count() == 1  # unknown → up only
    oks = list(HealthCheck.objects.filter(server=server).order_by("at", "id").values_list("ok"))
    assert [ok for (ok,) in oks] == [True] + [False, True] * 3


def test_run_health_checks_hanging_server_times_out_and_others_are_checked(
    restartable: Callable[[str], Restartable],
) -> None:
    # given a pool with one hung server and one healthy one
    hung, fine = restartable("hung"), restartable("fine")
    pool = make_pool(check_timeout=0.5)
    hung_server, fine_server = add_http(pool, "hung", hung.url), add_http(pool, "fine", fine.url)
    hung.freeze()

    # when a round runs
    check(pool.pk)

    # then the hung one failed its probe on the timeout and the round went on without it
    hung_row = HealthCheck.objects.get(server=hung_server)
    assert not hung_row.ok
    assert "0.5s" in hung_row.error
    assert HealthCheck.objects.get(server=fine_server).ok


def test_run_health_checks_skips_disabled_servers(
    restartable: Callable[[str], Restartable],
) -> None:
    replica = restartable("a")
    pool = make_pool()
    server = add_http(pool, "a", replica.url)
    Server.objects.filter(pk=server.pk).update(state=ServerState.DISABLED)

    check(pool.pk)

    assert not HealthCheck.objects.filter(server=server).exists()


def test_run_health_checks_flags_the_server_whose_tools_differ(
    restartable: Callable[[str], Restartable],
) -> None:
    # given two replicas of one build and a different server in the same pool
    pool = make_pool(check_interval=5.0, check_timeout=2.0)
    a = add_http(pool, "a", restartable("a").url)
    b = add_http(pool, "b", restartable("b").url)
    odd = add_stdio(pool, procs.time_stdio_config())

    # (a stdio server may still be starting after a round: rounds go on until it has answered)
    for _ in range(30):
        check(pool.pk)
        if Server.objects.filter(pk=odd.pk, tools_count__isnull=False).exists():
            break

    # then only the odd one out is flagged
    flags = dict(Server.objects.filter(pool=pool).values_list("pk", "tools_differ"))
    assert flags == {a.pk: False, b.pk: False, odd.pk: True}


def test_check_server_task_checks_one_server_now(
    restartable: Callable[[str], Restartable],
) -> None:
    pool = make_pool()
    server = add_http(pool, "a", restartable("a").url)

    assert tasks.check_server.delay(server.pk).get() is True
    assert tasks.check_server.delay(999_999).get() is None
    assert health_of(server) == Health.UP


def test_prune_history_deletes_rows_older_than_the_retention(settings: object) -> None:
    pool = make_pool()
    server = add_http(pool, "a", "http://127.0.0.1:9/mcp")
    now = timezone.now()
    old = HealthCheck.objects.create(server=server, at=now - timedelta(days=8), ok=True)
    recent = HealthCheck.objects.create(server=server, at=now - timedelta(days=6), ok=False)

    deleted = tasks.prune_history.delay().get()

    assert deleted == 1
    assert list(HealthCheck.objects.values_list("pk", flat=True)) == [recent.pk]
    assert not HealthCheck.objects.filter(pk=old.pk).exists()


def test_run_pool_checks_of_a_deleted_pool_does_nothing() -> None:
    assert checks.run_pool_checks(123_456) == []


def test_check_now_task_records_and_announces_each_result(
    replica: procs.UpstreamProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given one server answering and one refusing
    pool = make_pool()
    good = add_http(pool, "good", replica.url)
    add_http(pool, "dead", "http://127.0.0.1:9/mcp")
    announced: list[dict[str, Any]] = []
    monkeypatch.setattr(events, "publish", lambda kind, **data: announced.append({kind: data}))
    # when the queued "check now" runs on the worker
    assert tasks.check_now.delay([s.pk for s in pool.servers.all()]).get() == 2
    # then both results are recorded and announced to the pool's dashboard pages
    assert HealthCheck.objects.get(server=good).ok
    checked = [e[events.HEALTH_CHECKED] for e in announced if events.HEALTH_CHECKED in e]
    results = {e["server"]: e for e in checked}
    assert results["good"]["ok"] is True
    assert results["good"]["pool"] == "web"
    assert results["dead"]["ok"] is False
    assert results["dead"]["error"]


def test_run_interval_checks_one_task_checks_every_pool_and_writes_in_one_batch(
    restartable: Callable[[str], Restartable],
) -> None:
    # given three pools checked every second, four servers each (one replica behind them all)
    replica = restartable("a")
    servers = [
        add_http(pool, f"s{i}", replica.url)
        for pool in (make_pool(slug) for slug in ("web", "api", "db"))
        for i in range(4)
    ]
    tasks.run_interval_checks.delay(1.0)  # first round: every server flips unknown → up

    # when the next round runs (one task for the interval, not one per pool)
    with CaptureQueriesContext(connection) as queries:
        assert tasks.run_interval_checks.delay(1.0).get() == 12

    # then every server was checked, and the results went in as one insert and one update
    assert HealthCheck.objects.filter(server__in=servers).count() == 24
    sql = [q["sql"] for q in queries.captured_queries]
    assert sum(s.startswith('INSERT INTO "monitoring_healthcheck"') for s in sql) == 1
    assert sum(s.startswith('UPDATE "servers_server"') for s in sql) == 1
    assert all(health_of(s) == Health.UP for s in servers)


def test_purge_broker_deletes_consumed_messages_only(tmp_path: Path) -> None:
    # given an embedded broker file with one consumed and one waiting message
    path = tmp_path / "broker.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE kombu_message (id INTEGER PRIMARY KEY, visible BOOLEAN)")
        db.executemany("INSERT INTO kombu_message (visible) VALUES (?)", [(0,), (1,)])
    # when the purge runs
    assert broker.purge_consumed(f"sqla+sqlite:///{path}") == 1
    # then only the waiting message is left; other brokers are left alone
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT visible FROM kombu_message").fetchall() == [(1,)]
    assert broker.purge_consumed("redis://127.0.0.1:6379/0") == 0
