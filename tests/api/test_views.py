"""The rest of the REST API: pools, servers, tools, resources, prompts, config writes, OpenAPI."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async

from tests.api.conftest import error_of
from tests.api.gateway import Gateway, db_state
from tests.conftest import missing_prerequisite

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.upstream]


def _needs_everything(gw: Gateway) -> None:
    if "everything" not in gw.host.runtime.pools:
        missing_prerequisite("server-everything is not installed (make node)")


# ---- reads for apps --------------------------------------------------------------------


async def test_list_pools_shows_only_the_keys_pools_with_health(gateway: Gateway) -> None:
    status, pools = await gateway.get("/pools")
    assert status == 200
    slugs = [p["slug"] for p in pools]
    assert "echo" in slugs
    assert "other" not in slugs
    echo = next(p for p in pools if p["slug"] == "echo")
    assert echo["health"]["servers"] == 1
    assert echo["mcp_url"].endswith("/mcp/echo/")
    assert echo["health"]["status"] in ("up", "degraded", "down")


async def test_get_pool_of_another_key_is_403_and_unknown_is_404(gateway: Gateway) -> None:
    status, body = await gateway.get("/pools/other")
    assert (status, error_of(body)) == (403, "pool_forbidden")
    status, body = await gateway.get("/pools/nope", key="admin")
    assert (status, error_of(body)) == (404, "unknown_pool")


async def test_list_servers_shows_live_state(gateway: Gateway) -> None:
    status, servers = await gateway.get("/pools/echo/servers")
    assert status == 200
    assert [s["name"] for s in servers] == ["one"]
    assert servers[0]["state"] == "enabled"
    assert servers[0]["in_flight"] == 0


async def test_list_tools_merges_with_annotations(gateway: Gateway) -> None:
    status, body = await gateway.get("/pools/echo/tools")
    assert status == 200
    tools = {t["name"]: t for t in body["tools"]}
    assert tools["echo"]["annotations"]["readOnlyHint"] is True
    assert "inputSchema" in tools["add"]


async def test_reads_without_key_are_401(gateway: Gateway) -> None:
    for path in ("/pools", "/pools/echo/tools", "/pools/echo/servers"):
        status, body = await gateway.get(path, key=None)
        assert (status, error_of(body)) == (401, "missing_api_key")
    status, body = await gateway.get("/pools", key="revoked")
    assert (status, error_of(body)) == (401, "api_key_revoked")


async def test_resources_list_and_read(gateway: Gateway) -> None:
    _needs_everything(gateway)
    status, listing = await gateway.get("/pools/everything/resources")
    assert status == 200
    assert listing["resources"]
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
    status, listing = await gateway.get("/pools/everything/prompts")
    assert status == 200
    simple = next(
        p for p in listing["prompts"] if not any(a.get("required") for a in p.get("arguments", []))
    )
    status, prompt = await gateway.send(
        "POST", f"/pools/everything/prompts/{simple['name']}/get", {}, key="app"
    )
    assert status == 200, prompt
    assert prompt["messages"]


async def test_get_unknown_prompt_is_404_and_blames_no_server(gateway: Gateway) -> None:
    _needs_everything(gateway)
    status, body = await gateway.send("POST", "/pools/everything/prompts/nope/get", {}, key="app")
    assert (status, error_of(body)) == (404, "unknown_prompt")
    live = gateway.host.runtime.pool("everything")
    assert not any(
        ep.outlier.ejected(gateway.host.runtime.clock()) for ep in live.endpoints.values()
    )


async def test_resources_of_an_unreachable_pool_is_503(gateway: Gateway) -> None:
    status, body = await gateway.get("/pools/dead/resources")
    assert (status, error_of(body)) == (503, "no_healthy_server")
    assert await gateway.sessions_idle()


# ---- config writes for admin keys (the resources' contract: tests/api/test_config.py) ----------


async def test_admin_drains_a_pool_and_enables_a_server(gateway: Gateway) -> None:
    status, drained = await gateway.send("POST", "/pools/echo/drain")
    assert (status, drained) == (200, {"drained": 1})
    assert gateway.host.runtime.pool("echo").config.servers[0].state.value == "draining"
    status, state = await gateway.send(
        "POST", "/pools/echo/servers/one/state", {"state": "enabled"}
    )
    assert status == 200
    assert state["state"] == "enabled"
    assert gateway.host.runtime.pool("echo").config.servers[0].state.value == "enabled"


async def test_config_actions_need_the_pools_admin_scope(gateway: Gateway) -> None:
    before = await sync_to_async(db_state)()
    status, body = await gateway.send("POST", "/pools/echo/drain", key="scoped_admin")
    assert (status, error_of(body)) == (403, "pool_forbidden")
    status, body = await gateway.send(
        "POST", "/pools/echo/servers/one/state", {"state": "disabled"}, key="app"
    )
    assert (status, error_of(body)) == (403, "admin_required")
    assert await sync_to_async(db_state)() == before


async def test_config_write_with_bad_json_is_400(gateway: Gateway) -> None:
    before = await sync_to_async(db_state)()
    status, body = await gateway.send("POST", "/pools", raw=b'{"slug": ')
    assert (status, error_of(body)) == (400, "invalid_json")
    assert await sync_to_async(db_state)() == before


async def test_config_write_with_body_over_limit_is_413(gateway: Gateway, settings: Any) -> None:
    settings.MCPPOOL_MAX_BODY_BYTES = 1024
    before = await sync_to_async(db_state)()
    body = {"slug": "big", "name": "B", "description": "x" * 5000}
    status, answer = await gateway.send("POST", "/pools", body)
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
    assert "http://" not in page
    assert "https://" not in page
    for asset in ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-init.js"):
        assert f"/api/v1/docs/assets/{asset}" in page
        async with gateway.http.get(f"{gateway.url}/api/v1/docs/assets/{asset}") as response:
            assert response.status == 200
            assert len(await response.read()) > 100
    async with gateway.http.get(f"{gateway.url}/api/v1/docs/assets/..%2Fsecret") as response:
        assert response.status == 404


async def test_resource_templates_list(gateway: Gateway) -> None:
    _needs_everything(gateway)
    status, body = await gateway.get("/pools/everything/resources/templates")
    assert status == 200
    assert body["resourceTemplates"]
    assert "uriTemplate" in body["resourceTemplates"][0]
