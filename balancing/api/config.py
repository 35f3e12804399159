"""The config resources of the REST API (pools, servers, affinity rules), each declared once.

One table row per resource says where it lives and which service function does each operation;
`register` turns every row into the same five routes (create, read, list, update, delete), so
scope checks, the thread hop to the ORM, the reload of this process's runtime and the error
mapping exist once. Writes go through `servers.services` (via `balancing.adapter`), which raises
`ConfigError`s; `config_error` is their one translation into the API's error contract.

Admin keys are scoped: a key configures only the pools it lists, or every pool when it was
created for all pools; creating a pool needs an all-pools admin key (docs/security.md).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI, Path, Schema

from balancing import adapter
from balancing.api.access import started_host
from balancing.api.schemas import ErrorBody, PoolIn, RuleIn, ServerIn, ServerStateIn, given
from balancing.errors_http import ApiError
from balancing.keys import KeyRecord

ERRORS: dict[int, Any] = {s: ErrorBody for s in (400, 401, 403, 404, 409, 429)}


class NoKey(Schema):
    pass


class PoolKey(Schema):
    slug: str


class ServerKey(Schema):
    slug: str
    name: str


class RuleKey(Schema):
    slug: str
    rule_id: int


@dataclass(frozen=True)
class ConfigResource:
    name: str
    collection: str  # POST here creates; GET `listing` lists
    item: str  # PATCH and DELETE here
    read_path: str  # GET one stored object
    listing: str | None
    body: type[Schema]
    parent: type[Schema]  # the collection's path parameters
    key: type[Schema]  # one object's path parameters
    create: Callable[..., dict[str, Any]]  # (*parent, fields)
    read: Callable[..., dict[str, Any]]  # (*key)
    update: Callable[..., dict[str, Any]]  # (*key, fields)
    delete: Callable[..., None]  # (*key)
    list: Callable[..., list[dict[str, Any]]] | None = None  # (*parent)


RESOURCES = (
    ConfigResource(
        "pool", "/pools", "/pools/{slug}", "/pools/{slug}/config", None, PoolIn, NoKey, PoolKey,
        adapter.create_pool, adapter.read_pool, adapter.update_pool, adapter.delete_pool,
    ),
    ConfigResource(
        "server", "/pools/{slug}/servers", "/pools/{slug}/servers/{name}",
        "/pools/{slug}/config/servers/{name}", "/pools/{slug}/config/servers", ServerIn, PoolKey,
        ServerKey, adapter.create_server, adapter.read_server, adapter.update_server,
        adapter.delete_server, adapter.list_servers,
    ),
    ConfigResource(
        "rule", "/pools/{slug}/rules", "/pools/{slug}/rules/{rule_id}",
        "/pools/{slug}/rules/{rule_id}", "/pools/{slug}/rules", RuleIn, PoolKey, RuleKey,
        adapter.create_rule, adapter.read_rule, adapter.update_rule, adapter.delete_rule,
        adapter.list_rules,
    ),
)  # fmt: skip


def require_scope(key: KeyRecord, slug: str | None) -> None:
    """May this key configure pool `slug` (None: create a new pool)?"""
    if not key.is_admin:
        raise ApiError("admin_required", "this API key may not change the config")
    if slug is None and not key.all_pools:
        raise ApiError("admin_required", "creating a pool needs an admin key for all pools")
    if slug is not None and not key.may_use(slug):
        raise ApiError("pool_forbidden", f"this admin key may not configure pool {slug!r}")


def config_error(exc: adapter.ConfigError) -> ApiError:
    """The one translation of the service layer's errors into the API's error contract."""
    if isinstance(exc, adapter.NotFound):
        return ApiError(f"unknown_{exc.kind}", exc.message)
    if isinstance(exc, adapter.ConfigConflict):
        return ApiError("conflict", exc.message, **exc.details)
    if isinstance(exc, adapter.ApiWriteRefused):
        return ApiError("stdio_forbidden", exc.message)
    return ApiError("invalid_request", exc.message, **exc.details)


async def run_config(
    request: HttpRequest, slug: str | None, fn: Callable[..., Any], *args: Any, write: bool = True
) -> Any:
    """Check the key's scope, run one service call (in a thread: the ORM is sync) and, for a
    write, apply it to this process's runtime now (other processes follow on their next poll)."""
    require_scope(request.auth, slug)  # type: ignore[attr-defined]
    host = await started_host()
    result = await sync_to_async(fn)(*args)
    if write:
        await host.reload(if_newer_than=host.runtime.version)
    return result


