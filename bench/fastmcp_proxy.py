"""The FastMCP proxy, as its documentation sets it up, reusing one upstream session.

Runs in FastMCP's own virtualenv (`bench/.venvs/fastmcp`, made by `bench.other_proxies`), so it
imports nothing from this project. `create_proxy()` given an already *connected* `fastmcp.Client`
reuses that one session for every call (given anything else it opens a session per request);
served over Streamable HTTP with JSON answers, as the other proxies in the run are.

    bench/.venvs/fastmcp/bin/python bench/fastmcp_proxy.py --port 9000 --upstream URL
    bench/.venvs/fastmcp/bin/python bench/fastmcp_proxy.py --port 9000 -- python -m ... stdio
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any


async def serve(port: int, upstream: Any) -> None:
    # Installed in FastMCP's own virtualenv only, not in this project's.
    from fastmcp import Client  # type: ignore[import-not-found]
    from fastmcp.server import create_proxy  # type: ignore[import-not-found]

    async with Client(upstream) as client:
        proxy = create_proxy(client)
        await proxy.run_http_async(
            show_banner=False,
            host="127.0.0.1",
            port=port,
            path="/mcp",
            log_level="warning",
            json_response=True,
            uvicorn_config={"access_log": False},
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", help="Streamable HTTP URL of the upstream server")
    parser.add_argument("--cwd", default=None, help="working directory of a stdio upstream")
    parser.add_argument("command", nargs="*", help="stdio upstream command (after --)")
    args = parser.parse_args(argv)
    upstream: Any
    if args.upstream:
        upstream = args.upstream
    elif args.command:
        from fastmcp.client.transports import StdioTransport  # type: ignore[import-not-found]

        upstream = StdioTransport(command=args.command[0], args=args.command[1:], cwd=args.cwd)
    else:
        parser.error("give --upstream URL or a stdio command after --")
    try:
        import uvloop

        uvloop.run(serve(args.port, upstream))
    except ImportError:  # pragma: no cover - installed beside fastmcp
        asyncio.run(serve(args.port, upstream))
    return 0


if __name__ == "__main__":
    sys.exit(main())
