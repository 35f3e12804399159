"""JSON-RPC 2.0 framing on bytes and plain dicts (no SDK models on the hot path)."""

from __future__ import annotations

import secrets
from enum import Enum
from typing import Any

import orjson

JsonObject = dict[str, Any]
RequestId = int | str


class Kind(Enum):
    RESPONSE = "response"  # has an id and result or error
    REQUEST = "request"  # has an id and a method
    NOTIFICATION = "notification"  # has a method and no id
    INVALID = "invalid"


def encode_request(request_id: RequestId, method: str, params: JsonObject | None) -> bytes:
    if params is None:
        return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "method": method})
    return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})


def encode_notification(method: str, params: JsonObject | None) -> bytes:
    if params is None:
        return orjson.dumps({"jsonrpc": "2.0", "method": method})
    return orjson.dumps({"jsonrpc": "2.0", "method": method, "params": params})


def encode_result(request_id: RequestId, result: JsonObject) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "result": result})


def encode_error(request_id: RequestId | None, code: int, message: str) -> bytes:
    return orjson.dumps(
        {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
    )


def encode_error_object(request_id: RequestId | None, error: JsonObject) -> bytes:
    """An error answer carrying ``error`` as it is (code, message, data: someone else's)."""
    return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "error": error})


def decode(raw: bytes | str) -> JsonObject | None:
    """Parse one message; None for bad JSON or anything that is not an object (batches included:
    MCP since 2025-06-18 has none, and no upstream we speak to sends them)."""
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return message if isinstance(message, dict) else None


def classify(message: JsonObject) -> Kind:
    method = message.get("method")
    if isinstance(method, str):
        return Kind.REQUEST if "id" in message else Kind.NOTIFICATION
    if "id" in message and ("result" in message or "error" in message):
        return Kind.RESPONSE
    return Kind.INVALID


# Below 2**53, so every JSON implementation reads the id back exactly.
_ID_SPACE = 2**52


def random_start() -> int:
    """Where a copy of an upstream session starts numbering its requests. Several web processes
    can each hold a copy of one upstream session (any process continues a session from its id):
    numbered from one random start each, their requests in flight at once do not share an id on
    that session (numbered from 1 each, the upstream would answer one of two and lose the other)."""
    return secrets.randbelow(_ID_SPACE) + 1


class IdAllocator:
    """Session-unique request ids: two clients that both send ``id: 1`` through one upstream
    session get different wire ids; the session maps the answer back to its caller."""

    __slots__ = ("_next",)

    def __init__(self, start: int = 1) -> None:
        self._next = start

    def next(self) -> int:
        value = self._next
        self._next = value + 1
        return value
