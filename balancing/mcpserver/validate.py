"""Bad input stops at the gateway: what JSON-RPC 2.0 and MCP require of a client's message.

Checked before anything goes upstream, with the spec's errors (400 with a JSON-RPC error body):
the body is one JSON-RPC 2.0 object (MCP since 2025-06-18 has no batches); a request id is a
string or an integer (never null, a fraction or an object); `params` is an object; the params the
gateway routes on have their types (`tools/call` needs a `name` and, when present, object
`arguments`). An upstream never sees — and so is never blamed for — a request this refuses.

Ids are answered exactly as sent: the id is kept as its JSON text, so an integer beyond 64 bits
(`10**30`) is not turned into a float (`1e+30`) on the way back.
"""

from __future__ import annotations

import json
from typing import Any, Final

import orjson

from balancing.errors_http import INVALID_PARAMS, INVALID_REQUEST, PARSE_ERROR, ApiError

_I64: Final = 2**63
# Methods that name what they act on, and the param that names it.
_NAMED: Final = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}


def refusal(message: str, rpc: int = INVALID_REQUEST) -> ApiError:
    code = {
        PARSE_ERROR: "invalid_json",
        INVALID_PARAMS: "invalid_arguments",
    }.get(rpc, "invalid_request")
    return ApiError(code, message, rpc=rpc)


def parse(body: bytes) -> dict[str, Any]:
    """The body as one JSON-RPC 2.0 message (an object with `jsonrpc: "2.0"`)."""
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise refusal("Parse error: the body is not JSON", PARSE_ERROR) from None
    if isinstance(message, list):
        raise refusal("JSON-RPC batches are not supported: send one message per request")
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        raise refusal("the body must be one JSON-RPC 2.0 message")
    if isinstance(message.get("id"), float):
        # orjson reads integers beyond 64 bits as floats: read them again, exactly.
        message = dict(json.loads(body))
    return message


def id_json(message: dict[str, Any]) -> bytes:
    """The request's id as the JSON text to answer with; refuses an id MCP does not allow."""
    request_id = message["id"]
    if isinstance(request_id, str):
        return orjson.dumps(request_id)
    if isinstance(request_id, int) and not isinstance(request_id, bool):
        return orjson.dumps(request_id) if -_I64 <= request_id < _I64 else str(request_id).encode()
    raise refusal("the request id must be a string or an integer")


def check_params(method: str, params: Any) -> dict[str, Any] | None:
    """The request's `params` (None when absent), refused when MCP says they cannot be right."""
    if params is None:
        if method in _NAMED:
            raise refusal(f"{method} needs params", INVALID_PARAMS)
        return None
    if not isinstance(params, dict):
        raise refusal("params must be an object", INVALID_PARAMS)
    meta = params.get("_meta")
    if meta is not None and not isinstance(meta, dict):
        raise refusal("params._meta must be an object", INVALID_PARAMS)
    if isinstance(meta, dict) and "progressToken" in meta:
        token = meta["progressToken"]
        if isinstance(token, bool) or not isinstance(token, str | int):
            raise refusal("a progressToken must be a string or an integer", INVALID_PARAMS)
    named = _NAMED.get(method)
    if named is not None:
        if not isinstance(params.get(named), str):
            raise refusal(f"{method} needs a {named} (a string)", INVALID_PARAMS)
        arguments = params.get("arguments")
        if arguments is not None and not isinstance(arguments, dict):
            raise refusal(f"{method} arguments must be an object", INVALID_PARAMS)
    return params
