"""The audit trail: a row and a JSON line per tool call (REST and MCP), opt-in arguments with a
size cap, config changes with who made them, and pruning by retention."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEntry, Kind
from audit.tasks import prune_audit_entries
from audit.writer import database_sink
from servers import services
from servers.models import Pool, Server
from tests.api.gateway import Gateway

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.upstream]


async def _rest(gw: Gateway, pool: str, tool: str, arguments: dict[str, Any]) -> int:
    async with gw.http.post(
        f"{gw.url}/api/v1/pools/{pool}/tools/{tool}/call",
        json={"arguments": arguments},
        headers=gw.auth(),
    ) as response:
        await response.read()
        return response.status


async def _mcp(gw: Gateway, pool: str, tool: str, arguments: dict[str, Any]) -> int:
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {}}  # fmt: skip
    body = {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments, "_meta": meta}}  # fmt: skip
    headers = {**gw.auth(), "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call",
               "Mcp-Name": tool, "Accept": "application/json, text/event-stream"}  # fmt: skip
    async with gw.http.post(f"{gw.url}/mcp/{pool}/", json=body, headers=headers) as response:
        await response.read()
        return response.status


async def _rows(count: int, **filters: Any) -> list[AuditEntry]:
    """The tool-call rows once `count` have been written (flushing the buffer meanwhile)."""
    sink = database_sink()

    def fetch() -> list[AuditEntry]:
        sink.flush()
        return list(AuditEntry.objects.filter(kind=Kind.TOOL_CALL, **filters).order_by("id"))

    for _ in range(100):
        rows = await sync_to_async(fetch)()
        if len(rows) >= count:
            return rows
        await asyncio.sleep(0.05)
    raise AssertionError(f"{count} audit rows never arrived")


async def test_rest_call_is_audited_with_key_server_bytes_and_client(
    gateway: Gateway, audit_lines: io.StringIO
) -> None:
    # when
    assert await _rest(gateway, "single", "echo", {"text": "hi"}) == 200
    # then: one row naming the key (never its secret) and the server that answered
    (row,) = await _rows(1)
    secret = gateway.keys["app"]
    assert (row.transport, row.pool, row.tool, row.server) == ("rest", "single", "echo", "fast")
    assert (row.key_name, row.key_prefix) == ("app", secret.split("_")[1])
    assert (row.attempts, row.outcome, row.status) == (1, "ok", 200)
    assert row.bytes_in > 0
    assert row.bytes_out > 0
    assert row.latency_ms > 0
    assert row.client_address == "127.0.0.1"
    assert row.arguments == {"text": "hi"}  # the pool keeps arguments up to 64 bytes
    # and the same call as a JSON line, without the secret
    line = json.loads(audit_lines.getvalue().splitlines()[-1])
    assert (line["kind"], line["tool"], line["server"], line["outcome"]) == (
        "tool_call", "echo", "fast", "ok",
    )  # fmt: skip
    assert secret not in audit_lines.getvalue()


async def test_mcp_call_is_audited(gateway: Gateway) -> None:
    # when
    assert await _mcp(gateway, "single", "fail", {}) == 200
    # then: a tool error is the tool's answer, recorded as such
    (row,) = await _rows(1)
    assert (row.transport, row.tool, row.server, row.outcome) == (
        "mcp",
        "fail",
        "fast",
        "tool_error",
    )


async def test_arguments_over_the_cap_are_cut(gateway: Gateway) -> None:
    # when: arguments whose JSON is over the pool's 64 bytes
    assert await _rest(gateway, "single", "echo", {"text": "x" * 200}) == 200
    # then: what is kept is a string of at most the cap, saying it was cut
    (row,) = await _rows(1)
    assert isinstance(row.arguments, str)
    assert row.arguments.endswith("[truncated]")
    assert len(row.arguments.removesuffix("…[truncated]").encode()) <= 64
    assert isinstance(row.result, str)  # the result too: its JSON is over 64 bytes


async def test_pool_without_payload_opt_in_keeps_no_arguments_and_shows_the_retry(
    gateway: Gateway,
) -> None:
    # given: the replicas pool stores calls but no payloads; its first pick is too slow
    live = gateway.host.runtime.pools["replicas"]
    for _ in range(200):
        if "whoami" in live.tools:
            break
        await asyncio.sleep(0.05)
    # when
    assert await _rest(gateway, "replicas", "whoami", {}) == 200
    # then
    (row,) = await _rows(1, pool="replicas")
    assert (row.server, row.attempts, row.outcome) == ("fast", 2, "ok")
    assert row.arguments is None
    assert row.result is None


async def test_pool_without_audit_settings_writes_no_rows(gateway: Gateway) -> None:
    # given: a pool with no audit settings
    def add_plain() -> None:
        pool = services.save(Pool(name="Plain", slug="plain"))
        fast = Server.objects.get(name="fast", pool__slug="single")
        services.save(Server(pool=pool, name="fast", transport="streamable_http", url=fast.url))
        key = services.create_api_key("plain", pools=[pool])[1]
        gateway.keys["plain"] = key

    await sync_to_async(add_plain)()
    await gateway.settle()
    # when: a call there, then one on an audited pool
    async with gateway.http.post(
        f"{gateway.url}/api/v1/pools/plain/tools/echo/call",
        json={"arguments": {"text": "a"}},
        headers=gateway.auth("plain"),
    ) as response:
        assert response.status == 200
    assert await _rest(gateway, "single", "echo", {"text": "b"}) == 200
    # then: only the audited pool's call is stored
    rows = await _rows(1)
    assert [r.pool for r in rows] == ["single"]


async def test_config_change_over_rest_names_the_key(gateway: Gateway) -> None:
    # when
    async with gateway.http.post(
        f"{gateway.url}/api/v1/pools/single/drain", headers=gateway.auth("admin")
    ) as response:
        assert response.status == 200, await response.text()

    # then
    def changes() -> list[AuditEntry]:
        return list(AuditEntry.objects.filter(kind=Kind.CONFIG_CHANGE, transport="api"))

    (row,) = await sync_to_async(changes)()
    assert row.key_name == "admin"
    assert "single" not in row.key_prefix
    assert row.change


def test_config_change_in_admin_names_the_user(admin_client: Client, admin_user: Any) -> None:
    # given
    pool = services.save(Pool(name="Adm", slug="adm"))
    server = services.save(Server(pool=pool, name="s", transport="streamable_http",
                                  url="http://127.0.0.1:9/mcp"))  # fmt: skip
    # when: the admin's drain action
    response = admin_client.post(
        reverse("admin:servers_server_changelist"),
        {"action": "drain", "_selected_action": [server.pk]},
    )
    assert response.status_code == 302
    # then
    row = AuditEntry.objects.filter(kind=Kind.CONFIG_CHANGE).latest("id")
    assert (row.transport, row.subject) == ("admin", admin_user.get_username())
    assert str(server.pk) in row.change
    # and changes with no request around them (YAML apply, manage.py) are the command line's
    assert AuditEntry.objects.filter(kind=Kind.CONFIG_CHANGE, transport="cli").count() == 2


def test_prune_removes_only_entries_past_retention() -> None:
    # given
    now = timezone.now()
    for age_days in (40, 31, 29, 1):
        AuditEntry.objects.create(kind=Kind.TOOL_CALL, at=now - dt.timedelta(days=age_days))
    # when
    deleted = prune_audit_entries(30, now=now)
    # then
    assert deleted == 2
    ages = sorted((now - e.at).days for e in AuditEntry.objects.filter(kind=Kind.TOOL_CALL))
    assert ages == [1, 29]


def test_admin_exports_the_selection_as_csv(admin_client: Client) -> None:
    # given
    at = timezone.now()
    entry = AuditEntry.objects.create(kind=Kind.TOOL_CALL, at=at, pool="p", tool="t,with comma",
                                      key_name="app", outcome="ok")  # fmt: skip
    # when
    response = admin_client.post(
        reverse("admin:audit_auditentry_changelist"),
        {"action": "export_csv", "_selected_action": [entry.pk]},
    )
    # then
    body = b"".join(response.streaming_content).decode()  # type: ignore[attr-defined]
    header, row = body.splitlines()[:2]
    assert header.startswith("at,kind,transport,key_name")
    assert '"t,with comma"' in row
    assert ",app," in row
    # and the list filters by outcome
    page = admin_client.get(reverse("admin:audit_auditentry_changelist") + "?outcome=ok")
    assert page.status_code == 200
    assert b"t,with comma" in page.content


async def test_refused_call_is_audited_without_a_key_name(gateway: Gateway) -> None:
    # when: a made-up key of the right shape
    bogus = "mcp_deadbeef_" + "x" * 43
    async with gateway.http.post(
        f"{gateway.url}/api/v1/pools/single/tools/echo/call",
        json={"arguments": {"text": "hi"}},
        headers={"Authorization": f"Bearer {bogus}"},
    ) as response:
        assert response.status == 401
    # then: who tried, and that nothing was called; never the presented secret
    (row,) = await _rows(1)
    assert (row.outcome, row.status, row.key_name, row.key_prefix) == (
        "invalid_api_key", 401, "", "deadbeef",
    )  # fmt: skip
    assert (row.server, row.attempts) == ("", 0)
    assert row.arguments is None  # the body of a refused call is never read


def test_yaml_apply_is_audited_as_the_command_lines_change(tmp_path: Path) -> None:
    # given
    path = tmp_path / "pools.yaml"
    path.write_text(
        "pools:\n  - slug: yamlpool\n    name: Yaml\n    servers:\n"
        "      - {name: a, transport: streamable_http, url: 'http://127.0.0.1:9/mcp'}\n"
    )
    # when
    call_command("mcppool", "apply", str(path), stdout=io.StringIO())
    # then
    row = AuditEntry.objects.filter(kind=Kind.CONFIG_CHANGE).latest("id")
    assert row.transport == "cli"
    assert row.subject
    assert row.change.startswith(f"apply {path}")
