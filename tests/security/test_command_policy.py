"""Issue 13, attack 3: an admin key registered `/bin/sh -c 'id > file'` as a stdio server and it
ran within seconds. What may run is the operator's decision (MCPPOOL_STDIO_COMMANDS, shells only
by full path, no loader variables), checked when a server is saved and again before a spawn; and
the REST API creates or changes no stdio server unless MCPPOOL_API_STDIO says so."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import Client
from django.urls import reverse

from balancing.engine.config import ServerConfig, Transport
from balancing.engine.errors import ConnectFailed
from balancing.engine.policy import CommandPolicy, PolicyRefused
from balancing.engine.upstream import UpstreamSession
from servers import configfile, services
from servers.models import Pool, Server
from tests.api.gateway import add_key, add_pool, db_state, serve_gateway
from tests.servers.test_secrets import _server_form

DEFAULT = CommandPolicy.parse(["python -m mcp_server_time"])


def _refused(policy: CommandPolicy, command: str, *args: str, **env: str) -> str:
    with pytest.raises(PolicyRefused) as caught:
        policy.check(command, args, env)
    return caught.value.field


def test_default_policy_allows_the_example_and_nothing_else() -> None:
    DEFAULT.check("python", ["-m", "mcp_server_time", "--local-timezone", "UTC"], {})
    DEFAULT.check(sys.executable, ["-m", "mcp_server_time"], {})  # what the engine spawns
    assert _refused(DEFAULT, "python", "-c", "import os; os.system('id')") == "command"
    assert _refused(DEFAULT, "python", "-m", "http.server") == "command"
    assert _refused(DEFAULT, "/bin/sh", "-c", "id > file") == "command"
    assert _refused(DEFAULT, "node", "server.js") == "command"


def test_shell_needs_its_full_path_listed_never_a_glob_or_name() -> None:
    for entries in (["/bin/*"], ["sh"], ["/bin/s?"], ["*"]):
        assert _refused(CommandPolicy.parse(entries), "/bin/sh", "-c", "id") == "command"
    assert _refused(CommandPolicy.parse(["*"]), "sh", "-c", "id") == "command"
    assert _refused(CommandPolicy.parse(["/usr/bin/*"]), "/usr/bin/env", "sh") == "command"
    CommandPolicy.parse(["/bin/sh"]).check("/bin/sh", ["-c", "true"], {})


def test_loader_environment_is_refused_even_for_an_allowed_program() -> None:
    policy = CommandPolicy.parse(["python"])
    for name in ("LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONSTARTUP", "NODE_OPTIONS",
                 "PATH", "DYLD_INSERT_LIBRARIES", "BASH_ENV"):  # fmt: skip
        assert _refused(policy, "python", "-m", "x", **{name: "/tmp/evil"}) == "env", name  # noqa: S108  # never written
    policy.check("python", ["-m", "x"], {"TZ": "UTC"})


# ---- the attack, over every write path ---------------------------------------------------------

ATTACK = {"transport": "stdio", "command": "/bin/sh", "args": ["-c", "id > {file}"]}


def _attack(file: Path) -> dict[str, Any]:
    return {**ATTACK, "name": "evil", "args": ["-c", f"id > {file}"]}


@pytest.mark.django_db(transaction=True)
async def test_rest_stdio_server_is_refused_nothing_written_nothing_run(tmp_path: Path) -> None:
    file = tmp_path / "pwned"
    await sync_to_async(add_pool)("p", [])
    admin = await sync_to_async(add_key)("admin", all_pools=True, is_admin=True)
    async with serve_gateway() as gw:
        auth = {"Authorization": f"Bearer {admin}"}
        before = await sync_to_async(db_state)()
        response = await gw.http.post(
            f"{gw.url}/api/v1/pools/p/servers", json=_attack(file), headers=auth
        )
        body = await response.json()
        assert response.status == 403, body
        assert body["error"]["code"] == "stdio_forbidden"
        # an allowed program is refused too: stdio over REST is off
        allowed = {"name": "t", "transport": "stdio", "command": "python",
                   "args": ["-m", "mcp_server_time"]}  # fmt: skip
        url = f"{gw.url}/api/v1/pools/p/servers"
        response = await gw.http.post(url, json=allowed, headers=auth)
        assert response.status == 403
        assert await sync_to_async(db_state)() == before
        await gw.settle()
        assert gw.host.runtime.pools["p"].endpoints == {}
    assert not file.exists()


@pytest.mark.django_db(transaction=True)
async def test_rest_with_stdio_enabled_still_refuses_a_shell(tmp_path: Path, settings: Any) -> None:
    settings.MCPPOOL_API_STDIO = True
    file = tmp_path / "pwned"
    await sync_to_async(add_pool)("p", [])
    admin = await sync_to_async(add_key)("admin", all_pools=True, is_admin=True)
    async with serve_gateway() as gw:
        before = await sync_to_async(db_state)()
        response = await gw.http.post(
            f"{gw.url}/api/v1/pools/p/servers",
            json=_attack(file),
            headers={"Authorization": f"Bearer {admin}"},
        )
        body = await response.json()
        assert response.status == 400, body
        assert "MCPPOOL_STDIO_COMMANDS" in body["error"]["errors"]["command"][0]
        assert await sync_to_async(db_state)() == before
    assert not file.exists()


@pytest.mark.django_db
def test_rest_cannot_change_an_existing_stdio_server() -> None:
    pool = services.save(Pool(name="P", slug="p"))
    server = services.save(Server(pool=pool, name="t", transport="stdio", command="python",
                                  args=["-m", "mcp_server_time"]))  # fmt: skip
    server.weight = 3
    with pytest.raises(services.ApiWriteRefused):
        services.save(server, via_api=True)
    assert Server.objects.get(pk=server.pk).weight == 1


@pytest.mark.django_db
def test_admin_shell_server_shows_the_policy_error_and_saves_nothing(
    admin_client: Client, tmp_path: Path
) -> None:
    pool = services.save(Pool(name="P", slug="p"))
    evil = Server(pool=pool, name="evil", transport="stdio")
    args = f'["-c", "id > {tmp_path}/f"]'
    form = _server_form(evil, command="/bin/sh", args=args, headers="{}", secret_headers="{}")
    response = admin_client.post(reverse("admin:servers_server_add"), form)
    assert response.status_code == 200
    assert "MCPPOOL_STDIO_COMMANDS" in response.content.decode()
    assert not Server.objects.exists()


@pytest.mark.django_db
def test_apply_shell_or_loader_env_reports_file_and_line() -> None:
    text = """pools:
  - slug: p
    name: P
    servers:
      - name: evil
        transport: stdio
        command: /bin/sh
        args: [-c, id]
      - name: preload
        transport: stdio
        command: python
        args: [-m, mcp_server_time]
        env: {LD_PRELOAD: /tmp/evil.so}
"""
    with pytest.raises(configfile.ConfigFileError) as caught:
        configfile.apply_text(text, "pools.yaml")
    message = str(caught.value)
    assert "pools.yaml:7: pools[0].servers[0].command: '/bin/sh'" in message
    assert "pools.yaml:13: pools[0].servers[1].env: LD_PRELOAD" in message
    assert not Pool.objects.exists()


async def test_spawn_time_check_refuses_a_config_written_around_the_model(tmp_path: Path) -> None:
    file = tmp_path / "pwned"
    server = ServerConfig(id=1, name="evil", transport=Transport.STDIO, command="/bin/sh",
                          args=("-c", f"id > {file}"))  # fmt: skip
    with pytest.raises(ConnectFailed, match="refused by the command policy"):
        await UpstreamSession.open(
            server, http=None, client_info={}, capabilities={}, timeout=5.0, commands=DEFAULT
        )
    assert not file.exists()
