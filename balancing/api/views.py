"""The REST API (`/api/v1/`): django-ninja async views over the live runtime.

Apps read pools, servers and tools from the runtime's memory and reach resources and prompts
through it; no app request touches the ORM. Admin-scoped keys change the config through the same
service functions the admin uses (via `balancing.adapter`), then reload this process's runtime so
the answer reflects the change at once; other processes follow within their poll interval.

The tool-call route is declared here for the OpenAPI document, but served by the raw-ASGI hot
path (`balancing.api.call`) that the router puts in front of Django: there is one call path, and
this declaration only answers `not_found` if something mounts Django without that router.
Config writes for admin keys are the resource layer of `balancing.api.config`.
"""

from __future__ import annotations

import time
from typing import Any, TypeVar

import orjson
from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.security import HttpBearer

from balancing import adapter
from balancing.api import config
from balancing.api.access import authenticate, charge, pool_for, started_host, visible_tools
from balancing.api.docs import LocalSwagger
from balancing.api.schemas import (
    CallIn,
    CallResult,
    ErrorBody,
    HealthSummary,
    PoolOut,
    PromptGetIn,
    ServerOut,
)
from balancing.engine.config import AdminState, Health, pool_status
from balancing.engine.errors import CallRejected, UpstreamError
from balancing.engine.runtime import LivePool
from balancing.errors_http import INVALID_PARAMS, ApiError, from_upstream
from balancing.host import RuntimeHost
from balancing.keys import KeyRecord

T = TypeVar("T")

# Error answers every operation can give, for the OpenAPI document.
ERRORS: dict[int, Any] = {s: ErrorBody for s in (400, 401, 403, 404, 429)}
UPSTREAM_ERRORS: dict[int, Any] = {**ERRORS, 502: ErrorBody, 503: ErrorBody, 504: ErrorBody}
RESOURCE_NOT_FOUND = -32002  # MCP's "resource not found"
PROMPT_NAMES_TTL = 10.0


class ApiKeyAuth(HttpBearer):
    """`Authorization: Bearer <api key>`, checked against the in-memory key cache."""

    async def __call__(self, request: HttpRequest) -> KeyRecord:
        host = await started_host()
        return await authenticate(host, request.headers.get("Authorization"))

    def authenticate(self, request: HttpRequest, token: str) -> Any:  # pragma: no cover
        raise NotImplementedError  # __call__ does the work, asynchronously


api = NinjaAPI(
    title="mcppool",
    version="1",
    description=(
        "Call MCP tools of pooled, health-checked, load-balanced MCP servers. Errors are "
        '`{"error": {"code", "message"}}` with a stable `code`.'
    ),
    urls_namespace="api-v1",
    auth=ApiKeyAuth(),
    docs=LocalSwagger(),
    docs_url="/docs",
    openapi_url="/openapi.json",
)


# ---- errors: one contract ---------------------------------------------------------------


def error_response(error: ApiError) -> HttpResponse:
    response = HttpResponse(error.body(), status=error.status, content_type="application/json")
    for name, value in error.headers:
        response[name.decode()] = value.decode()
    return response


@api.exception_handler(ApiError)
def _api_error(request: HttpRequest, exc: ApiError) -> HttpResponse:
    return error_response(exc)


@api.exception_handler(ValidationError)
def _validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    if any(e.get("type") == "json_invalid" for e in exc.errors):
        return error_response(ApiError("invalid_json", "the body is not valid JSON"))
    errors = [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
        for e in exc.errors
    ]
    return error_response(ApiError("invalid_request", "the request is not valid", errors=errors))


@api.exception_handler(AuthenticationError)
def _unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return error_response(ApiError("missing_api_key", "send 'Authorization: Bearer <api key>'"))


@api.exception_handler(Http404)
def _not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return error_response(ApiError("not_found", "no such endpoint"))


@api.exception_handler(UpstreamError)
def _upstream_error(request: HttpRequest, exc: UpstreamError) -> HttpResponse:
    return error_response(from_upstream(exc))


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    code = "invalid_json" if exc.status_code == 400 else "invalid_request"
    return error_response(ApiError(code, str(exc)))


def _key(request: HttpRequest) -> KeyRecord:
    return request.auth  # type: ignore[attr-defined,no-any-return]


async def _pool(request: HttpRequest, slug: str) -> tuple[RuntimeHost, LivePool]:
    host = await started_host()
    return host, pool_for(host, _key(request), slug)


