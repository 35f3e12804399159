"""One contract for every config resource of the REST API (pools, servers, affinity rules):
create, read, update, delete, bad input and wrong scope, as NetBox's API test mixins do.

Each resource is described once (`CONTRACTS`); every test runs over all of them, so a resource
added to `balancing.api.config` without a row here is caught by
`test_every_config_resource_has_a_contract`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from ninja import Schema

from balancing import adapter
from balancing.api import config
from balancing.api.schemas import PoolIn, RuleIn, ServerIn
from servers.models import Pool
from tests.api.conftest import error_of
from tests.api.gateway import Gateway, db_state

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.upstream]


@dataclass(frozen=True)
class Contract:
    name: str
    collection: str  # under pool "echo" (pools: the top level)
    create: Callable[[Gateway], dict[str, Any]]
    item: Callable[[dict[str, Any]], str]  # the created object's URL, from its answer
    read: Callable[[dict[str, Any]], str]
    update: dict[str, Any]
    bad: dict[str, Any]  # a create body the model refuses


def _server_url(gw: Gateway) -> str:
    return gw.host.runtime.pool("echo").config.servers[0].url


CONTRACTS = {
    "pool": Contract(
        "pool",
        "/pools",
        lambda gw: {"slug": "new", "name": "New", "rate_limit_per_minute": 30},
        lambda obj: f"/pools/{obj['slug']}",
        lambda obj: f"/pools/{obj['slug']}/config",
        {"strategy": "least_connections", "rate_limit_per_minute": 60},
        {"slug": "bad slug!", "name": "B"},
    ),
    "server": Contract(
        "server",
        "/pools/echo/servers",
        lambda gw: {"name": "b", "transport": "streamable_http", "url": _server_url(gw)},
        lambda obj: f"/pools/echo/servers/{obj['name']}",
        lambda obj: f"/pools/echo/config/servers/{obj['name']}",
        {"weight": 5, "priority": 2},
        {"name": "s", "transport": "streamable_http", "url": "ftp://x"},  # not an HTTP URL
    ),
    "rule": Contract(
        "rule",
        "/pools/echo/rules",
        lambda gw: {"order": 7, "match_on": "tool", "pattern": "echo", "action": "hash"},
        lambda obj: f"/pools/echo/rules/{obj['id']}",
        lambda obj: f"/pools/echo/rules/{obj['id']}",
        {"enabled": False, "pattern": "add"},
        {"order": 1, "match_on": "tool", "pattern": "x", "action": "pin", "pin_server": "nope"},
    ),
}
resources = pytest.mark.parametrize("contract", list(CONTRACTS.values()), ids=list(CONTRACTS))


def test_every_config_resource_has_a_contract() -> None:
    assert sorted(r.name for r in config.RESOURCES) == sorted(CONTRACTS)


async def _create(gw: Gateway, contract: Contract) -> dict[str, Any]:
    status, created = await gw.send("POST", contract.collection, contract.create(gw))
    assert status == 201, created
    return created  # type: ignore[no-any-return]


@resources
async def test_config_resource_create_read_update_delete(
    gateway: Gateway, contract: Contract
) -> None:
    # given an admin key for all pools
    body = contract.create(gateway)
    # when it creates the object, it reads back what it sent
    created = await _create(gateway, contract)
    assert {k: created[k] for k in body} == body
    status, read = await gateway.get(contract.read(created), key="admin")
    assert (status, read) == (200, created)
    # an update changes the fields sent and nothing else
    status, updated = await gateway.send("PATCH", contract.item(created), contract.update)
    assert status == 200, updated
    assert updated == {**created, **contract.update}
    assert (await gateway.get(contract.read(created), key="admin")) == (200, updated)
    # a delete makes it unknown
    assert (await gateway.send("DELETE", contract.item(created)))[0] == 204
    status, gone = await gateway.get(contract.read(created), key="admin")
    assert (status, error_of(gone)) == (404, f"unknown_{contract.name}")


async def test_pool_writes_reach_the_runtime_at_once(gateway: Gateway) -> None:
    created = await _create(gateway, CONTRACTS["pool"])
    assert gateway.host.runtime.pool("new").config.rate_limit_per_minute == 30
    await gateway.send("PATCH", "/pools/new", {"rate_limit_per_minute": 60})
    assert gateway.host.runtime.pool("new").config.rate_limit_per_minute == 60
    await gateway.send("DELETE", f"/pools/{created['slug']}")
    assert "new" not in gateway.host.runtime.pools


@resources
async def test_config_resource_bad_input_is_400_and_changes_nothing(
    gateway: Gateway, contract: Contract
) -> None:
    before = await sync_to_async(db_state)()
    for body in (contract.bad, {**contract.create(gateway), "colour": "red"}):
        status, answer = await gateway.send("POST", contract.collection, body)
        assert (status, error_of(answer)) == (400, "invalid_request"), body
    assert await sync_to_async(db_state)() == before


@resources
async def test_config_resource_unknown_object_is_404_and_changes_nothing(
    gateway: Gateway, contract: Contract
) -> None:
    before = await sync_to_async(db_state)()
    missing = contract.item({"slug": "nope", "name": "nope", "id": 999})
    status, answer = await gateway.send("PATCH", missing, contract.update)
    assert (status, error_of(answer)) == (404, f"unknown_{contract.name}")
    status, answer = await gateway.send("DELETE", missing)
    assert (status, error_of(answer)) == (404, f"unknown_{contract.name}")
    assert await sync_to_async(db_state)() == before


@resources
async def test_config_resource_wrong_scope_is_403_and_changes_nothing(
    gateway: Gateway, contract: Contract
) -> None:
    # given an object in pool "echo", and an admin key scoped to pool "other" only
    created = await _create(gateway, contract)
    before = await sync_to_async(db_state)()
    attempts = [
        ("POST", contract.collection, contract.create(gateway)),
        ("GET", contract.read(created), None),
        ("PATCH", contract.item(created), contract.update),
        ("DELETE", contract.item(created), None),
    ]
    for method, path, body in attempts:
        # then the scoped admin key is refused, and so is an app key
        status, answer = await gateway.send(method, path, body, key="scoped_admin")
        want = "admin_required" if (contract.name, method) == ("pool", "POST") else "pool_forbidden"
        assert (status, error_of(answer)) == (403, want), (method, path)
        status, answer = await gateway.send(method, path, body, key="app")
        assert (status, error_of(answer)) == (403, "admin_required"), (method, path)
    # and nothing changed
    assert await sync_to_async(db_state)() == before


async def test_scoped_admin_key_configures_its_own_pool(gateway: Gateway) -> None:
    status, pool = await gateway.send("PATCH", "/pools/other", {"fall": 5}, key="scoped_admin")
    assert (status, pool["fall"]) == (200, 5)
    status, servers = await gateway.get("/pools/other/config/servers", key="scoped_admin")
    assert status == 200
    assert [s["name"] for s in servers] == ["one"]
    status, servers = await gateway.get("/pools/echo/config/servers", key="scoped_admin")
    assert (status, error_of(servers)) == (403, "pool_forbidden")
    assert await Pool.objects.filter(slug="other", fall=5).aexists()


@pytest.mark.parametrize(
    ("schema", "fields"),
    [
        (PoolIn, adapter.POOL_FIELDS),
        (ServerIn, adapter.SERVER_FIELDS),
        (RuleIn, adapter.RULE_FIELDS),
    ],
)
def test_rest_accepts_every_field_the_admin_and_yaml_accept(
    schema: type[Schema], fields: tuple[str, ...]
) -> None:
    assert set(schema.model_fields) == set(fields)
