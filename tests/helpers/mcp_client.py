"""Ask an MCP server directly, with the official SDK client: the reference a gateway or probe
result is compared with, instead of numbers copied from the server's source."""

from __future__ import annotations

from mcp import Client, StdioServerParameters

from balancing.engine.config import ServerConfig, Transport


async def listed_tool_names(server: ServerConfig) -> list[str]:
    """The tools the server lists when asked directly (handshake era, every page)."""
    target: str | StdioServerParameters
    if server.transport is Transport.STDIO:
        target = StdioServerParameters(
            command=server.command, args=list(server.args), cwd=server.cwd or None
        )
    else:
        target = server.url
    async with Client(target, mode="legacy") as client:
        listed = await client.list_tools()
    return sorted(tool.name for tool in listed.tools)
