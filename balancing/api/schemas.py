"""Request and response shapes of the REST API, as the OpenAPI document describes them."""

from __future__ import annotations

from typing import Any, Literal

from ninja import Schema
from pydantic import ConfigDict, Field, create_model

from balancing import adapter
from balancing.engine.config import PoolStatus


class Error(Schema):
    code: str = Field(description="Stable machine-readable code, e.g. `unknown_pool`")
    message: str


class ErrorBody(Schema):
    error: Error


class HealthSummary(Schema):
    servers: int
    available: int = Field(description="Servers taking new calls now (enabled, up, not ejected)")
    up: int
    down: int
    ejected: int
    unknown: int
    draining: int
    status: PoolStatus
    panic: bool = Field(
        description="Too few healthy servers: calls are spread over all of them (panic mode)"
    )
    panic_reason: str = Field(description="Why the pool is in panic; empty when it is not")


class PoolOut(Schema):
    slug: str
    name: str
    session_mode: str
    strategy: str
    mcp_url: str = Field(description="This pool's MCP endpoint (Streamable HTTP)")
    health: HealthSummary


class ServerOut(Schema):
    name: str
    transport: str
    priority: int
    weight: int
    state: str = Field(description="Operator's wish: enabled, draining or disabled")
    health: str = Field(description="Last recorded health: unknown, up, down, ejected, recovering")
    available: bool
    ejected_here: bool = Field(description="Ejected by this process's passive outlier detection")
    in_flight: int
    sessions: dict[str, int]
    tools: int | None = Field(description="Tools this server lists (null: not listed yet)")


class CallIn(Schema):
    model_config = ConfigDict(extra="forbid")
    arguments: dict[str, Any] = Field(default_factory=dict, description="The tool's arguments")
    timeout: float | None = Field(
        default=None, gt=0, description="Seconds; capped by the pool's call timeout"
    )
    affinity_key: str | None = Field(
        default=None, description="Sent as the client id to the pool's affinity rules"
    )


class CallResult(Schema):
    """The tool's MCP `CallToolResult`, as the upstream sent it."""

    model_config = ConfigDict(extra="allow")
    content: list[dict[str, Any]]
    structuredContent: dict[str, Any] | None = None
    isError: bool = False


class PromptGetIn(Schema):
    model_config = ConfigDict(extra="forbid")
    arguments: dict[str, str] = Field(default_factory=dict)


class ServerStateIn(Schema):
    state: Literal["enabled", "draining", "disabled"]


class _PoolNamesIn(Schema):
    model_config = ConfigDict(extra="forbid")
    slug: str | None = None
    name: str | None = None
    description: str | None = None
    strategy: Literal["round_robin", "least_connections", "health_based"] | None = None
    session_mode: Literal["shared", "sticky"] | None = None
    retry_policy: Literal["safe", "undelivered", "never"] | None = None


# Pool fields (create: `slug` and `name` required; update: any subset): the names above and every
# tuning knob of the model, typed from it, so a knob added to the model is accepted here too (REST
# takes every field the admin and YAML take; a test compares with the service's field list).
PoolIn = create_model(
    "PoolIn",
    __base__=_PoolNamesIn,
    **{name: (kind | None, None) for name, kind in adapter.POOL_TUNING_TYPES.items()},  # type: ignore[call-overload]
)


class ServerIn(Schema):
    """Server fields (create: `name` and `transport` required; update: any subset)."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    transport: Literal["streamable_http", "stdio"] | None = None
    url: str | None = None
    headers: dict[str, str] | None = None
    command: str | None = None
    args: list[str] | None = None
    env: dict[str, str] | None = None
    cwd: str | None = None
    weight: int | None = None
    priority: int | None = None
    state: Literal["enabled", "draining", "disabled"] | None = None
    max_in_flight: int | None = None
    era: Literal["auto", "handshake", "modern"] | None = None


class RuleIn(Schema):
    model_config = ConfigDict(extra="forbid")
    order: int | None = None
    match_on: Literal["api_key", "header", "client_id", "tool"] | None = None
    header: str | None = None
    match_type: Literal["exact", "prefix", "regex"] | None = None
    pattern: str | None = None
    action: Literal["pin", "hash"] | None = None
    pin_server: str | None = Field(default=None, description="Server name, for action=pin")
    enabled: bool | None = None
    description: str | None = None


def given(schema: Schema) -> dict[str, Any]:
    """The fields the client actually sent (an update changes only those)."""
    return schema.model_dump(exclude_unset=True)
