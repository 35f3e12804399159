"""Health in the admin: "check now" on servers and pools, history on a server's page."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from monitoring import tasks
from monitoring.models import HealthCheck
from servers import services
from servers.choices import Health, ServerState
from servers.models import Flip, Server
from tests.monitoring.conftest import Restartable, add_http, make_pool

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client: Client) -> Client:
    client.force_login(User.objects.create_superuser("op", "op@example.com", "pw"))
    return client


def messages_of(response: object) -> list[str]:
    return [str(m) for m in response.context["messages"]]  # type: ignore[attr-defined]


def test_admin_check_now_queues_the_check_and_answers_without_probing(
    operator: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a server that would hang a probe for its whole timeout, and a worker far away
    pool = make_pool()
    hung = add_http(pool, "hung", "http://127.0.0.1:9/mcp")
    queued: list[list[int]] = []
    monkeypatch.setattr(tasks.check_now, "delay", queued.append)

    # when the operator runs "check now"
    response = operator.post(
        reverse("admin:servers_server_changelist"),
        {"action": "check_now", "_selected_action": [hung.pk]},
        follow=True,
    )

    # then the page answers at once: the check is queued, nothing was probed here
    assert response.status_code == 200
    assert queued == [[hung.pk]]
    assert not HealthCheck.objects.exists()
    [text] = messages_of(response)
    assert text.startswith("Check queued for web/hung: results appear live on the dashboard")
    assert 'href="/dashboard/pools/web/"' in text


@pytest.mark.upstream
def test_admin_check_now_on_servers_runs_each_check_on_the_worker(
    operator: Client, restartable: Callable[[str], Restartable]
) -> None:
    # given one server answering and one that is not (the test worker runs tasks eagerly)
    pool = make_pool()
    live = add_http(pool, "live", restartable("live").url)
    dead = add_http(pool, "dead", "http://127.0.0.1:9/mcp")

    # when the operator runs "check now" on both
    operator.post(
        reverse("admin:servers_server_changelist"),
        {"action": "check_now", "_selected_action": [live.pk, dead.pk]},
    )

    # then each was checked and recorded like any check
    results = dict(HealthCheck.objects.values_list("server__name", "ok"))
    assert results == {"live": True, "dead": False}
    live.refresh_from_db()
    assert live.health == Health.UP


@pytest.mark.upstream
def test_admin_check_now_on_a_pool_checks_its_enabled_servers(
    operator: Client, restartable: Callable[[str], Restartable]
) -> None:
    pool = make_pool()
    a = add_http(pool, "a", restartable("a").url)
    off = add_http(pool, "off", "http://127.0.0.1:9/mcp")
    services.set_server_state([off], ServerState.DISABLED)

    response = operator.post(
        reverse("admin:servers_pool_changelist"),
        {"action": "check_now", "_selected_action": [pool.pk]},
        follow=True,
    )

    assert messages_of(response)[0].startswith("Check queued for web/a:")
    assert list(HealthCheck.objects.values_list("server", flat=True)) == [a.pk]


def test_admin_server_page_shows_recent_flips_and_checks(operator: Client) -> None:
    pool = make_pool()
    server = add_http(pool, "a", "http://127.0.0.1:9/mcp")
    for i in range(25):
        HealthCheck.objects.create(server=server, ok=False, error=f"refused #{i}")
    Flip.objects.create(server=server, old="up", new="down", source="check", reason="3 failed")

    response = operator.get(reverse("admin:servers_server_change", args=[server.pk]))

    page = response.content.decode()
    assert response.status_code == 200
    assert "Health history (latest 20)" in page
    assert "3 failed" in page
    assert "refused #24" in page
    assert "refused #4" not in page


def test_admin_pool_list_names_servers_that_are_not_up(operator: Client) -> None:
    pool = make_pool()
    add_http(pool, "a", "http://127.0.0.1:9/mcp")
    b = add_http(pool, "b", "http://127.0.0.1:10/mcp")
    Server.objects.filter(pk=b.pk).update(health=Health.UP)

    page = operator.get(reverse("admin:servers_pool_changelist")).content.decode()

    assert "a (unknown)" in page
    assert "b (up)" not in page


def test_admin_health_history_is_read_only(operator: Client) -> None:
    pool = make_pool()
    server = add_http(pool, "a", "http://127.0.0.1:9/mcp")
    check = HealthCheck.objects.create(server=server, ok=False, error="refused")

    listing = operator.get(reverse("admin:monitoring_healthcheck_changelist"))
    add = operator.get(reverse("admin:monitoring_healthcheck_add"))
    delete = operator.post(reverse("admin:monitoring_healthcheck_delete", args=[check.pk]))

    assert listing.status_code == 200
    assert "refused" in listing.content.decode()
    assert add.status_code == 403
    assert delete.status_code == 403
    assert HealthCheck.objects.filter(pk=check.pk).exists()
