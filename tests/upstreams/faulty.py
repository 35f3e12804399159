"""A small MCP server that misbehaves on command, for tests and benchmarks.

    python -m tests.upstreams.faulty --transport http --port 8123 [--json-response] [--stateless]
        [--delay-ms 50] [--name replica-a]
    python -m tests.upstreams.faulty --transport stdio

It serves both protocol eras (the SDK's server does). Tools: ``echo``, ``add``, ``slow``, ``fail``
(a tool error: ``isError: true``), ``crash`` (the process dies at once), ``hang`` (never answers),
``progress`` (progress notifications and a log message during the call), ``sample`` (asks the
client for a sampling completion mid-call), ``announce`` (a session-level tools/list_changed
notification; with ``ask_roots`` also a session-level roots/list request), ``garble`` (stdio: a
non-JSON line on stdout before the answer), ``whoami`` (which replica answered) and
``forget_sessions`` (HTTP: every session open so far now gets 404, as after a restart).
``--delay-ms`` delays every tool call, to make a slow replica.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import SamplingMessage, TextContent, ToolAnnotations
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Knobs:
    """Process-wide settings and the session epoch behind `forget_sessions`."""

    name = "faulty"
    transport = "stdio"
    port = 0
    delay = 0.0
    epoch = 0
    sessions: dict[str, int] = {}  # session id -> epoch it was opened in


mcp: MCPServer[Any] = MCPServer("faulty")


async def _delay() -> None:
    if Knobs.delay:
        await asyncio.sleep(Knobs.delay)


@mcp.tool(annotations=ToolAnnotations(read_only_hint=True))
async def echo(text: str) -> str:
    """Return the text unchanged."""
    await _delay()
    return text


@mcp.tool(annotations=ToolAnnotations(read_only_hint=True))
async def add(a: float, b: float) -> float:
    """Add two numbers."""
    await _delay()
    return a + b


@mcp.tool()
async def slow(seconds: float) -> str:
    """Answer after `seconds`."""
    await _delay()
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


@mcp.tool()
async def fail() -> str:
    """Fail as a tool: the result has isError true."""
    await _delay()
    raise ToolError("failed on purpose")


@mcp.tool()
def crash() -> str:
    """Kill the whole server process at once, mid-call."""
    os._exit(3)


@mcp.tool()
async def hang() -> str:
    """Never answer."""
    await asyncio.Event().wait()
    return "unreachable"


@mcp.tool()
async def progress(steps: int, ctx: Context) -> str:
    """Report `steps` progress notifications and one log message, then answer."""
    await _delay()
    for step in range(steps):
        await ctx.report_progress(step + 1, steps, f"step {step + 1}")
    await ctx.info(f"progress done after {steps} steps")
    return f"done {steps}"


@mcp.tool()
async def sample(prompt: str, ctx: Context) -> str:
    """Ask the client to sample a completion (handshake era only) and return its text."""
    await _delay()
    result = await ctx.session.create_message(
        [SamplingMessage(role="user", content=TextContent(type="text", text=prompt))],
        max_tokens=16,
        # Without it the SDK sends the request on the session's GET stream, not this call's.
        related_request_id=ctx.request_context.request_id,
    )
    content = result.content
    return content.text if isinstance(content, TextContent) else str(content)


@mcp.tool()
async def announce(ctx: Context, ask_roots: bool = False) -> str:
    """Send a session-level notifications/tools/list_changed (handshake era); with `ask_roots`,
    then ask the client for its roots the same way and answer their URIs."""
    # An argument rather than a tool of its own: monitoring tests count this server's tools.
    await ctx.session.send_tool_list_changed()
    if not ask_roots:
        return "announced"
    # No related request id: over HTTP the SDK sends both on the session's GET stream.
    result = await ctx.session.list_roots()
    return " ".join(str(root.uri) for root in result.roots)


@mcp.tool()
async def garble(text: str) -> str:
    """stdio: print a line that is not JSON-RPC to stdout first, then answer `text`."""
    if Knobs.transport == "stdio":
        os.write(1, b"this line is not JSON-RPC\n")
    return text


@mcp.tool(annotations=ToolAnnotations(read_only_hint=True))
async def whoami(ctx: Context) -> dict[str, Any]:
    """Tell which replica answered, and the trace context the request carried (`_meta` and the
    HTTP `traceparent` header)."""
    await _delay()
    meta = ctx.request_context.meta
    if meta is not None and not isinstance(meta, dict):
        meta = meta.model_dump() if hasattr(meta, "model_dump") else {}
    headers = ctx.headers or {}
    return {
        "name": Knobs.name,
        "pid": os.getpid(),
        "port": Knobs.port,
        "meta_traceparent": (meta or {}).get("traceparent", ""),
        "header_traceparent": headers.get("traceparent", ""),
    }


@mcp.tool()
async def forget_sessions() -> str:
    """HTTP: from now on every session opened so far answers 404, as after a restart."""
    Knobs.epoch += 1
    return f"forgot {len(Knobs.sessions)} sessions"


class ForgetfulSessions:
    """ASGI middleware: answers 404 "Session not found" for sessions `forget_sessions` dropped,
    exactly as the SDK does for an unknown session id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        session_id = dict(scope["headers"]).get(b"mcp-session-id", b"").decode()
        if session_id and Knobs.sessions.get(session_id, Knobs.epoch) < Knobs.epoch:
            body = (
                b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Session not found"}}'
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 404,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return

        async def remember(message: Message) -> None:
            if message["type"] == "http.response.start":
                for key, value in message.get("headers", []):
                    if key.lower() == b"mcp-session-id":
                        Knobs.sessions.setdefault(value.decode(), Knobs.epoch)
            await send(message)

        await self.app(scope, receive, remember)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=("stdio", "http"), default="stdio")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--json-response", action="store_true")
    parser.add_argument("--stateless", action="store_true")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--name", default="faulty")
    args = parser.parse_args()
    Knobs.name = args.name
    Knobs.transport = args.transport
    Knobs.port = args.port
    Knobs.delay = args.delay_ms / 1000.0
    if args.transport == "stdio":
        mcp.run("stdio")
        return

    import uvicorn

    app = mcp.streamable_http_app(json_response=args.json_response, stateless_http=args.stateless)
    config = uvicorn.Config(
        ForgetfulSessions(app),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        # `hang` holds a request open forever; do not let it block a SIGTERM for long.
        timeout_graceful_shutdown=1,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
