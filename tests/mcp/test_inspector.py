"""`@modelcontextprotocol/inspector-cli` (npm, a client nobody here wrote) against the endpoint."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.api.gateway import Gateway
from tests.conftest import missing_prerequisite
from tests.upstreams import procs

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.upstream]

INSPECTOR_CLI = procs.NODE_DIR / "node_modules/@modelcontextprotocol/inspector-cli/build/index.js"


async def inspect(gw: Gateway, pool: str, *args: str) -> Any:
    if not INSPECTOR_CLI.exists():
        missing_prerequisite("inspector-cli is not installed (make node)")
    process = await asyncio.create_subprocess_exec(
        "node", str(INSPECTOR_CLI), f"{gw.url}/mcp/{pool}/", "--transport", "http",
        "--header", f"Authorization: Bearer {gw.keys['app']}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        # it looks for its own package.json relative to the working directory
        cwd=INSPECTOR_CLI.parent,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(), 60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, err.decode()
    return json.loads(out)


async def test_inspector_cli_lists_tools_through_the_gateway(gateway: Gateway) -> None:
    listing = await inspect(gateway, "echo", "--method", "tools/list")
    names = {t["name"] for t in listing["tools"]}
    assert {"echo", "add", "progress"} <= names


async def test_inspector_cli_calls_a_tool_through_the_gateway(gateway: Gateway) -> None:
    result = await inspect(
        gateway, "echo", "--method", "tools/call", "--tool-name", "echo", "--tool-arg", "text=hi"
    )
    assert result["content"] == [{"type": "text", "text": "hi"}]
    assert result.get("isError") in (None, False)
    assert await gateway.sessions_idle()
