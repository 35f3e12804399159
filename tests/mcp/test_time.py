"""PyPI mcp-server-time (stdio, not ours) through the MCP endpoint: same tools, same answers."""

from __future__ import annotations

import pytest
from mcp import Client, StdioServerParameters

from tests.api.gateway import Gateway
from tests.mcp.conftest import transport
from tests.mcp.test_inspector import inspect
from tests.upstreams import procs

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.upstream]

CONVERT = {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}


async def test_time_server_answers_through_the_gateway_as_directly(gateway: Gateway) -> None:
    config = procs.time_stdio_config()
    direct_params = StdioServerParameters(command=config.command, args=list(config.args))
    async with Client(direct_params, mode="legacy") as direct:
        direct_tools = (await direct.list_tools()).tools
        expected = await direct.call_tool("convert_time", CONVERT)
    for mode in ("legacy", "auto"):  # both protocol eras on the client side
        async with Client(transport(gateway, "time"), mode=mode) as through:
            tools = (await through.list_tools()).tools
            assert [t.name for t in tools] == [t.name for t in direct_tools]
            assert [t.input_schema for t in tools] == [t.input_schema for t in direct_tools]
            got = await through.call_tool("convert_time", CONVERT)
        assert got.content == expected.content
        assert got.is_error is False


async def test_inspector_cli_calls_the_time_server_through_the_gateway(gateway: Gateway) -> None:
    result = await inspect(
        gateway, "time", "--method", "tools/call", "--tool-name", "convert_time",
        "--tool-arg", "source_timezone=UTC", "time=12:00", "target_timezone=Asia/Tokyo",
    )  # fmt: skip
    assert "Asia/Tokyo" in result["content"][0]["text"]
