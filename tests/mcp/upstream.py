"""A protocol-faithfulness test upstream: what the gateway must pass on, observable from outside.

    python -m tests.mcp.upstream --port 8123 --name r1

An mcp SDK 2.3.0 `MCPServer` (both eras) over Streamable HTTP. It shows what reached it
(`whoami`: the request's `_meta`, the client's name and the headers of interest), asks for input
the 2026 way (`sampled`: a `Sample` resolver, an `input_required` round trip whose state only this
process can open; `asked`: an elicitation, its decline or cancel reported; `interview`: two
rounds, an elicitation then sampling built from its answer; `rooted`: the client's roots; to a
handshake-era client each is a server→client request mid-call), mirrors a parameter into a
header (`regional`: `x-mcp-header`), fails with MCP's own errors (`gone` and the `missing://`
resource: -32002 with `data.uri`; `reject`: any code), gives caching hints (`prompts/list`
public, `resources/list` private) and counts the requests it was sent (`counts`, by
`Mcp-Method`), so a test can tell a cached answer from a forwarded one. It announces changes
(`touch`: a resource updated; `retool`: its tool list changed) to every `subscriptions/listen`
stream and to every handshake-era session that `resources/subscribe`d, as a server whose state
other clients change does.
"""

from __future__ import annotations

import argparse
import contextlib
from collections import Counter
from typing import Annotated, Any

import anyio
import mcp_types as types
import uvicorn
from mcp.server import ServerRequestContext
from mcp.server.caching import CacheHint
from mcp.server.mcpserver import (
    AcceptedElicitation,
    Context,
    Elicit,
    ElicitationResult,
    ListRoots,
    MCPServer,
    Resolve,
    Sample,
)
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Receive, Scope, Send

NAME = ["proto"]
SEEN: Counter[str] = Counter()
_HEADERS_SHOWN = ("traceparent", "tracestate", "mcp-param-region", "mcp-protocol-version")

mcp: MCPServer[Any] = MCPServer(
    "proto",
    cache_hints={
        "prompts/list": CacheHint(ttl_ms=60_000, scope="public"),
        "resources/list": CacheHint(ttl_ms=60_000, scope="private"),
    },
)


@mcp.tool()
async def whoami(ctx: Context) -> dict[str, Any]:
    """Which replica answered, and what reached it of the client's request."""
    headers = ctx.headers or {}
    client = ctx.session.client_params
    return {
        "name": NAME[0],
        "meta": dict(ctx.request_context.meta or {}),
        "headers": {k: v for k, v in headers.items() if k in _HEADERS_SHOWN},
        "protocol_version": ctx.protocol_version,
        "client_name": client.client_info.name if client is not None else None,
    }


def _ask(prompt: str) -> Sample:
    text = types.TextContent(type="text", text=prompt)
    return Sample([types.SamplingMessage(role="user", content=text)], max_tokens=16)


@mcp.tool()
async def sampled(prompt: str, answer: Annotated[types.CreateMessageResult, Resolve(_ask)]) -> str:
    """Ask the client's model (an input_required round trip on the 2026 wire)."""
    content = answer.content
    text = content.text if isinstance(content, types.TextContent) else str(content)
    return f"{NAME[0]}:{text}"


class Name(BaseModel):
    name: str


def _ask_name() -> Elicit[Name]:
    return Elicit("Who is asking?", Name)


def _outcome(answer: ElicitationResult[Name]) -> str:
    if isinstance(answer, AcceptedElicitation):
        return f"accepted {answer.data.name}"
    return answer.action


@mcp.tool()
async def asked(answer: Annotated[ElicitationResult[Name], Resolve(_ask_name)]) -> str:
    """Ask the user their name (elicitation): accepted, declined or cancelled."""
    return f"{NAME[0]}:{_outcome(answer)}"


def _ask_after_name(who: Annotated[ElicitationResult[Name], Resolve(_ask_name)]) -> Sample:
    # depends on the elicitation's outcome: a second round, after the first is answered
    return _ask(f"greet {_outcome(who)}")


@mcp.tool()
async def interview(answer: Annotated[types.CreateMessageResult, Resolve(_ask_after_name)]) -> str:
    """Two rounds: an elicitation, then a sampling request built from its answer."""
    content = answer.content
    text = content.text if isinstance(content, types.TextContent) else str(content)
    return f"{NAME[0]}:{text}"


@mcp.tool()
async def chatty(
    prompt: str, ctx: Context, answer: Annotated[types.CreateMessageResult, Resolve(_ask)]
) -> str:
    """Ask the client's model, then log what it said and report progress."""
    content = answer.content
    text = content.text if isinstance(content, types.TextContent) else str(content)
    await ctx.info(f"the model said {text}")
    await ctx.report_progress(1, 1)
    return f"{NAME[0]}:{text}"


