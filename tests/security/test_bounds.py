"""Issue 13, attack 7: a request declaring `Content-Length: 100` and sending 2 bytes held its
connection for 40 s and more, and `check_interval: 1e308` was an HTML 500 over REST and a
traceback in `mcppool apply`. A body must now arrive within MCPPOOL_BODY_TIMEOUT_SECONDS (408),
and every numeric config field has a range the model checks, listed in docs/security.md."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.test import Client
from django.urls import reverse

from servers import configfile
from servers.models import AffinityRule, ApiKey, Pool, Server
from tests.api.gateway import add_key, add_pool, db_state, serve_gateway
from tests.servers.test_admin import _pool_form

DOCS = Path(__file__).resolve().parents[2] / "docs" / "security.md"
CONFIG_FIELDS: list[tuple[type[models.Model], tuple[str, ...]]] = [
    (Pool, configfile.POOL_FIELDS),
    (Server, configfile.SERVER_FIELDS),
    (AffinityRule, configfile.RULE_FIELDS),
    (ApiKey, ("rate_limit_per_minute",)),
]


def _numeric_fields() -> list[tuple[str, models.Field[Any, Any]]]:
    found: list[tuple[str, models.Field[Any, Any]]] = []
    for model, names in CONFIG_FIELDS:
        for name in names:
            field = model._meta.get_field(name)
            if isinstance(field, models.IntegerField | models.FloatField):
                found.append((f"{model.__name__}.{name}", field))
    return found


def _bounds(field: models.Field[Any, Any]) -> tuple[Any, Any]:
    low = next(v.limit_value for v in field.validators if isinstance(v, MinValueValidator))
    high = next(v.limit_value for v in field.validators if isinstance(v, MaxValueValidator))
    return low, high


def _shown(limit: float) -> str:
    return f"{limit:g}" if isinstance(limit, float) else str(limit)


def test_every_numeric_config_field_has_a_documented_range_checked_in_the_model() -> None:
    docs = DOCS.read_text()
    fields = _numeric_fields()
    assert len(fields) >= 20
    for label, field in fields:
        low, high = _bounds(field)  # StopIteration: a field without a minimum or maximum
        assert f"| `{label}` | {_shown(low)} | {_shown(high)} |" in docs, label
        if isinstance(field, models.FloatField):
            for bad in (math.nan, math.inf, -math.inf):
                with pytest.raises(Exception, match="finite"):
                    field.run_validators(bad)


# ---- check_interval: 1e308 over every write path ---------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_rest_huge_check_interval_is_a_clean_400_naming_the_field() -> None:
    await sync_to_async(add_pool)("p", [])
    admin = await sync_to_async(add_key)("admin", all_pools=True, is_admin=True)
    async with serve_gateway() as gw:
        auth = {"Authorization": f"Bearer {admin}"}
        before = await sync_to_async(db_state)()
        for method, path, body in (
            ("POST", "/pools", {"slug": "x", "name": "X", "check_interval": 1e308}),
            ("PATCH", "/pools/p", {"check_interval": 1e308}),
            ("PATCH", "/pools/p", {"sessions_per_server": 10**9}),
        ):
            url = f"{gw.url}/api/v1{path}"
            async with gw.http.request(method, url, json=body, headers=auth) as response:
                answer = await response.json()
                assert response.status == 400, answer
                assert answer["error"]["code"] == "invalid_request"
                assert set(answer["error"]["errors"]) == set(body) - {"slug", "name"}
        assert await sync_to_async(db_state)() == before


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1.0e+308", "Ensure this value is less than or equal to 86400"),
        ("1e308", "must be a number"),
        (".nan", "Give a finite number"),
        ("1" + "0" * 400, "far too large"),
    ],
)
@pytest.mark.parametrize("dry_run", [True, False])
def test_apply_huge_check_interval_is_file_and_line(
    value: str, message: str, dry_run: bool
) -> None:
    text = f"pools:\n  - slug: p\n    name: P\n    check_interval: {value}\n"
    with pytest.raises(configfile.ConfigFileError) as caught:
        configfile.apply_text(text, "pools.yaml", dry_run=dry_run)
    assert "pools.yaml:4: pools[0].check_interval: " in str(caught.value)
    assert message in str(caught.value)
    assert not Pool.objects.exists()


@pytest.mark.django_db
def test_admin_huge_check_interval_is_a_form_error_naming_the_field(admin_client: Client) -> None:
    response = admin_client.post(
        reverse("admin:servers_pool_add"), _pool_form(check_interval="1e308")
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "less than or equal to 86400" in str(errors["check_interval"])
    assert not Pool.objects.exists()


# ---- a body that never arrives ------------------------------------------------------------------


async def _slow_request(port: int, path: str, auth: str = "") -> bytes:
    """Declare a 100-byte body, send 2 bytes, then wait for whatever the gateway answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Accept: application/json, text/event-stream\r\nContent-Length: 100\r\n"
        + (f"Authorization: Bearer {auth}\r\n" if auth else "")
        + '\r\n{"'
    )
    writer.write(head.encode())
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 30)  # to EOF: the gateway closes it
    finally:
        writer.close()


@pytest.mark.django_db(transaction=True)
async def test_body_that_never_arrives_is_408_and_the_connection_closed(settings: Any) -> None:
    settings.MCPPOOL_BODY_TIMEOUT_SECONDS = 0.5
    await sync_to_async(add_pool)("p", [])
    key = await sync_to_async(add_key)("admin", all_pools=True, is_admin=True)
    async with serve_gateway() as gw:
        port = int(gw.url.rsplit(":", 1)[1])
        for path, auth in (
            ("/mcp/p/", key),  # the MCP endpoint (raw ASGI)
            ("/api/v1/pools/p/tools/echo/call", key),  # the REST hot path (raw ASGI)
            ("/api/v1/pools", key),  # REST served by Django
            ("/admin/login/", ""),  # Django pages
        ):
            answer = await _slow_request(port, path, auth)
            assert answer.startswith(b"HTTP/1.1 408 "), (path, answer[:200])
            assert b"body_timeout" in answer, path
