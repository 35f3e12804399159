"""Config writes that race: two PATCHes of one row at once, on the real PostgreSQL.

Each update reads the row, then (in `full_clean`) waits until the other update has either read
the row too or is blocked on its lock — the interleaving that loses an update when writes are a
read-modify-write of every column without a lock. Both changes must stick.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection, connections

from servers import services
from servers.models import Pool, Server
from tests.conftest import require_env, require_postgres

pytestmark = pytest.mark.django_db(transaction=True)


def _someone_waits_on_a_lock() -> bool:
    with connection.cursor() as cursor:
        # fresh figures even inside a transaction (which keeps one snapshot of the stats views)
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        row = cursor.fetchone()
    return bool(row and row[0])


def _race(
    monkeypatch: pytest.MonkeyPatch, model: type[Any], updates: list[Callable[[], Any]]
) -> None:
    """Run `updates` in threads, each held after reading until the others read or block."""
    arrived: list[int] = []
    original = model.full_clean

    def held_full_clean(self: Any, *args: Any, **kwargs: Any) -> None:
        arrived.append(threading.get_ident())
        deadline = time.monotonic() + 10
        while len(arrived) < len(updates) and not _someone_waits_on_a_lock():
            assert time.monotonic() < deadline, "the other update neither read nor blocked"
            time.sleep(0.01)
        original(self, *args, **kwargs)

    monkeypatch.setattr(model, "full_clean", held_full_clean)
    errors: list[BaseException] = []

    def run(update: Callable[[], Any]) -> None:
        try:
            update()
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(u,)) for u in updates]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors


@pytest.fixture
def postgres() -> None:
    require_env("DATABASE_URL")
    require_postgres("this race needs row locks")


def test_concurrent_pool_patches_keep_both_changes(
    postgres: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    services.save(Pool(name="Race", slug="race"))
    _race(
        monkeypatch,
        Pool,
        [
            lambda: services.update_pool("race", {"fall": 7}),
            lambda: services.update_pool("race", {"strategy": "least_connections"}),
        ],
    )
    pool = Pool.objects.get(slug="race")
    assert (pool.fall, pool.strategy) == (7, "least_connections")


def test_concurrent_server_patches_keep_both_changes(
    postgres: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = services.save(Pool(name="Race", slug="race"))
    services.save(
        Server(pool=pool, name="a", transport="streamable_http", url="http://127.0.0.1:9/mcp")
    )
    _race(
        monkeypatch,
        Server,
        [
            lambda: services.update_server("race", "a", {"weight": 9}),
            lambda: services.update_server("race", "a", {"priority": 3}),
        ],
    )
    server = Server.objects.get(name="a")
    assert (server.weight, server.priority) == (9, 3)


def test_deleting_a_pool_while_a_web_process_reports_on_its_server(
    postgres: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A runtime report written between Django's delete of the reports and of the servers (the
    order of its cascade) broke the foreign key: CI saw the pool delete fail with an
    IntegrityError. The delete must win; the report is simply not written."""
    from django.db.models.sql.subqueries import DeleteQuery

    from balancing.adapter import record_liveness
    from balancing.engine.liveness import Liveness
    from servers.models import RuntimeReport

    pool = services.save(Pool(name="Gone", slug="gone"))
    server = services.save(
        Server(pool=pool, name="a", transport="streamable_http", url="http://127.0.0.1:9/mcp")
    )
    written: list[int] = []
    original = DeleteQuery.delete_batch

    def report_meanwhile() -> None:
        try:
            written.append(record_liveness([Liveness(server_id=server.pk, ok=False)]))
        finally:
            connections.close_all()

    def delete_batch(self: DeleteQuery, pk_list: list[Any], using: str) -> int:
        if self.model is Server:  # the cascade collected no report; the servers are not gone
            writer = threading.Thread(target=report_meanwhile)
            writer.start()
            deadline = time.monotonic() + 10
            while writer.is_alive() and not _someone_waits_on_a_lock():
                assert time.monotonic() < deadline, "the report neither finished nor waited"
                time.sleep(0.01)
            monkeypatch.setattr(self, "_writer", writer, raising=False)
        return original(self, pk_list, using)

    monkeypatch.setattr(DeleteQuery, "delete_batch", delete_batch)
    services.delete(pool)  # raised IntegrityError before server rows were locked first
    monkeypatch.undo()
    deadline = time.monotonic() + 10
    while not written:
        assert time.monotonic() < deadline, "the report writer never finished"
        time.sleep(0.01)
    assert written == [0]  # it found its server gone
    assert not Pool.objects.filter(slug="gone").exists()
    assert not RuntimeReport.objects.filter(server_id=server.pk).exists()