@mcp.tool()
async def impatient(ctx: Context) -> str:
    """Ask the client's model mid-call (handshake era), but give up waiting after 0.2 s."""
    ask = types.SamplingMessage(role="user", content=types.TextContent(type="text", text="quick"))
    try:
        with anyio.fail_after(0.2):
            await ctx.session.create_message(
                messages=[ask], max_tokens=8, related_request_id=ctx.request_id
            )
    except TimeoutError:
        return f"{NAME[0]}:gave up waiting"
    return f"{NAME[0]}:answered in time"


def _roots() -> ListRoots:
    return ListRoots()


@mcp.tool()
async def rooted(roots: Annotated[types.ListRootsResult, Resolve(_roots)]) -> list[str]:
    """The client's roots (roots/list)."""
    return [str(root.uri) for root in roots.roots]


@mcp.tool()
async def regional(
    region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})],
) -> str:
    """A parameter mirrored into the `Mcp-Param-Region` header (the server checks they agree)."""
    return f"region {region}"


@mcp.tool()
async def gone(uri: str) -> str:
    """Fail with MCP's "resource not found" (-32002) naming the uri."""
    raise MCPError(code=-32002, message="Resource not found", data={"uri": uri})


@mcp.tool()
async def reject(code: int) -> str:
    """Answer the call with a JSON-RPC error of this code."""
    raise MCPError(code=code, message=f"rejected with {code}", data={"asked": code})


@mcp.tool()
async def counts() -> dict[str, int]:
    """Requests this process was sent, by `Mcp-Method` (2026 wire)."""
    return dict(SEEN)


@mcp.resource("missing://{name}")
async def missing(name: str) -> str:
    raise MCPError(code=-32002, message="Resource not found", data={"uri": f"missing://{name}"})


@mcp.resource("static://hello")
async def hello() -> str:
    return "hello"


@mcp.prompt()
async def greet(who: str) -> str:
    return f"Hello {who}"


# Handshake-era sessions by the URIs they subscribed to, by session id (the 2026 wire has listen
# streams instead).
WATCHERS: dict[str, dict[str, Any]] = {}


@mcp.tool()
async def touch(uri: str, ctx: Context) -> str:
    """Announce that `uri` changed: to listen streams that asked for it and to subscribed
    handshake-era sessions."""
    await ctx.notify_resource_updated(uri)
    for session in list(WATCHERS.get(uri, {}).values()):
        with contextlib.suppress(Exception):  # a session that went away
            await session.send_resource_updated(uri)
    return f"{NAME[0]}:touched {uri}"


@mcp.tool()
async def retool(ctx: Context) -> str:
    """Announce that the tool list changed: to listen streams that asked and to every
    handshake-era session that subscribed to anything."""
    await ctx.notify_tools_changed()
    for session in {id(s): s for by_id in WATCHERS.values() for s in by_id.values()}.values():
        with contextlib.suppress(Exception):
            await session.send_tool_list_changed()
    return f"{NAME[0]}:retooled"


async def _subscribe(
    ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams
) -> types.EmptyResult:
    WATCHERS.setdefault(str(params.uri), {})[_session_id(ctx)] = ctx.session
    return types.EmptyResult()


async def _unsubscribe(
    ctx: ServerRequestContext[Any, Any], params: types.UnsubscribeRequestParams
) -> types.EmptyResult:
    WATCHERS.get(str(params.uri), {}).pop(_session_id(ctx), None)
    return types.EmptyResult()


def _session_id(ctx: ServerRequestContext[Any, Any]) -> str:
    request = ctx.request
    headers = getattr(request, "headers", None) or {}
    return str(headers.get("mcp-session-id", "stdio"))


@mcp.tool()
async def watchers() -> dict[str, int]:
    """Handshake-era sessions subscribed, per URI (so a test sees unsubscribing)."""
    return {uri: len(sessions) for uri, sessions in WATCHERS.items() if sessions}


mcp._lowlevel_server.add_request_handler(
    "resources/subscribe", types.SubscribeRequestParams, _subscribe
)
mcp._lowlevel_server.add_request_handler(
    "resources/unsubscribe", types.UnsubscribeRequestParams, _unsubscribe
)


class CountRequests:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            for name, value in scope["headers"]:
                if name == b"mcp-method":
                    SEEN[value.decode("latin-1")] += 1
        await self.app(scope, receive, send)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="proto")
    # answer on SSE streams: a handshake-era client can then be sent requests mid-call
    parser.add_argument("--sse", action="store_true")
    args = parser.parse_args()
    NAME[0] = args.name
    app = CountRequests(mcp.streamable_http_app(json_response=not args.sse))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
