"""The floor's stdio client: concurrent calls on one child each get their own answer back."""

from __future__ import annotations

import asyncio

import orjson

from bench.floor import StdioUpstream, json_rpc_result
from bench.other_proxies import STDIO_UPSTREAM


async def test_concurrent_calls_on_one_stdio_child_are_matched_by_id() -> None:
    upstream = StdioUpstream(STDIO_UPSTREAM)
    await upstream.start()
    try:
        # Later calls sleep less upstream, so the child answers them in the reverse order.
        delays = [0.15, 0.1, 0.05, 0.0]
        answers = await asyncio.gather(
            *(upstream.call_tool("slow", {"seconds": d}) for d in delays)
        )
        texts = [orjson.loads(a)["result"]["content"][0]["text"] for a in answers]
        assert texts == [f"slept {d}" for d in delays]
        # The MCP route gives the client its own id back, whatever id went to the child.
        status, _, body = await upstream.mcp(
            "POST",
            [],
            orjson.dumps({"jsonrpc": "2.0", "id": "mine", "method": "tools/call",
                          "params": {"name": "echo", "arguments": {"text": "x"}}}),
        )  # fmt: skip
        assert status == 200
        assert orjson.loads(body)["id"] == "mine"
    finally:
        await upstream.stop()


def test_json_rpc_result_reads_plain_json_and_the_last_sse_event() -> None:
    assert json_rpc_result(b'{"id": 1}') == b'{"id": 1}'
    sse = b'event: message\ndata: {"id": 0}\n\nevent: message\ndata: {"id": 1}\n\n'
    assert json_rpc_result(sse) == b'{"id": 1}'
