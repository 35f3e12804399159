"""The rest of the REST API: pools, servers, tools, resources, prompts, config writes, OpenAPI."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from asgiref.sync import sync_to_async

from servers.models import AffinityRule, Pool, Server
from tests.api.conftest import error_of
from tests.api.gateway import Gateway, db_state

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.upstream]


async def _get(gw: Gateway, path: str, key: str | None = "app") -> tuple[int, Any]:
    headers = gw.auth(key) if key else {}
    async with gw.http.get(f"{gw.url}/api/v1{path}", headers=headers) as response:
        return response.status, orjson.loads(await response.read() or b"null")


async def _send(
    gw: Gateway, method: str, path: str, body: Any = None, key: str = "admin", raw: bytes = b""
) -> tuple[int, Any]:
    data = raw or (orjson.dumps(body) if body is not None else b"")
    headers = {**gw.auth(key), "Content-Type": "application/json"}
    async with gw.http.request(method, f"{gw.url}/api/v1{path}", data=data, headers=headers) as r:
        payload = await r.read()
        return r.status, orjson.loads(payload) if payload else None


def _needs_everything(gw: Gateway) -> None:
    if "everything" not in gw.host.runtime.pools:
        pytest.skip("server-everything is not installed (make node)")


# ---- reads for apps --------------------------------------------------------------------


async def test_list_pools_shows_only_the_keys_pools_with_health(gateway: Gateway) -> None:
    status, pools = await _get(gateway, "/pools")
    assert status == 200
    slugs = [p["slug"] for p in pools]
    assert "echo" in slugs and "other" not in slugs
    echo = next(p for p in pools if p["slug"] == "echo")
    assert echo["health"]["servers"] == 1
    assert echo["mcp_url"].endswith("/mcp/echo/")
    assert echo["health"]["status"] in ("up", "degraded", "down")


async def test_get_pool_of_another_key_is_403_and_unknown_is_404(gateway: Gateway) -> None:
    status, body = await _get(gateway, "/pools/other")
    assert (status, error_of(body)) == (403, "pool_forbidden")
    status, body = await _get(gateway, "/pools/nope", key="admin")
    assert (status, error_of(body)) == (404, "unknown_pool")


async def test_list_servers_shows_live_state(gateway: Gateway) -> None:
    status, servers = await _get(gateway, "/pools/echo/servers")
    assert status == 200
    assert [s["name"] for s in servers] == ["one"]
    assert servers[0]["state"] == "enabled"
    assert servers[0]["in_flight"] == 0


async def test_list_tools_merges_with_annotations(gateway: Gateway) -> None:
    status, body = await _get(gateway, "/pools/echo/tools")
    assert status == 200
    tools = {t["name"]: t for t in body["tools"]}
    assert tools["echo"]["annotations"]["readOnlyHint"] is True
    assert "inputSchema" in tools["add"]


async def test_reads_without_key_are_401(gateway: Gateway) -> None:
    for path in ("/pools", "/pools/echo/tools", "/pools/echo/servers"):
        status, body = await _get(gateway, path, key=None)
        assert (status, error_of(body)) == (401, "missing_api_key")
    status, body = await _get(gateway, "/pools", key="revoked")
    assert (status, error_of(body)) == (401, "api_key_revoked")


async def test_resources_list_and_read(gateway: Gateway) -> None:
    _needs_everything(gateway)
    status, listing = await _get(gateway, "/pools/everything/resources")
    assert status == 200 and listing["resources"]
    uri = listing["resources"][0]["uri"]
    async with gateway.http.get(
        f"{gateway.url}/api/v1/pools/everything/resources/read",
        params={"uri": uri},
        headers=gateway.auth(),
    ) as response:
        assert response.status == 200
        contents = (await response.json())["contents"]
    assert contents[0]["uri"] == uri
    assert await gateway.sessions_idle()


async def test_read_unknown_resource_is_404(gateway: Gateway) -> None:
    _needs_everything(gateway)
    async with gateway.http.get(
        f"{gateway.url}/api/v1/pools/everything/resources/read",
        params={"uri": "nothing://here"},
        headers=gateway.auth(),
    ) as response:
        assert response.status == 404
        assert error_of(await response.json()) == "unknown_resource"
    assert await gateway.sessions_idle()


async def test_prompts_list_and_get(gateway: Gateway) -> None:
    _needs_everything(gateway)
    status, listing = await _get(gateway, "/pools/everything/prompts")
    assert status == 200
    simple = next(
        p for p in listing["prompts"] if not any(a.get("required") for a in p.get("arguments", []))
    )
    status, prompt = await _send(
        gateway, "POST", f"/pools/everything/prompts/{simple['name']}/get", {}, key="app"
    )
    assert status == 200, prompt
    assert prompt["messages"]


async def test_get_unknown_prompt_is_404_and_blames_no_server(gateway: Gateway) -> None:
    _needs_everything(gateway)
    status, body = await _send(gateway, "POST", "/pools/everything/prompts/nope/get", {}, key="app")
    assert (status, error_of(body)) == (404, "unknown_prompt")
    live = gateway.host.runtime.pool("everything")
    assert not any(
        ep.outlier.ejected(gateway.host.runtime.clock()) for ep in live.endpoints.values()
    )


async def test_resources_of_an_unreachable_pool_is_503(gateway: Gateway) -> None:
    status, body = await _get(gateway, "/pools/dead/resources")
    assert (status, error_of(body)) == (503, "no_healthy_server")
    assert await gateway.sessions_idle()


# ---- config writes for admin keys ---------------------------------------------------------


async def test_admin_creates_updates_drains_and_deletes_a_pool(gateway: Gateway) -> None:
    status, pool = await _send(gateway, "POST", "/pools", {"slug": "new", "name": "New"})
    assert status == 201 and pool["slug"] == "new"
    assert "new" in gateway.host.runtime.pools  # applied to this process at once
    url = gateway.host.runtime.pool("echo").config.servers[0].url
    status, server = await _send(
        gateway, "POST", "/pools/new/servers",
        {"name": "a", "transport": "streamable_http", "url": url, "weight": 3},
    )  # fmt: skip
    assert status == 201 and server["weight"] == 3
    status, server = await _send(gateway, "PATCH", "/pools/new/servers/a", {"weight": 5})
    assert status == 200 and server["weight"] == 5
    status, pool = await _send(gateway, "PATCH", "/pools/new", {"strategy": "least_connections"})
    assert status == 200 and pool["strategy"] == "least_connections"
    status, rule = await _send(
        gateway, "POST", "/pools/new/rules",
        {"order": 1, "match_on": "tool", "pattern": "echo", "action": "pin", "pin_server": "a"},
    )  # fmt: skip
    assert status == 201 and rule["pin_server"] == "a"
    status, rule = await _send(
        gateway, "PATCH", f"/pools/new/rules/{rule['id']}", {"enabled": False}
    )
    assert status == 200 and rule["enabled"] is False
    status, drained = await _send(gateway, "POST", "/pools/new/drain")
    assert (status, drained) == (200, {"drained": 1})
    assert gateway.host.runtime.pool("new").config.servers[0].state.value == "draining"
    status, state = await _send(gateway, "POST", "/pools/new/servers/a/state", {"state": "enabled"})
    assert status == 200 and state["state"] == "enabled"
    assert (await _send(gateway, "DELETE", f"/pools/new/rules/{rule['id']}"))[0] == 204
    assert (await _send(gateway, "DELETE", "/pools/new/servers/a"))[0] == 204
    assert (await _send(gateway, "DELETE", "/pools/new"))[0] == 204
    assert "new" not in gateway.host.runtime.pools
    assert not await Pool.objects.filter(slug="new").aexists()


async def test_config_write_with_app_key_is_403_and_changes_nothing(gateway: Gateway) -> None:
    before = await sync_to_async(db_state)()
    status, body = await _send(gateway, "POST", "/pools", {"slug": "x", "name": "X"}, key="app")
    assert (status, error_of(body)) == (403, "admin_required")
    status, body = await _send(gateway, "DELETE", "/pools/echo", key="app")
    assert (status, error_of(body)) == (403, "admin_required")
    assert await sync_to_async(db_state)() == before


@pytest.mark.parametrize(
    ("method", "path", "body", "code"),
    [
        ("POST", "/pools", {"slug": "bad slug!", "name": "B"}, "invalid_request"),
        ("POST", "/pools", {"slug": "x", "name": "X", "fall": "many"}, "invalid_request"),
        ("POST", "/pools", {"slug": "x", "name": "X", "colour": "red"}, "invalid_request"),
        ("POST", "/pools/echo/servers", {"name": "s", "transport": "stdio"}, "stdio_forbidden"),
        ("PATCH", "/pools/echo/servers/nope", {"weight": 2}, "unknown_server"),
        ("PATCH", "/pools/nope", {"name": "N"}, "unknown_pool"),
        ("DELETE", "/pools/echo/rules/999", None, "unknown_rule"),
    ],
)
async def test_invalid_config_write_is_refused_and_changes_nothing(
    gateway: Gateway, method: str, path: str, body: Any, code: str
) -> None:
    before = await sync_to_async(db_state)()
    counts = (
        await Pool.objects.acount(),
        await Server.objects.acount(),
        await AffinityRule.objects.acount(),
    )
    status, answer = await _send(gateway, method, path, body)
    assert error_of(answer) == code
    assert status in (400, 403, 404)
    assert await sync_to_async(db_state)() == before
    assert counts == (
        await Pool.objects.acount(),
        await Server.objects.acount(),
        await AffinityRule.objects.acount(),
    )


async def test_config_write_with_bad_json_is_400(gateway: Gateway) -> None:
    before = await sync_to_async(db_state)()
    status, body = await _send(gateway, "POST", "/pools", raw=b'{"slug": ')
    assert (status, error_of(body)) == (400, "invalid_json")
    assert await sync_to_async(db_state)() == before


async def test_config_write_with_body_over_limit_is_413(gateway: Gateway, settings: Any) -> None:
    settings.MCPPOOL_MAX_BODY_BYTES = 1024
    before = await sync_to_async(db_state)()
    body = {"slug": "big", "name": "B", "description": "x" * 5000}
    status, answer = await _send(gateway, "POST", "/pools", body)
    assert (status, error_of(answer)) == (413, "body_too_large")
    assert await sync_to_async(db_state)() == before


# ---- the OpenAPI document and the docs page ---------------------------------------------------


async def test_openapi_document_declares_the_hot_call_route(gateway: Gateway) -> None:
    from balancing.api import call

    async with gateway.http.get(f"{gateway.url}/api/v1/openapi.json") as response:
        assert response.status == 200
        spec = await response.json()
    paths = spec["paths"]
    call_paths = [p for p in paths if p.endswith("/call")]
    assert call_paths == ["/api/v1/pools/{slug}/tools/{name}/call"]
    # the raw handler serves exactly the path the document declares
    concrete = call_paths[0].replace("{slug}", "echo").replace("{name}", "add")
    assert call.match(concrete) == ("echo", "add")
    operation = paths[call_paths[0]]["post"]
    assert {"200", "400", "401", "403", "404", "413", "429", "502", "503", "504"} <= set(
        operation["responses"]
    )
    assert spec["components"]["securitySchemes"]


async def test_docs_page_loads_its_assets_from_this_server(gateway: Gateway) -> None:
    async with gateway.http.get(f"{gateway.url}/api/v1/docs") as response:
        assert response.status == 200
        page = await response.text()
    assert "http://" not in page and "https://" not in page  # no CDN: machines may be offline
    for asset in ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-init.js"):
        assert f"/api/v1/docs/assets/{asset}" in page
        async with gateway.http.get(f"{gateway.url}/api/v1/docs/assets/{asset}") as response:
            assert response.status == 200
            assert len(await response.read()) > 100
    async with gateway.http.get(f"{gateway.url}/api/v1/docs/assets/..%2Fsecret") as response:
        assert response.status == 404


async def test_resource_templates_list(gateway: Gateway) -> None:
    _needs_everything(gateway)
    status, body = await _get(gateway, "/pools/everything/resources/templates")
    assert status == 200
    assert body["resourceTemplates"] and "uriTemplate" in body["resourceTemplates"][0]


async def test_admin_reads_stored_servers_and_rules(gateway: Gateway) -> None:
    status, servers = await _get(gateway, "/pools/echo/config/servers", key="admin")
    assert status == 200 and [s["name"] for s in servers] == ["one"]
    assert servers[0]["transport"] == "streamable_http"
    status, rules = await _get(gateway, "/pools/echo/rules", key="admin")
    assert (status, rules) == (200, [])
    status, body = await _get(gateway, "/pools/echo/rules", key="app")
    assert (status, error_of(body)) == (403, "admin_required")