def _json(value: Any, status: int = 200) -> HttpResponse:
    return HttpResponse(orjson.dumps(value), status=status, content_type="application/json")


# ---- for apps: pools, servers, tools ----------------------------------------------------


def health_summary(live: LivePool, now: float) -> HealthSummary:
    endpoints = list(live.endpoints.values())
    counts = {h: 0 for h in Health}
    for ep in endpoints:
        counts[Health.EJECTED if ep.outlier.ejected(now) else ep.config.health] += 1
    available = sum(1 for ep in endpoints if ep.available(now))
    draining = sum(1 for ep in endpoints if ep.config.state is AdminState.DRAINING)
    panic = live.balancer.panic_state(endpoints, now)
    return HealthSummary(
        servers=len(endpoints),
        available=available,
        up=counts[Health.UP] + counts[Health.RECOVERING],
        down=counts[Health.DOWN],
        ejected=counts[Health.EJECTED],
        unknown=counts[Health.UNKNOWN],
        draining=draining,
        status=pool_status(available, len(endpoints)),
        panic=panic.panic,
        panic_reason=panic.reason,
    )


def pool_out(request: HttpRequest, live: LivePool, now: float) -> PoolOut:
    config = live.config
    return PoolOut(
        slug=config.slug,
        name=config.name,
        session_mode=config.session_mode.value,
        strategy=config.strategy.value,
        mcp_url=request.build_absolute_uri(f"/mcp/{config.slug}/"),
        health=health_summary(live, now),
    )


@api.get("/pools", response={200: list[PoolOut], **ERRORS}, tags=["pools"])
async def list_pools(request: HttpRequest) -> list[PoolOut]:
    """The pools this key may use, with a health summary each."""
    host = await started_host()
    key, now = _key(request), host.runtime.clock()
    return [
        pool_out(request, live, now)
        for slug, live in sorted(host.runtime.pools.items())
        if key.may_use(slug)
    ]


@api.get("/pools/{slug}", response={200: PoolOut, **ERRORS}, tags=["pools"])
async def get_pool(request: HttpRequest, slug: str) -> PoolOut:
    host, live = await _pool(request, slug)
    return pool_out(request, live, host.runtime.clock())


@api.get("/pools/{slug}/servers", response={200: list[ServerOut], **ERRORS}, tags=["pools"])
async def list_servers(request: HttpRequest, slug: str) -> list[ServerOut]:
    """The pool's servers as this process's runtime sees them (health, load, sessions)."""
    host, live = await _pool(request, slug)
    now = host.runtime.clock()
    servers = []
    for ep in sorted(live.endpoints.values(), key=lambda e: (e.config.priority, e.config.name)):
        sessions = live.sessions.get(ep.id)
        servers.append(
            ServerOut(
                name=ep.config.name,
                transport=ep.config.transport.value,
                priority=ep.config.priority,
                weight=ep.config.weight,
                state=ep.config.state.value,
                health=ep.config.health.value,
                available=ep.available(now),
                ejected_here=ep.outlier.ejected(now),
                in_flight=ep.stats.in_flight,
                sessions=sessions.counts() if sessions is not None else {},
                tools=len(ep.tools) if ep.tools is not None else None,
            )
        )
    return servers


@api.get("/pools/{slug}/tools", response={200: dict[str, Any], **UPSTREAM_ERRORS}, tags=["tools"])
async def list_tools(request: HttpRequest, slug: str) -> HttpResponse:
    """The pool's tools, merged from its servers, with their annotations (MCP `Tool` objects)."""
    host, _ = await _pool(request, slug)
    tools = await host.runtime.list_tools(slug)
    return _json({"tools": visible_tools(host, _key(request), slug, tools)})


@api.post(
    "/pools/{slug}/tools/{name}/call",
    response={200: CallResult, 413: ErrorBody, **UPSTREAM_ERRORS},
    tags=["tools"],
    operation_id="call_tool",
)
async def call_tool(request: HttpRequest, slug: str, name: str, body: CallIn) -> HttpResponse:
    """Call a tool on a healthy server of the pool (balanced, with affinity and retries).

    A tool that ran and failed answers 200 with `isError: true`. Send `Accept: text/event-stream`
    to receive `progress` and `log` events while it runs, then a `result` (or `error`) event.
    Served by the gateway's raw-ASGI hot path; this declaration documents it.
    """
    # Only reached when Django is mounted without the gateway's ASGI router; one call path only.
    raise ApiError("not_found", "tool calls are served by the gateway's ASGI router (mcppool.asgi)")


