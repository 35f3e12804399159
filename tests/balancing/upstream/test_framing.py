"""Pure units of the upstream layer: JSON-RPC framing, SSE parsing, era decisions, error table."""

from __future__ import annotations

import orjson
import pytest

from balancing.engine import jsonrpc, protocol
from balancing.engine.errors import (
    CallRejected,
    ConnectFailed,
    ProtocolError,
    SessionGone,
    UpstreamClosed,
    UpstreamTimeout,
)
from balancing.engine.jsonrpc import IdAllocator, Kind
from balancing.engine.transport_http import SseParser, _session_gone


def test_id_allocator_two_clients_sending_id_1_get_distinct_wire_ids() -> None:
    ids = IdAllocator()

    assert [ids.next() for _ in range(3)] == [1, 2, 3]


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ({"jsonrpc": "2.0", "id": 1, "result": {}}, Kind.RESPONSE),
        ({"jsonrpc": "2.0", "id": 1, "error": {"code": -1, "message": "x"}}, Kind.RESPONSE),
        ({"jsonrpc": "2.0", "id": 7, "method": "sampling/createMessage"}, Kind.REQUEST),
        ({"jsonrpc": "2.0", "method": "notifications/progress"}, Kind.NOTIFICATION),
        ({"jsonrpc": "2.0", "id": 1}, Kind.INVALID),
    ],
)
def test_jsonrpc_classify_message_shapes_known(message: dict[str, object], kind: Kind) -> None:
    assert jsonrpc.classify(message) is kind


def test_jsonrpc_encode_request_round_trips_through_decode() -> None:
    body = jsonrpc.encode_request(5, "tools/call", {"name": "echo"})

    assert jsonrpc.decode(body) == {
        "jsonrpc": "2.0",
        "id": 5,
        "method": "tools/call",
        "params": {"name": "echo"},
    }
    assert jsonrpc.decode(b"not json") is None
    assert jsonrpc.decode(b"[1, 2]") is None


def test_sse_parser_event_split_across_chunks_is_yielded_once_whole() -> None:
    parser = SseParser()
    stream = b'event: message\r\ndata: {"a":\ndata: 1}\r\n\r\n: keep-alive\n\nid: 9\ndata: \n\n'

    events = [event for i in range(len(stream)) for event in parser.feed(stream[i : i + 1])]

    assert [orjson.loads(e) for e in events] == [{"a": 1}]


def test_sse_parser_other_event_types_are_ignored() -> None:
    assert SseParser().feed(b"event: ping\ndata: x\n\ndata: 2\n\n") == [b"2"]


def test_sse_parser_event_over_limit_raises_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        SseParser(limit=10).feed(b"data: 0123456789abc\n")


def test_sse_parser_unterminated_line_over_limit_raises_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        SseParser(limit=10).feed(b"data: 0123456789abcdef")


@pytest.mark.parametrize(
    ("status", "error", "gone"),
    [
        (404, {"code": -32600, "message": "Session not found"}, True),
        (404, None, True),
        (400, {"code": -32000, "message": "Bad Request: No valid session ID provided"}, True),
        (400, {"code": -32602, "message": "Invalid params"}, False),
        (500, None, False),
    ],
)
def test_http_session_gone_status_and_error_recognised(
    status: int, error: dict[str, object] | None, gone: bool
) -> None:
    assert _session_gone(status, error) is gone


def test_protocol_with_meta_keeps_callers_keys_and_never_mutates() -> None:
    params = {"name": "echo", "_meta": {"progressToken": 3}}

    stamped = protocol.with_meta(params, {protocol.PROTOCOL_VERSION_META_KEY: "2026-07-28"})

    assert stamped["_meta"] == {
        "progressToken": 3,
        protocol.PROTOCOL_VERSION_META_KEY: "2026-07-28",
    }
    assert params == {"name": "echo", "_meta": {"progressToken": 3}}


def test_protocol_modern_headers_name_bearing_methods_carry_mcp_name() -> None:
    assert protocol.modern_headers("tools/call", {"name": "echo"}) == {
        "mcp-method": "tools/call",
        "mcp-name": "echo",
    }
    assert protocol.modern_headers("resources/read", {"uri": "file:///ü"})["mcp-name"].startswith(
        "=?base64?"
    )
    assert protocol.modern_headers("tools/list", None) == {"mcp-method": "tools/list"}


@pytest.mark.parametrize(
    ("error", "falls_back"),
    [
        ({"code": -32601, "message": "Method not found"}, True),
        ({"code": -32022, "message": "x", "data": {"supported": ["2025-11-25"]}}, True),
        ({"code": -32022, "message": "x", "data": {"supported": ["2099-01-01"]}}, False),
    ],
)
def test_protocol_discover_error_decides_fallback_to_handshake(
    error: dict[str, object], falls_back: bool
) -> None:
    assert protocol.falls_back_to_handshake(CallRejected(error)) is falls_back


def test_protocol_discover_version_needs_a_shared_modern_version() -> None:
    assert protocol.discover_version({"supportedVersions": ["2026-07-28"]}) == "2026-07-28"
    assert protocol.discover_version({"supportedVersions": ["2025-11-25"]}) is None


@pytest.mark.parametrize(
    ("error", "delivered", "server_failure"),
    [
        (ConnectFailed("x"), False, True),
        (SessionGone("x"), False, False),
        (UpstreamTimeout("x"), True, True),
        (UpstreamClosed("x"), True, True),
        (ProtocolError("x"), True, True),
        (ProtocolError("HTTP 400", delivered=False), False, True),
        (CallRejected({"code": -32603, "message": "boom"}), True, True),
        (CallRejected({"code": -32602, "message": "bad params"}), True, False),
    ],
)
def test_errors_kind_decides_retry_and_health(
    error: ConnectFailed, delivered: bool, server_failure: bool
) -> None:
    # delivered decides retries elsewhere; server_failure feeds outlier detection
    assert (error.delivered, error.server_failure) == (delivered, server_failure)


def test_errors_message_names_the_server() -> None:
    assert str(ConnectFailed("refused", server="a")) == "a: refused"
