"""The MCP proxy most people would write with the SDK, as a yardstick for mcppool's costs.

The mcp SDK's own low-level `Server` (Streamable HTTP, JSON answers) in front, the SDK's own
`Client` behind: `tools/list` and `tools/call` are forwarded through one kept upstream session
(the naive "keep one session" gateway), or, with `--per-call`, through a new session for every
call (what most gateways do). No pooling, no balancing: one upstream.

    .venv/bin/python -m bench.sdk_proxy --port 9000 --upstream http://127.0.0.1:8123/mcp
    .venv/bin/python -m bench.sdk_proxy --port 9000 --per-call --upstream http://...
    .venv/bin/python -m bench.sdk_proxy --port 9000 -- python -m tests.upstreams.faulty
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

import mcp_types as types
import uvicorn
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.server.lowlevel import Server

Upstream = str | StdioServerParameters


class Forwarder:
    """Calls the upstream on one kept `Client`, or on a new one per call."""

    def __init__(self, upstream: Upstream, *, per_call: bool, mode: str) -> None:
        self.upstream = upstream
        self.per_call = per_call
        self.mode = mode
        self.client: Client | None = None

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Client]:
        if self.client is not None:
            yield self.client
            return
        async with Client(self.upstream, mode=self.mode) as client:
            yield client

    async def list_tools(
        self, ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        async with self.session() as client:
            return await client.list_tools()

    async def call_tool(
        self, ctx: Any, params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        async with self.session() as client:
            return await client.call_tool(params.name, params.arguments or {})


def build_server(forwarder: Forwarder) -> Server[Any]:
    return Server(
        "sdk-proxy",
        on_list_tools=forwarder.list_tools,
        on_call_tool=forwarder.call_tool,
    )


async def serve(forwarder: Forwarder, port: int) -> None:
    app = build_server(forwarder).streamable_http_app(json_response=True)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="on"
    )
    if forwarder.per_call:
        await uvicorn.Server(config).serve()
        return
    async with Client(forwarder.upstream, mode=forwarder.mode) as client:
        forwarder.client = client
        await uvicorn.Server(config).serve()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", help="Streamable HTTP URL of the upstream server")
    parser.add_argument("--per-call", action="store_true", help="a new upstream session per call")
    parser.add_argument("--mode", default="auto", choices=["auto", "legacy"])
    parser.add_argument("--cwd", default=None, help="working directory of a stdio upstream")
    parser.add_argument("command", nargs="*", help="stdio upstream command (after --)")
    args = parser.parse_args(argv)
    upstream: Upstream
    if args.upstream:
        upstream = args.upstream
    elif args.command:
        upstream = StdioServerParameters(
            command=args.command[0], args=args.command[1:], cwd=args.cwd
        )
    else:
        parser.error("give --upstream URL or a stdio command after --")
    forwarder = Forwarder(upstream, per_call=args.per_call, mode=args.mode)
    try:
        import uvloop

        uvloop.run(serve(forwarder, args.port))
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        asyncio.run(serve(forwarder, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
