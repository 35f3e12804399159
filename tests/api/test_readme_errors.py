"""The README's table of tool-call answers, walked row by row against a real gateway.

Each row of the table (status, codes, when) is parsed from README.md; each code has a way to make
it happen here. A row without one, or an answer that differs from the row, fails the test: the
table and the behaviour cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.api.gateway import Gateway

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.upstream]

README = Path(__file__).resolve().parents[2] / "README.md"
ROW = re.compile(r"^\| (\d{3}) \| (.+?) \| (.+?) \|$")
IS_ERROR = "isError"  # the 200 row: no code, the tool's own failure

Answer = tuple[int, Any]


def table_rows() -> list[tuple[int, list[str]]]:
    """(status, codes) of every row of the README's error table; the 200 row has IS_ERROR."""
    text = README.read_text()
    start = text.index("| status | `code` | when |")
    rows = []
    for line in text[start:].splitlines()[2:]:
        match = ROW.match(line)
        if not match:
            break
        codes = re.findall(r"`([a-z_]+)`", match.group(2)) or [IS_ERROR]
        rows.append((int(match.group(1)), codes))
    return rows


async def _call(
    gw: Gateway,
    pool: str = "echo",
    tool: str = "echo",
    body: Any = None,
    *,
    key: str | None = "app",
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> Answer:
    hdrs = {**(gw.auth(key) if key else {}), **(headers or {})}
    data = (
        raw
        if raw is not None
        else orjson.dumps({"arguments": {"text": "x"}} if body is None else body)
    )
    url = f"{gw.url}/api/v1/pools/{pool}/tools/{tool}/call"
    async with gw.http.post(url, data=data, headers=hdrs) as response:
        return response.status, orjson.loads(await response.read())


async def _rate_limited(gw: Gateway) -> Answer:
    for _ in range(2):  # the "limited" key may make 2 calls a minute
        await _call(gw, key="limited")
    return await _call(gw, key="limited")


async def _too_large(gw: Gateway) -> Answer:
    from django.conf import settings

    limit = settings.MCPPOOL_MAX_BODY_BYTES
    return await _call(gw, body={"arguments": {"text": "x" * (limit + 1)}})


async def _unknown_tool(gw: Gateway) -> Answer:
    await gw.host.runtime.list_tools("echo")  # the pool knows its tools
    return await _call(gw, tool="no-such-tool")


# How to make each documented code happen (one per code; a row may name several).
SCENARIOS: dict[str, Callable[[Gateway], Awaitable[Answer]]] = {
    IS_ERROR: lambda gw: _call(gw, body={"arguments": {}}),  # `echo` without its `text`
    "invalid_json": lambda gw: _call(gw, raw=b'{"arguments": '),
    "invalid_request": lambda gw: _call(gw, body={"arguments": {}, "timeout": -1}),
    "invalid_arguments": lambda gw: _call(gw, body={"arguments": "text"}),
    "missing_api_key": lambda gw: _call(gw, key=None),
    "invalid_api_key": lambda gw: _call(
        gw, key=None, headers={"Authorization": "Bearer mcp_00000000_nope"}
    ),
    "api_key_revoked": lambda gw: _call(gw, key="revoked"),
    "api_key_expired": lambda gw: _call(gw, key="expired"),
    "pool_forbidden": lambda gw: _call(gw, pool="other"),
    "unknown_pool": lambda gw: _call(gw, pool="nope", key="admin"),
    "unknown_tool": _unknown_tool,
    "body_too_large": _too_large,
    "rate_limited": _rate_limited,
    "upstream_error": lambda gw: _call(gw, pool="garbage", tool="boom", body={}),
    "no_healthy_server": lambda gw: _call(gw, pool="dead", tool="anything", body={}),
    "upstream_timeout": lambda gw: _call(
        gw, tool="slow", body={"arguments": {"seconds": 3}, "timeout": 0.3}
    ),
}


def test_readme_error_table_is_parsed() -> None:
    rows = table_rows()
    statuses = {status for status, _ in rows}
    assert {200, 400, 401, 403, 404, 413, 429, 502, 503, 504} <= statuses
    documented = {code for _, codes in rows for code in codes}
    assert documented == set(SCENARIOS), "every row needs a scenario here, and only rows"


async def test_readme_error_table_matches_the_gateway(gateway: Gateway) -> None:
    for status, codes in table_rows():
        for code in codes:
            got_status, body = await SCENARIOS[code](gateway)
            if code == IS_ERROR:
                assert (got_status, body.get("isError")) == (200, True), body
            else:
                assert (got_status, body["error"]["code"]) == (status, code), body


async def test_rest_refuses_an_out_of_range_number_with_the_admins_bound(gateway: Gateway) -> None:
    # the admin's number inputs carry the model's bounds (tests/servers/test_admin_operator.py);
    # the REST API gives the same "at least 1" for a weight of 0 or -2, and changes nothing
    for weight in (0, -2):
        url = f"{gateway.url}/api/v1/pools/echo/servers/one"
        headers = {**gateway.auth("admin"), "Content-Type": "application/json"}
        async with gateway.http.patch(
            url, data=orjson.dumps({"weight": weight}), headers=headers
        ) as r:
            body = orjson.loads(await r.read())
        assert r.status == 400, body
        assert "greater than or equal to 1" in orjson.dumps(body).decode(), body
    assert gateway.host.runtime.pool("echo").config.servers[0].weight == 1
