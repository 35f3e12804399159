"""Issue 13, attack 1: an admin key points a server that holds a secret header at its own
listener. Secrets follow their target: a write that changes the transport, URL, command,
arguments or working directory drops the stored secret values unless it supplies them again."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from cryptography.fernet import Fernet
from django.test import Client
from django.urls import reverse

from servers import configfile, secrets, services
from servers.models import Pool, Server
from tests.api.gateway import add_key, serve_gateway
from tests.security.conftest import Listener
from tests.servers.test_secrets import _server_form
from tests.upstreams import procs

TOKEN = "Bearer sk-live-steal-me-0123456789"
KEY = Fernet.generate_key().decode()


@pytest.fixture(autouse=True)
def secrets_key(settings: Any) -> None:
    settings.MCPPOOL_SECRETS_KEYS = [KEY]


def _server(url: str = "http://127.0.0.1:9/mcp") -> Server:
    pool = services.save(Pool(name="Vault", slug="vault"))
    return services.save(
        Server(
            pool=pool,
            name="a",
            transport="streamable_http",
            url=url,
            secret_headers=secrets.seal({"Authorization": TOKEN}, {}),
        )
    )


@pytest.mark.django_db
def test_save_with_new_url_drops_secret_unless_supplied_again() -> None:
    server = _server()
    # given a change of something else: the secret stays
    server.weight = 5
    services.save(server)
    assert Server.objects.get(pk=server.pk).secret_headers

    # when only the URL changes (the stored token is kept on the object, as a form would keep it)
    server.url = "http://127.0.0.1:10/mcp"
    services.save(server)
    assert Server.objects.get(pk=server.pk).secret_headers == {}

    # when the same write supplies the secret again, it is kept for the new target
    server.secret_headers = secrets.seal({"Authorization": TOKEN}, {})
    services.save(server)
    server.url = "http://127.0.0.1:11/mcp"
    server.secret_headers = secrets.seal({"Authorization": TOKEN}, server.secret_headers)
    services.save(server)
    assert secrets.reveal(Server.objects.get(pk=server.pk).secret_headers) == {
        "Authorization": TOKEN
    }


@pytest.mark.django_db
def test_save_with_new_command_args_or_cwd_drops_secret_env() -> None:
    pool = services.save(Pool(name="P", slug="p"))
    server = services.save(
        Server(
            pool=pool,
            name="s",
            transport="stdio",
            command="python",
            args=["-m", "mcp_server_time"],
            secret_env=secrets.seal({"DB_PASSWORD": "hunter2-longer"}, {}),
        )
    )
    for field, value in (("args", ["-m", "other"]), ("cwd", "/tmp"), ("command", "python3")):  # noqa: S108
        server.secret_env = secrets.seal({"DB_PASSWORD": "hunter2-longer"}, {})
        services.save(server)
        setattr(server, field, value)
        services.save(server)
        assert Server.objects.get(pk=server.pk).secret_env == {}, field


def _change_url(server: Server) -> str:
    return reverse("admin:servers_server_change", args=[server.pk])


def _form(server: Server, **fields: str) -> dict[str, str]:
    """The admin's server form as posted, secret values masked (kept unless the target moves)."""
    return _server_form(server, headers="{}", **fields)


@pytest.mark.django_db
def test_admin_form_warns_before_saving_and_new_url_with_masked_value_drops_secret(
    admin_client: Client,
) -> None:
    server = _server()
    page = admin_client.get(_change_url(server)).content.decode()
    assert "drops the stored secret values (Authorization)" in page

    response = admin_client.post(_change_url(server), _form(server, url="http://127.0.0.1:12/"))

    assert response.status_code == 302, response.content.decode()[:2000]
    assert Server.objects.get(pk=server.pk).secret_headers == {}


@pytest.mark.django_db
def test_admin_new_url_with_secret_typed_again_keeps_it(admin_client: Client) -> None:
    server = _server()
    form = _form(
        server,
        url="http://127.0.0.1:12/",
        secret_headers=json.dumps({"Authorization": TOKEN}),
    )
    assert admin_client.post(_change_url(server), form).status_code == 302
    stored = Server.objects.get(pk=server.pk)
    assert stored.url == "http://127.0.0.1:12/"
    assert secrets.reveal(stored.secret_headers) == {"Authorization": TOKEN}


@pytest.mark.django_db
def test_apply_new_url_with_masked_secret_drops_it() -> None:
    _server()
    exported = configfile.export()  # masked, as an operator would get it
    changed = exported.replace("http://127.0.0.1:9/mcp", "http://127.0.0.1:13/mcp")
    configfile.apply_text(changed, "pools.yaml")
    assert Server.objects.get(name="a").secret_headers == {}


@pytest.mark.django_db(transaction=True)
async def test_rest_patch_url_to_listener_sends_no_secret_byte(listener: Listener) -> None:
    upstream = await asyncio.to_thread(procs.start_faulty_http, name="vault", json_response=True)
    try:
        server = await sync_to_async(_server)(upstream.url)
        admin = await sync_to_async(add_key)("admin", all_pools=True, is_admin=True)
        app = await sync_to_async(add_key)("app", ["vault"])
        async with serve_gateway() as gw:
            # when an admin key patches only the URL to a listener it controls
            response = await gw.http.patch(
                f"{gw.url}/api/v1/pools/vault/servers/a",
                json={"url": listener.url},
                headers={"Authorization": f"Bearer {admin}"},
            )
            body = await response.json()
            assert response.status == 200, body
            assert not any("secret" in name for name in body)
            # and traffic goes to the new target (a call makes the gateway connect there)
            await gw.http.post(
                f"{gw.url}/api/v1/pools/vault/tools/echo/call",
                json={"arguments": {"text": "x"}},
                headers={"Authorization": f"Bearer {app}"},
            )
            await asyncio.wait_for(listener.got_request.wait(), 20)
        # then the listener got requests, and not one byte of the secret
        assert b"POST" in listener.received
        assert b"sk-live" not in listener.received
        assert b"authorization" not in listener.received.lower()
        stored = await sync_to_async(Server.objects.get)(pk=server.pk)
        assert stored.secret_headers == {}
    finally:
        upstream.stop()


@pytest.mark.django_db
def test_apply_dry_run_says_the_secret_is_dropped() -> None:
    _server()
    changed = configfile.export().replace("http://127.0.0.1:9/mcp", "http://127.0.0.1:13/mcp")
    plan = configfile.apply_text(changed, "pools.yaml", dry_run=True)
    assert any("secret_headers {'Authorization': '••••'} → {}" in line for line in plan.describe())
    assert Server.objects.get(name="a").secret_headers  # a dry run writes nothing


@pytest.mark.django_db
def test_admin_pool_page_warns_on_the_inline_server_targets(admin_client: Client) -> None:
    server = _server()
    page = admin_client.get(reverse("admin:servers_pool_change", args=[server.pool_id]))
    assert "drops the server&#x27;s stored secret values" in page.content.decode()
