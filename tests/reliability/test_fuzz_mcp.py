"""Malformed JSON-RPC at the MCP endpoint: every bad request gets a JSON answer (a JSON-RPC
error, or an HTTP 4xx carrying one), never a 5xx other than the documented upstream errors; the
process stays up, no call slot stays taken, and a normal call works afterwards.

The target is a real mcppool process (`bench.gateway`) with a shared pool and a sticky pool (whose
sessions relay to their own upstream session). Cases: wrong types for every field, ids too big
for a double or a megabyte long, missing fields, batches, invalid UTF-8, deep nesting, oversized
bodies (declared and chunked), wrong content types, wrong methods, bad session ids — then
hypothesis-generated JSON values and JSON-RPC-shaped messages, with and without a session.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import gateway
from tests.upstreams import procs

pytestmark = pytest.mark.upstream

SHARED, STICKY = "echo", "sticky"
UPSTREAM_STATUSES = frozenset({502, 503, 504})
MAX_BODY = 4 * 1024 * 1024  # MCPPOOL_MAX_BODY_BYTES's default
ACCEPT = "application/json, text/event-stream"
VERSION = "2025-06-18"
# Tools a fuzzer may name: not `crash` or `hang`, which break the replica on purpose.
TOOLS = ("echo", "add", "fail", "whoami", "nope")
METHODS = ("initialize", "ping", "tools/list", "tools/call", "resources/list", "resources/read",
           "prompts/list", "prompts/get", "logging/setLevel", "completion/complete",
           "server/discover", "notifications/initialized", "notifications/cancelled",
           "notifications/roots/list_changed", "resources/subscribe", "sampling/createMessage",
           "x/y", "")  # fmt: skip
_GAUGE = r"^{name}\{{[^}}]*\}} ([0-9.e+-]+)$"


@dataclass
class Target:
    gateway: gateway.Gateway

    def url(self, pool: str) -> str:
        return self.gateway.mcp_url(pool)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.gateway.token}"}

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Accept": ACCEPT, "Content-Type": "application/json", **self.auth, **extra}

    def gauge(self, name: str, **labels: str) -> float:
        """Sum of a gauge's samples on `/metrics` (those with these label values)."""
        text = requests.get(f"{self.gateway.base_url}/metrics", timeout=10).text
        total = 0.0
        for line in text.splitlines():
            match = re.match(_GAUGE.format(name=name), line)
            if match and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(match.group(1))
        return total


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    json_replica = procs.start_faulty_http(name="r-json", json_response=True)
    sse_replica = procs.start_faulty_http(name="r-sse")
    try:
        pools: list[dict[str, Any]] = [
            {"slug": SHARED, "name": "Echo", "servers": [
                {"name": "a", "transport": "streamable_http", "url": json_replica.url}]},
            # The fuzzer opens hundreds of sessions with one key: caps are tested elsewhere
            # (tests/security/test_session_cost.py).
            {"slug": STICKY, "name": "Sticky", "session_mode": "sticky",
             "max_sticky_sessions": 10000, "max_sticky_sessions_per_key": 10000, "servers": [
                {"name": "s", "transport": "streamable_http", "url": sse_replica.url}]},
        ]  # fmt: skip
        var_dir, token = gateway.prepare(pools)
        gw = gateway.start(var_dir, token, ready_path=f"/api/v1/pools/{SHARED}/tools/echo/call")
        try:
            yield Target(gw)
        finally:
            gw.stop()
    finally:
        json_replica.stop()
        sse_replica.stop()


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def initialize(http: requests.Session, target: Target, pool: str) -> str:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
               "params": {"protocolVersion": VERSION, "capabilities": {},
                          "clientInfo": {"name": "fuzz", "version": "0"}}}  # fmt: skip
    answer = http.post(target.url(pool), json=message, headers=target.headers(), timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.headers["mcp-session-id"]


def check(answer: requests.Response) -> None:
    """The contract for any request, however bad."""
    status, kind = answer.status_code, answer.headers.get("content-type", "")
    assert status < 500 or status in UPSTREAM_STATUSES, (status, answer.text[:500])
    if status == 202 or (status == 200 and not answer.content):
        return  # a notification or a client response accepted; a DELETE done
    if "text/event-stream" in kind:
        events = [line[5:] for line in answer.text.splitlines() if line.startswith("data:")]
        assert events, answer.text[:500]
        for data in events:
            assert isinstance(orjson.loads(data), dict)
        return
    assert "application/json" in kind, (status, kind, answer.text[:500])
    body = orjson.loads(answer.content)
    if status >= 400:
        assert isinstance(body, dict), body
        assert isinstance(body.get("error"), dict), body
        assert isinstance(body["error"].get("code"), int), body
        assert isinstance(body["error"].get("message"), str), body
    else:
        assert isinstance(body, dict), body
        assert "result" in body or "error" in body, body


def send(http: requests.Session, target: Target, pool: str, body: bytes, **headers: str) -> None:
    answer = http.post(target.url(pool), data=body, headers=target.headers(**headers), timeout=30)
    check(answer)


def rpc(method: Any = "tools/call", **fields: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 7, "method": method, **fields}


WRONG = [None, True, 0, -1, 1.5, "", "x", [], [1], {}, {"a": 1}]
CASES: list[bytes] = [
    *(orjson.dumps({**rpc("ping"), "jsonrpc": v}) for v in WRONG),
    *(orjson.dumps({**rpc("ping"), "id": v}) for v in WRONG),
    *(orjson.dumps(rpc(v)) for v in WRONG),
    *(orjson.dumps(rpc("tools/call", params=v)) for v in WRONG),
    *(orjson.dumps(rpc("tools/call", params={"name": v})) for v in WRONG),
    *(orjson.dumps(rpc("tools/call", params={"name": "echo", "arguments": v})) for v in WRONG),
    *(orjson.dumps(rpc("tools/call", params={"name": "echo", "_meta": v})) for v in WRONG),
    *(orjson.dumps(rpc("logging/setLevel", params={"level": v})) for v in WRONG),
    *(orjson.dumps(rpc("initialize", params=v)) for v in WRONG),
    *(orjson.dumps(rpc("notifications/cancelled", params={"requestId": v})) for v in WRONG),
    # huge ids: beyond a double, and a megabyte long
    b'{"jsonrpc":"2.0","id":1' + b"0" * 400 + b',"method":"ping"}',
    b'{"jsonrpc":"2.0","id":-1e400,"method":"ping"}',
    orjson.dumps({**rpc("ping"), "id": "i" * 1_000_000}),
    # missing fields
    b"{}",
    orjson.dumps({"jsonrpc": "2.0"}),
    orjson.dumps({"jsonrpc": "2.0", "id": 1}),
    orjson.dumps({"id": 1, "method": "ping"}),
    orjson.dumps({"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "echo"}}),
    orjson.dumps({"jsonrpc": "2.0", "id": 3, "result": {}}),  # a response nobody asked for
    orjson.dumps({"jsonrpc": "2.0", "id": 3, "error": {"code": 1, "message": "x"}}),
    # batches
    b"[]",
    orjson.dumps([rpc("ping")]),
    orjson.dumps([rpc("ping"), {"jsonrpc": "2.0", "method": "notifications/initialized"}, 1]),
    orjson.dumps([rpc("tools/call", params={"name": "echo", "arguments": {"text": "x"}})] * 500),
    # not JSON, or not UTF-8
    b"",
    b"null",
    b"42",
    b'"ping"',
    b"{",
    b'{"jsonrpc":"2.0","id":1,"method":"\xff\xfe"}',
    b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"\xc3\x28":1}}',
    b"\xef\xbb\xbf" + orjson.dumps(rpc("ping")),  # a byte-order mark
    b'{"jsonrpc":"2.0","id":1,"method":"ping","id":2}',  # a repeated key
    b'{"jsonrpc":"2.0","id":NaN,"method":"ping"}',
    # deeply nested
    b"[" * 100_000 + b"]" * 100_000,
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":' + b'{"a":' * 5000 + b"1"
    + b"}" * 5001,
]  # fmt: skip


def test_endpoint_malformed_messages_get_json_errors_never_5xx(
    target: Target, http: requests.Session
) -> None:
    # given a session on each pool, and none
    sessions = {pool: initialize(http, target, pool) for pool in (SHARED, STICKY)}
    for pool in (SHARED, STICKY):
        for extra in (
            {},
            {"Mcp-Session-Id": sessions[pool]},
            {"MCP-Protocol-Version": "2026-07-28"},
        ):
            # when each malformed body is posted; then each answer keeps the contract
            for body in CASES:
                send(http, target, pool, body, **extra)


def test_endpoint_wrong_transport_details_are_refused_with_json(
    target: Target, http: requests.Session
) -> None:
    url, ping = target.url(SHARED), orjson.dumps(rpc("ping"))
    session = initialize(http, target, SHARED)
    answers = [
        # wrong content types and accept headers
        http.post(url, data=ping, headers=target.headers(**{"Content-Type": "text/plain"})),
        http.post(url, data=ping, headers={**target.auth, "Content-Type": "multipart/form-data"}),
        http.post(url, data=ping, headers={**target.auth, "Accept": "image/png"}),
        # wrong methods
        *(http.request(m, url, headers=target.headers()) for m in ("PUT", "PATCH", "OPTIONS")),
        http.get(url, headers=target.headers()),
        http.delete(url, headers=target.headers()),
        # bad session ids and versions
        http.post(url, data=ping, headers=target.headers(**{"Mcp-Session-Id": "nope"})),
        http.post(url, data=ping, headers=target.headers(**{"Mcp-Session-Id": "é" * 300})),
        http.post(url, data=ping, headers=target.headers(**{"Mcp-Session-Id": session + "x"})),
        http.delete(url, headers=target.headers(**{"Mcp-Session-Id": "nope"})),
        http.post(url, data=ping, headers=target.headers(**{"MCP-Protocol-Version": "9" * 99})),
        http.post(url, data=ping, headers=target.headers(**{"Mcp-Method": "tools/call"})),
        # paths that are not a pool's endpoint
        http.post(url + "extra/", data=ping, headers=target.headers()),
        http.post(target.url("no-such-pool"), data=ping, headers=target.headers()),
    ]
    for answer in answers:
        check(answer)
    # a header HTTP itself forbids never reaches the app: uvicorn's parser answers 400
    control = http.post(url, data=ping, headers=target.headers(**{"Mcp-Method": "ping\x7f"}))
    assert control.status_code == 400


def raw_exchange(target: Target, head: bytes, chunks: Iterator[bytes]) -> bytes:
    """Send a request by hand (the body may stop being read); the raw answer."""
    with socket.create_connection(("127.0.0.1", target.gateway.process.port), timeout=30) as sock:
        sock.sendall(head)
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except OSError:
            pass  # the gateway answered and closed without reading the rest: as it should
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        return answer


def test_endpoint_oversized_bodies_are_413_before_being_read(target: Target) -> None:
    path = f"/mcp/{SHARED}/".encode()
    auth = f"Authorization: Bearer {target.gateway.token}\r\n".encode()
    common = b"Host: 127.0.0.1\r\nContent-Type: application/json\r\n" + auth

    # declared too large: refused from the header alone, nothing sent
    declared = raw_exchange(
        target, b"POST " + path + b" HTTP/1.1\r\n" + common
        + f"Content-Length: {MAX_BODY + 1}\r\n\r\n".encode(), iter(()),
    )  # fmt: skip
    # chunked, growing past the limit: refused as soon as it passes it
    piece = b"x" * 65536
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    streamed = raw_exchange(
        target, b"POST " + path + b" HTTP/1.1\r\n" + common
        + b"Transfer-Encoding: chunked\r\n\r\n", iter([chunk] * (MAX_BODY // len(piece) + 8)),
    )  # fmt: skip

    assert declared.startswith(b"HTTP/1.1 413"), declared[:200]
    assert streamed.startswith(b"HTTP/1.1 413"), streamed[:200]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
messages = st.fixed_dictionaries(
    {"jsonrpc": st.just("2.0") | json_values, "method": st.sampled_from(METHODS) | json_values},
    optional={
        "id": st.integers() | st.text(max_size=20) | json_values,
        "params": st.fixed_dictionaries(
            {},
            optional={"name": st.sampled_from(TOOLS) | json_values, "arguments": json_values,
                      "_meta": json_values, "protocolVersion": json_values, "level": json_values,
                      "uri": json_values, "requestId": json_values, "cursor": json_values},
        ) | json_values,
        "result": json_values,
    },
)  # fmt: skip


def test_endpoint_generated_messages_keep_the_contract(
    target: Target, http: requests.Session
) -> None:
    sessions = {pool: initialize(http, target, pool) for pool in (SHARED, STICKY)}

    @settings(max_examples=300, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(
        body=json_values | messages,
        pool=st.sampled_from((SHARED, STICKY)),
        with_session=st.booleans(),
    )
    def post(body: Any, pool: str, with_session: bool) -> None:
        extra = {"Mcp-Session-Id": sessions[pool]} if with_session else {}
        # the standard library's encoder: it writes integers of any size, as clients may
        send(http, target, pool, json.dumps(body).encode(), **extra)

    post()


def test_endpoint_after_the_fuzzing_serves_calls_and_holds_no_call_slot(
    target: Target, http: requests.Session
) -> None:
    # given everything above has run against this process (module-scoped target)
    assert target.gateway.process.process.poll() is None, target.gateway.process.output()

    # when a well-behaved client calls a tool on each pool
    for pool in (SHARED, STICKY):
        session = initialize(http, target, pool)
        message = rpc("tools/call", params={"name": "echo", "arguments": {"text": "fine"}})
        headers = target.headers(**{"Mcp-Session-Id": session, "MCP-Protocol-Version": VERSION})
        answer = http.post(target.url(pool), json=message, headers=headers, timeout=30)

        # then it works
        assert answer.status_code == 200, answer.text
        assert '"fine"' in answer.text, answer.text

    # and nothing is left in flight or holding a session slot
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if target.gauge("mcppool_in_flight") == 0 and not target.gauge("mcppool_sessions",
                                                                      state="busy"):  # fmt: skip
            break
        time.sleep(0.2)
    assert target.gauge("mcppool_in_flight") == 0
    assert target.gauge("mcppool_sessions", state="busy") == 0
