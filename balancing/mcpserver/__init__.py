"""The MCP endpoint (`/mcp/<pool>/`): Streamable HTTP, both protocol eras, on raw ASGI."""
