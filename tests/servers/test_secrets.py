"""Upstream secrets: encrypted at rest, masked wherever an operator or a log could see them, and
plain only in the runtime's config and on the wire to the upstream."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client
from django.urls import reverse

from balancing import adapter
from balancing.engine.errors import UpstreamError
from balancing.engine.transport_stdio import child_environment
from balancing.engine.upstream import UpstreamSession
from servers import configfile, secrets, services
from servers.models import Pool, Server

ROOT = Path(__file__).resolve().parents[2]
KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()
TOKEN = "Bearer sk-live-0123456789abcdef"  # long enough to show its last two characters
DB_PASSWORD = "hunter2-but-longer"


@pytest.fixture(autouse=True)
def key_a(settings: Any) -> None:
    settings.MCPPOOL_SECRETS_KEYS = [KEY_A]


@pytest.fixture
def secret_server(db: Any) -> Server:
    pool = services.save(Pool(name="Search", slug="search"))
    return services.save(
        Server(
            pool=pool,
            name="a",
            transport="streamable_http",
            url="http://127.0.0.1:9/mcp",
            headers={"X-Team": "search"},
            secret_headers=secrets.seal({"Authorization": TOKEN}, {}),
        )
    )


@pytest.fixture
def secret_stdio(secret_server: Server) -> Server:
    return services.save(
        Server(
            pool=secret_server.pool,
            name="b",
            transport="stdio",
            command="python",
            args=["-m", "x"],
            env={"TZ": "UTC"},
            secret_env=secrets.seal({"DB_PASSWORD": DB_PASSWORD}, {}),
        )
    )


def _raw_column(server: Server, column: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM servers_server WHERE id = %s", [server.pk])
        return str(cursor.fetchone()[0])


# ---- at rest -----------------------------------------------------------------------------------


def test_secret_header_stored_only_as_ciphertext(secret_server: Server) -> None:
    raw = _raw_column(secret_server, "secret_headers")
    assert "Authorization" in raw  # the name is not secret; the value is
    assert "sk-live" not in raw
    assert TOKEN not in raw
    assert secrets.reveal(Server.objects.get(pk=secret_server.pk).secret_headers) == {
        "Authorization": TOKEN
    }


def test_secret_env_stored_only_as_ciphertext(secret_stdio: Server) -> None:
    assert DB_PASSWORD not in _raw_column(secret_stdio, "secret_env")


def test_seal_same_value_again_keeps_token_so_nothing_is_rewritten() -> None:
    first = secrets.seal({"Authorization": TOKEN}, {})
    assert secrets.seal({"Authorization": TOKEN}, first) == first
    assert secrets.seal({"Authorization": secrets.mask(TOKEN)}, first) == first
    changed = secrets.seal({"Authorization": "Bearer other"}, first)
    assert changed != first
    assert secrets.reveal(changed) == {"Authorization": "Bearer other"}


def test_seal_masked_value_without_stored_one_is_refused() -> None:
    with pytest.raises(secrets.MaskedWithoutValue, match="Authorization"):
        secrets.seal({"Authorization": secrets.MASK}, {})


def test_mask_short_value_shows_nothing_of_it() -> None:
    assert secrets.mask("abc") == secrets.MASK
    assert secrets.mask(TOKEN) == secrets.MASK + "ef"


def test_server_same_name_plain_and_secret_is_refused(secret_server: Server) -> None:
    secret_server.headers = {"authorization": "Bearer plain"}
    with pytest.raises(Exception, match="both as plain and as secret"):
        services.save(secret_server)


# ---- keys ----------------------------------------------------------------------------------------


def test_rotation_old_tokens_read_with_new_key_first_then_rotate_drops_old_key(
    secret_stdio: Server, settings: Any
) -> None:
    # given a new key listed first, the old one after it
    settings.MCPPOOL_SECRETS_KEYS = [KEY_B, KEY_A]
    assert dict(adapter.server_config(secret_stdio).env)["DB_PASSWORD"] == DB_PASSWORD

    # when the operator rotates
    assert services.rotate_secrets() == 2

    # then the new key alone opens every secret
    settings.MCPPOOL_SECRETS_KEYS = [KEY_B]
    snapshot = adapter.load_snapshot()
    (pool,) = snapshot.pools
    a, b = sorted(pool.servers, key=lambda s: s.name)
    assert dict(a.headers)["Authorization"] == TOKEN
    assert dict(b.env)["DB_PASSWORD"] == DB_PASSWORD


def test_rotate_secrets_command_unreadable_secret_fails_naming_server(
    secret_server: Server, settings: Any
) -> None:
    settings.MCPPOOL_SECRETS_KEYS = [KEY_B]
    with pytest.raises(CommandError, match=r"server 'a' .*'Authorization'.*MCPPOOL_SECRETS_KEY"):
        call_command("mcppool", "rotate-secrets")
    settings.MCPPOOL_SECRETS_KEYS = [KEY_A]  # nothing was rewritten
    assert secrets.reveal(Server.objects.get(pk=secret_server.pk).secret_headers)


def test_snapshot_with_wrong_key_fails_clearly_without_the_key_or_value(
    secret_server: Server, settings: Any
) -> None:
    settings.MCPPOOL_SECRETS_KEYS = [KEY_B]
    with pytest.raises(secrets.SecretUnreadable) as info:
        adapter.load_snapshot()
    message = str(info.value)
    assert "server 'a'" in message
    assert "'Authorization'" in message
    assert "MCPPOOL_SECRETS_KEY" in message
    assert KEY_A not in message
    assert KEY_B not in message
    assert "sk-live" not in message


def test_seal_without_key_says_how_to_make_one(settings: Any) -> None:
    settings.MCPPOOL_SECRETS_KEYS = []
    with pytest.raises(secrets.SecretsKeyMissing, match="MCPPOOL_SECRETS_KEY is not set"):
        secrets.seal({"Authorization": TOKEN}, {})


def _start(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "DEBUG", "MCPPOOL_SECRETS_KEY"}
    }
    clean.update(MCPPOOL_VAR_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="mcppool.settings", **env)
    code = "import django; django.setup(); from django.conf import settings as s; "
    code += "print(len(s.MCPPOOL_SECRETS_KEYS))"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=clean, capture_output=True, text=True
    )


def test_start_with_malformed_key_fails_naming_variable_not_key(tmp_path: Path) -> None:
    result = _start(tmp_path, MCPPOOL_SECRETS_KEY=f"{KEY_A},not-a-key-at-all")
    assert result.returncode != 0
    assert "MCPPOOL_SECRETS_KEY: key #2 is not a Fernet key" in result.stderr
    assert "not-a-key-at-all" not in result.stderr


def test_start_embedded_generates_private_key_once(tmp_path: Path) -> None:
    assert _start(tmp_path).stdout.strip() == "1"
    key_file = tmp_path / "secrets_key"
    first = key_file.read_text()
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert _start(tmp_path).returncode == 0
    assert key_file.read_text() == first
    Fernet(first.encode())  # a usable key


def test_start_with_servers_and_no_key_still_starts(tmp_path: Path) -> None:
    result = _start(tmp_path, DATABASE_URL="postgres://u@127.0.0.1:5432/x", SECRET_KEY="k")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"
    assert not (tmp_path / "secrets_key").exists()


# ---- the runtime sees plain values ------------------------------------------------------------


def test_server_config_merges_plain_and_secret_values(secret_stdio: Server) -> None:
    http = adapter.server_config(Server.objects.get(name="a"))
    assert dict(http.headers) == {"X-Team": "search", "Authorization": TOKEN}
    stdio = adapter.server_config(secret_stdio)
    assert dict(stdio.env) == {"TZ": "UTC", "DB_PASSWORD": DB_PASSWORD}
    assert child_environment(stdio.env)["DB_PASSWORD"] == DB_PASSWORD


@pytest.fixture
async def header_recorder() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """A stand-in upstream on 127.0.0.1 that records each request's headers and fails it."""
    seen: list[dict[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(status=500, text="recorded")

    app = web.Application()
    app.router.add_post("/mcp", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/mcp", seen
    await runner.cleanup()


async def test_http_upstream_receives_secret_header_and_logs_never_show_it(
    secret_server: Server,
    header_recorder: tuple[str, list[dict[str, str]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # given the runtime's config of a server whose Authorization header is stored encrypted
    url, seen = header_recorder
    config = replace(adapter.server_config(secret_server), url=url)

    # when the runtime's upstream session connects (and fails, as the recorder answers 500)
    caplog.set_level(logging.DEBUG)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(UpstreamError) as info:
            await UpstreamSession.open(
                config,
                http=http,
                client_info={"name": "t", "version": "1"},
                capabilities={},
                timeout=5,
            )

    # then the upstream saw the plain secret, and neither the error nor the logs did
    assert seen
    assert all(headers.get("Authorization") == TOKEN for headers in seen)
    assert "sk-live" not in str(info.value)
    assert "sk-live" not in caplog.text


def test_rest_representation_of_a_server_carries_no_secret(secret_stdio: Server) -> None:
    for server in Server.objects.all():
        shown = repr(adapter.server_dict(server))
        assert "sk-live" not in shown
        assert DB_PASSWORD not in shown
        for token in (*server.secret_headers.values(), *server.secret_env.values()):
            assert token not in shown


# ---- the operator sees masks ------------------------------------------------------------------


def _server_form(server: Server, **fields: str) -> dict[str, str]:
    data = {
        "pool": str(server.pool_id),
        "name": server.name,
        "transport": server.transport,
        "url": server.url,
        "headers": '{"X-Team": "search"}',
        "secret_headers": f'{{"Authorization": "{secrets.mask(TOKEN)}"}}',
        "command": "",
        "args": "[]",
        "env": "{}",
        "secret_env": "{}",
        "cwd": "",
        "weight": "1",
        "priority": "0",
        "state": "enabled",
        "max_in_flight": "0",
        "era": "auto",
    }
    data.update(fields)
    return data


def _change_url(server: Server) -> str:
    return reverse("admin:servers_server_change", args=[server.pk])


def test_admin_server_pages_show_secrets_masked(admin_client: Client, secret_stdio: Server) -> None:
    secret_server = Server.objects.get(name="a")
    pages = [
        _change_url(secret_server),
        _change_url(secret_stdio),
        reverse("admin:servers_server_changelist"),
        reverse("admin:servers_pool_change", args=[secret_server.pool_id]),
    ]
    for page in pages:
        html = admin_client.get(page).content.decode()
        assert "sk-live" not in html, page
        assert DB_PASSWORD not in html, page
        for token in (*secret_server.secret_headers.values(), *secret_stdio.secret_env.values()):
            assert token not in html, page
    html = admin_client.get(_change_url(secret_server)).content.decode()
    assert secrets.MASK + "ef" in html


def test_admin_save_with_masked_value_keeps_secret(
    admin_client: Client, secret_server: Server
) -> None:
    before = dict(secret_server.secret_headers)
    response = admin_client.post(_change_url(secret_server), _server_form(secret_server))
    assert response.status_code == 302, response.content.decode()[:2000]
    assert Server.objects.get(pk=secret_server.pk).secret_headers == before


def test_admin_new_value_replaces_secret_and_left_out_name_is_removed(
    admin_client: Client, secret_server: Server
) -> None:
    # when the operator types a new value for one header and leaves the other out
    form = _server_form(secret_server, secret_headers='{"X-Api-Key": "k-new-value-123456"}')
    response = admin_client.post(_change_url(secret_server), form)

    # then the new one is stored encrypted, and the old one is gone
    assert response.status_code == 302
    stored = Server.objects.get(pk=secret_server.pk)
    assert secrets.reveal(stored.secret_headers) == {"X-Api-Key": "k-new-value-123456"}
    assert "k-new-value" not in _raw_column(stored, "secret_headers")


def test_admin_masked_value_for_new_name_shows_error(
    admin_client: Client, secret_server: Server
) -> None:
    form = _server_form(
        secret_server,
        secret_headers=f'{{"Authorization": "{secrets.MASK}", "X-Other": "{secrets.MASK}"}}',
    )
    response = admin_client.post(_change_url(secret_server), form)
    assert response.status_code == 200
    assert "X-Other: masked, but nothing is stored to keep" in response.content.decode()


# ---- config as code --------------------------------------------------------------------------


def _export(*flags: str) -> str:
    out = io.StringIO()
    call_command("mcppool", "export", *flags, stdout=out)
    return out.getvalue()


def test_export_masks_secrets_unless_asked_for(secret_stdio: Server) -> None:
    masked = _export()
    assert "sk-live" not in masked
    assert DB_PASSWORD not in masked
    server_a, server_b = sorted(
        yaml.safe_load(masked)["pools"][0]["servers"], key=lambda s: s["name"]
    )
    assert server_a["secret_headers"] == {"Authorization": secrets.MASK + "ef"}
    assert server_b["secret_env"] == {"DB_PASSWORD": secrets.MASK + "er"}

    plain = _export("--include-secrets")
    assert "PLAINTEXT" in plain
    server_a, server_b = sorted(
        yaml.safe_load(plain)["pools"][0]["servers"], key=lambda s: s["name"]
    )
    assert server_a["secret_headers"] == {"Authorization": TOKEN}
    assert server_b["secret_env"] == {"DB_PASSWORD": DB_PASSWORD}


def test_export_to_file_with_secrets_is_private(secret_server: Server, tmp_path: Path) -> None:
    target = tmp_path / "config.yaml"
    call_command("mcppool", "export", "--include-secrets", "-o", str(target), stdout=io.StringIO())
    assert target.stat().st_mode & 0o777 == 0o600
    assert TOKEN in target.read_text()


def test_apply_masked_export_changes_nothing_and_keeps_secrets(secret_stdio: Server) -> None:
    before = {s.name: (s.secret_headers, s.secret_env) for s in Server.objects.all()}
    version = services.config_version()

    plan = configfile.apply_text(_export(), "export.yaml")

    assert not plan
    assert services.config_version() == version
    after = {s.name: (s.secret_headers, s.secret_env) for s in Server.objects.all()}
    assert after == before


def test_apply_plaintext_secret_stores_ciphertext_and_plan_never_prints_it(db: Any) -> None:
    text = yaml.safe_dump(
        {
            "pools": [
                {
                    "slug": "files",
                    "name": "Files",
                    "servers": [
                        {
                            "name": "f",
                            "transport": "stdio",
                            "command": "python",
                            "secret_env": {"DB_PASSWORD": DB_PASSWORD},
                        }
                    ],
                }
            ]
        }
    )
    plan = configfile.apply_text(text, "files.yaml")
    assert DB_PASSWORD not in "\n".join(plan.describe())
    stored = Server.objects.get(name="f")
    assert DB_PASSWORD not in _raw_column(stored, "secret_env")
    assert dict(adapter.server_config(stored).env) == {"DB_PASSWORD": DB_PASSWORD}
    # applying the same plaintext again is no change (the stored token is kept)
    assert not configfile.apply_text(text, "files.yaml")


def test_apply_masked_value_without_stored_secret_reports_line(secret_server: Server) -> None:
    text = _export().replace("name: a", "name: c")  # a new server, its secret only masked
    with pytest.raises(configfile.ConfigFileError) as info:
        configfile.apply_text(text, "copy.yaml")
    message = str(info.value)
    assert "copy.yaml:" in message
    assert "secret_headers" in message
    assert "masked, but nothing is stored to keep" in message
    assert not Server.objects.filter(name="c").exists()
