"""What an operator meets first in the admin: the product's name, units, bounds the browser and
the server agree on, full stdio commands, readable help, and no Celery internals on the index."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.db.models import FloatField, IntegerField, Model
from django.test import Client
from django.urls import reverse

from monitoring.models import HealthCheck
from servers import configfile, services
from servers.admin import UNITS, bounds
from servers.models import ApiKey, Pool, Server

pytestmark = pytest.mark.django_db


class Inputs(HTMLParser):
    """Every <input> of a page by name, and the labels' text by the id they are for."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.inputs: dict[str, dict[str, str | None]] = {}
        self.labels: dict[str, str] = {}
        self._label_for: str | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "input" and found.get("name"):
            self.inputs[str(found["name"])] = found
        if tag == "label":
            self._label_for = found.get("for")

    def handle_data(self, data: str) -> None:
        if self._label_for:
            self.labels[self._label_for] = self.labels.get(self._label_for, "") + data

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self._label_for = None


def _numeric_fields(model: type[Model]) -> list[Any]:
    return [
        f
        for f in model._meta.get_fields()
        if isinstance(f, IntegerField | FloatField) and f.editable and not f.primary_key
    ]


@pytest.mark.parametrize(
    ("model", "page", "prefix"),
    [
        (Pool, "admin:servers_pool_add", ""),
        (Server, "admin:servers_server_add", ""),
        (ApiKey, "admin:servers_apikey_add", ""),
        (Server, "admin:servers_pool_change", "servers-0-"),  # the pool page's server inline
    ],
)
def test_admin_number_inputs_carry_the_models_bounds(
    admin_client: Client, http_server: Server, model: type[Model], page: str, prefix: str
) -> None:
    args = [http_server.pool.pk] if page.endswith("change") else []
    inputs = Inputs(admin_client.get(reverse(page, args=args)).content.decode()).inputs
    checked = 0
    for field in _numeric_fields(model):
        shown = inputs.get(prefix + field.name)
        if shown is None:
            continue  # not on this page (e.g. not among the inline's columns)
        low, high = bounds(field)
        assert shown.get("min") == (None if low is None else str(low)), field.name
        assert shown.get("max") == (None if high is None else str(high)), field.name
        checked += 1
    assert checked >= 1


def test_admin_out_of_range_weight_fails_with_the_bound_yaml_apply_gives(
    admin_client: Client, http_server: Server
) -> None:
    # the browser would stop 0 (min=1); posted anyway, the form says what YAML apply says
    page = reverse("admin:servers_server_change", args=[http_server.pk])
    form = {
        "pool": http_server.pool.pk,
        "name": "a",
        "transport": "streamable_http",
        "url": http_server.url,
        "headers": "{}",
        "args": "[]",
        "env": "{}",
        "secret_headers": "{}",
        "secret_env": "{}",
        "priority": 0,
        "state": "enabled",
        "max_in_flight": 0,
        "era": "auto",
    }
    for weight in (0, -2):
        response = admin_client.post(page, {**form, "weight": weight})
        assert response.status_code == 200
        assert "greater than or equal to 1." in response.content.decode(), weight
    yaml = (
        "pools:\n  - slug: time\n    name: Time\n    servers:\n      - name: a\n"
        f"        transport: streamable_http\n        url: {http_server.url}\n        weight: 0\n"
    )
    with pytest.raises(configfile.ConfigFileError, match="greater than or equal to 1"):
        configfile.apply_text(yaml, "pools.yaml")
    http_server.refresh_from_db()
    assert http_server.weight == 1


def test_admin_labels_give_units(admin_client: Client, db: Any) -> None:
    labels = Inputs(admin_client.get(reverse("admin:servers_pool_add")).content.decode()).labels
    for name, unit in UNITS.items():
        if hasattr(Pool, name):
            assert labels[f"id_{name}"].rstrip(":").endswith(f"({unit})"), name


def test_health_check_list_gives_latency_in_ms(admin_client: Client, http_server: Server) -> None:
    HealthCheck.objects.create(server=http_server, ok=True, latency_ms=12.34)
    page = admin_client.get(reverse("admin:monitoring_healthcheck_changelist")).content.decode()
    assert "latency (ms)" in page.lower()
    assert ">12.3<" in page


def test_pool_page_help_text_shows_the_slug_placeholder(admin_client: Client, pool: Pool) -> None:
    html = admin_client.get(reverse("admin:servers_pool_change", args=[pool.pk])).content.decode()
    assert "Used in URLs: /mcp/&lt;slug&gt;/" in html


def test_admin_shows_stdio_commands_with_their_arguments(
    admin_client: Client, stdio_server: Server
) -> None:
    listing = admin_client.get(reverse("admin:servers_server_changelist")).content.decode()
    assert "python -m x" in listing
    pool_page = admin_client.get(
        reverse("admin:servers_pool_change", args=[stdio_server.pool.pk])
    ).content.decode()
    assert "-m x" in pool_page  # the inline's arguments column


def test_admin_names_the_product_and_api_keys(admin_client: Client, db: Any) -> None:
    index = admin_client.get(reverse("admin:index")).content.decode()
    assert "mcppool administration" in index
    assert "Django administration" not in index
    assert ">API keys<" in index
    assert "Api keys" not in index


def test_celery_beat_models_are_off_the_index_and_superuser_only(
    admin_client: Client, client: Client, db: Any
) -> None:
    beat = reverse("admin:django_celery_beat_periodictask_changelist")
    index = admin_client.get(reverse("admin:index")).content.decode()
    assert "Periodic tasks" not in index
    assert "Solar events" not in index
    assert f'href="{beat}"' in index  # the superuser's one "Advanced" link
    assert admin_client.get(beat).status_code == 200
    # a staff operator with every permission sees neither the section nor the pages
    operator = User.objects.create_user("operator", password="pw", is_staff=True)
    operator.user_permissions.set(Permission.objects.all())
    client.force_login(operator)
    index = client.get(reverse("admin:index")).content.decode()
    assert "Periodic tasks" not in index
    assert beat not in index
    assert client.get(beat).status_code == 403
    services.save(Pool(name="Other", slug="other"))  # the operator still runs the pools
    assert "Other" in client.get(reverse("admin:servers_pool_changelist")).content.decode()
