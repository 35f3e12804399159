"""Two workers judging the same server at once never double-flip it (PostgreSQL, real threads)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from django.db import connection

from balancing import adapter
from monitoring import checks
from monitoring.probes import ProbeResult
from servers import services
from servers.choices import Health
from servers.models import Flip, Server
from tests.conftest import require_env, require_postgres
from tests.monitoring.conftest import add_http, make_pool

pytestmark = pytest.mark.django_db(transaction=True)
T = TypeVar("T")
RACERS = 8


@pytest.fixture(autouse=True)
def _postgres() -> None:
    require_env("DATABASE_URL")
    require_postgres("the race needs row locks")


def race(work: Callable[[], T], racers: int = RACERS) -> list[T]:
    """Run `work` in `racers` threads released at the same instant; each closes its connection."""
    barrier = threading.Barrier(racers)
    results: list[T] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            barrier.wait(10)
            value = work()
            with lock:
                results.append(value)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    return results


def up_server(**knobs: Any) -> Server:
    pool = make_pool(**knobs)
    server = add_http(pool, "a", "http://127.0.0.1:9/mcp")
    Server.objects.filter(pk=server.pk).update(health=Health.UP)
    return server


def test_flip_health_racing_workers_flip_once() -> None:
    server = up_server()

    won = race(
        lambda: services.flip_health(
            server.pk, expected=[Health.UP], new=Health.DOWN, reason="race", source="check"
        )
    )

    assert sorted(won) == [False] * (RACERS - 1) + [True]
    assert Flip.objects.filter(server=server).count() == 1


def test_record_racing_failed_checks_flip_once_and_count_every_check() -> None:
    # given an up server one failure away from `fall`
    server = up_server(fall=3)
    Server.objects.filter(pk=server.pk).update(consecutive_failed=2)
    pool = adapter.pool_config(server.pool, [server], [])
    failed = ProbeResult(ok=False, error="connection refused")

    # when several workers record a failed check of it at the same moment
    race(lambda: checks.record(server.pk, failed, pool))

    # then exactly one flip happened, and no check was lost from the counters
    server.refresh_from_db()
    assert server.health == Health.DOWN
    assert server.consecutive_failed == 2 + RACERS
    assert list(Flip.objects.filter(server=server).values_list("old", "new")) == [("up", "down")]