def json_response(value: Any, status: int = 200) -> HttpResponse:
    if value is None:
        return HttpResponse(status=204)
    return HttpResponse(orjson.dumps(value), status=status, content_type="application/json")


Handler = Callable[..., Awaitable[HttpResponse]]


def _route(
    api: NinjaAPI,
    method: str,
    url: str,
    operation_id: str,
    params: dict[str, Any],
    status: int,
    run: Callable[[HttpRequest, dict[str, Any], Any], Awaitable[Any]],
) -> None:
    """Register one route whose signature (what ninja reads for parsing and OpenAPI) is built
    from `params`: `path` (a schema of path parameters) and/or `body` (the body's schema)."""

    async def handler(request: HttpRequest, **kwargs: Any) -> HttpResponse:
        path = kwargs["path"].model_dump() if "path" in kwargs else {}
        body = given(kwargs["body"]) if "body" in kwargs else None
        return json_response(await run(request, path, body), status)

    request_param = inspect.Parameter(
        "request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=HttpRequest
    )
    handler.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [request_param]
        + [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation)
            for name, annotation in params.items()
        ]
    )
    handler.__name__ = operation_id
    responses = {status: (None if status == 204 else Any), **ERRORS}
    api.api_operation(
        [method], url, response=responses, tags=["config"], operation_id=operation_id
    )(handler)


def _path(schema: type[Schema]) -> dict[str, Any]:
    return {"path": Path[schema]} if schema.model_fields else {}  # type: ignore[valid-type,misc]


def register(api: NinjaAPI) -> None:
    """The routes of every config resource and of the two config actions."""
    for r in RESOURCES:
        _register(api, r)
    _register_actions(api)


def _register(api: NinjaAPI, r: ConfigResource) -> None:
    def creating(request: HttpRequest, path: dict[str, Any], body: Any) -> Awaitable[Any]:
        return run_config(request, path.get("slug"), r.create, *path.values(), body)

    def reading(request: HttpRequest, path: dict[str, Any], body: Any) -> Awaitable[Any]:
        return run_config(request, path["slug"], r.read, *path.values(), write=False)

    def updating(request: HttpRequest, path: dict[str, Any], body: Any) -> Awaitable[Any]:
        return run_config(request, path["slug"], r.update, *path.values(), body)

    def deleting(request: HttpRequest, path: dict[str, Any], body: Any) -> Awaitable[Any]:
        return run_config(request, path["slug"], r.delete, *path.values())

    parent, key = _path(r.parent), _path(r.key)
    body = {"body": r.body}
    _route(api, "POST", r.collection, f"create_{r.name}", {**parent, **body}, 201, creating)
    _route(api, "GET", r.read_path, f"read_{r.name}", key, 200, reading)
    _route(api, "PATCH", r.item, f"update_{r.name}", {**key, **body}, 200, updating)
    _route(api, "DELETE", r.item, f"delete_{r.name}", key, 204, deleting)
    if r.listing is not None and r.list is not None:
        listing = r.list

        def listing_run(request: HttpRequest, path: dict[str, Any], body: Any) -> Awaitable[Any]:
            return run_config(request, path["slug"], listing, *path.values(), write=False)

        _route(api, "GET", r.listing, f"list_{r.name}s", parent, 200, listing_run)


def _register_actions(api: NinjaAPI) -> None:
    """The two config actions that are not plain resource writes."""

    async def drain(request: HttpRequest, path: dict[str, Any], body: Any) -> Any:
        return {
            "drained": await run_config(request, path["slug"], adapter.drain_pool, path["slug"])
        }

    def state(request: HttpRequest, path: dict[str, Any], body: Any) -> Awaitable[Any]:
        slug, name = path["slug"], path["name"]
        return run_config(request, slug, adapter.set_server_state, slug, name, body["state"])

    _route(api, "POST", "/pools/{slug}/drain", "drain_pool", _path(PoolKey), 200, drain)
    _route(
        api, "POST", "/pools/{slug}/servers/{name}/state", "set_server_state",
        {**_path(ServerKey), "body": ServerStateIn}, 200, state,
    )  # fmt: skip