# ---- for apps: resources and prompts ------------------------------------------------------


async def _forward(
    host: RuntimeHost, live: LivePool, key: KeyRecord, method: str, params: dict[str, Any] | None
) -> dict[str, Any]:
    await charge(host, key, live)
    return await host.runtime.request(live.config.slug, method, params)


def _page(cursor: str | None) -> dict[str, Any] | None:
    return {"cursor": cursor} if cursor else None


@api.get(
    "/pools/{slug}/resources", response={200: dict[str, Any], **UPSTREAM_ERRORS}, tags=["resources"]
)
async def list_resources(
    request: HttpRequest, slug: str, cursor: str | None = None
) -> HttpResponse:
    """The pool's resources (MCP `resources/list`; pass `nextCursor` back as `cursor`)."""
    host, live = await _pool(request, slug)
    return _json(await _forward(host, live, _key(request), "resources/list", _page(cursor)))


@api.get(
    "/pools/{slug}/resources/templates",
    response={200: dict[str, Any], **UPSTREAM_ERRORS},
    tags=["resources"],
)
async def list_resource_templates(
    request: HttpRequest, slug: str, cursor: str | None = None
) -> HttpResponse:
    """The pool's resource templates (MCP `resources/templates/list`)."""
    host, live = await _pool(request, slug)
    method = "resources/templates/list"
    return _json(await _forward(host, live, _key(request), method, _page(cursor)))


@api.get(
    "/pools/{slug}/resources/read",
    response={200: dict[str, Any], **UPSTREAM_ERRORS},
    tags=["resources"],
)
async def read_resource(request: HttpRequest, slug: str, uri: str) -> HttpResponse:
    """One resource's contents (MCP `resources/read`)."""
    host, live = await _pool(request, slug)
    try:
        return _json(await _forward(host, live, _key(request), "resources/read", {"uri": uri}))
    except CallRejected as exc:
        if exc.code in (INVALID_PARAMS, RESOURCE_NOT_FOUND):
            raise ApiError("unknown_resource", f"no resource {uri!r} in pool {slug!r}") from None
        raise


@api.get(
    "/pools/{slug}/prompts", response={200: dict[str, Any], **UPSTREAM_ERRORS}, tags=["prompts"]
)
async def list_prompts(request: HttpRequest, slug: str, cursor: str | None = None) -> HttpResponse:
    """The pool's prompts (MCP `prompts/list`)."""
    host, live = await _pool(request, slug)
    return _json(await _forward(host, live, _key(request), "prompts/list", _page(cursor)))


_prompt_names: dict[str, tuple[float, frozenset[str]]] = {}


async def _known_prompt(host: RuntimeHost, slug: str, name: str) -> bool:
    """Whether the pool lists prompt `name` (cached briefly). Asked before forwarding because
    some servers answer an unknown prompt with an *internal* error, which passive health would
    count against them: a typo in an app must not eject a server."""
    now = time.monotonic()
    cached = _prompt_names.get(slug)
    if cached is not None and cached[0] > now and name in cached[1]:
        return True
    names: set[str] = set()
    cursor: str | None = None
    for _ in range(20):
        page = await host.runtime.request(slug, "prompts/list", _page(cursor))
        names.update(
            p["name"] for p in page.get("prompts", []) if isinstance(p, dict) and "name" in p
        )
        cursor = page.get("nextCursor")
        if not cursor:
            break
    _prompt_names[slug] = (now + PROMPT_NAMES_TTL, frozenset(names))
    return name in names


@api.post(
    "/pools/{slug}/prompts/{name}/get",
    response={200: dict[str, Any], **UPSTREAM_ERRORS},
    tags=["prompts"],
)
async def get_prompt(request: HttpRequest, slug: str, name: str, body: PromptGetIn) -> HttpResponse:
    """A prompt filled in with `arguments` (MCP `prompts/get`)."""
    host, live = await _pool(request, slug)
    await charge(host, _key(request), live)
    if not await _known_prompt(host, slug, name):
        raise ApiError("unknown_prompt", f"pool {slug!r} has no prompt {name!r}")
    params = {"name": name, "arguments": body.arguments}
    return _json(await host.runtime.request(slug, "prompts/get", params))


# ---- for automation: admin-scoped keys change the config (balancing.api.config) ------------


@api.exception_handler(adapter.ConfigError)
def _config_error(request: HttpRequest, exc: adapter.ConfigError) -> HttpResponse:
    return error_response(config.config_error(exc))


config.register(api)
