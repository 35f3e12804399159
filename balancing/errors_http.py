"""The error contract apps see, in one table: stable codes, HTTP statuses, JSON-RPC codes.

REST answers `{"error": {"code": ..., "message": ...}}` with the status of the code; the MCP
endpoint answers the gateway's own errors with the same code as a JSON-RPC error
(`error.data.code`), with HTTP statuses only where the transport itself refuses the request
(auth, size, rate, unknown pool or session). A JSON-RPC error the upstream answered is not the
gateway's: the MCP endpoint passes it on unchanged, REST keeps its stable code and adds the
upstream's `code`, `message` and `data` under `upstream`.
A tool that ran and failed is not an error here: it is a 200 result with `isError: true`.

The gateway's own JSON-RPC codes sit in the implementation-defined band -32000…-32019, clear of
every code MCP defines or reserves (-32002 and -32042 retired, -32020…-32099 the spec's) and of the
SDK's -32000/-32001.
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

import orjson

from balancing.engine.errors import (
    CallRejected,
    ConnectFailed,
    ProtocolError,
    UpstreamError,
    UpstreamTimeout,
)
from balancing.engine.runtime import NoHealthyServer
from balancing.engine.sessions import AcquireTimeout, PoolClosed

# JSON-RPC 2.0 codes.
PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
# MCP's own codes the gateway answers with when it refuses a 2026-07-28 request itself.
RESOURCE_NOT_FOUND: Final = -32002  # MCP's "resource not found" (an upstream's, passed on)
HEADER_MISMATCH: Final = -32020
UNSUPPORTED_PROTOCOL_VERSION: Final = -32022
# What only a gateway can say: implementation-defined codes (see the module docstring).
GATEWAY_UNAVAILABLE: Final = -32010  # no healthy server / pool saturated
GATEWAY_TIMEOUT: Final = -32011
GATEWAY_UPSTREAM: Final = -32012  # the upstream broke the protocol or died mid-call
GATEWAY_REFUSED: Final = -32013  # auth, permission, rate limit (on the JSON-RPC layer)
GATEWAY_CODES: Final = frozenset(
    {GATEWAY_UNAVAILABLE, GATEWAY_TIMEOUT, GATEWAY_UPSTREAM, GATEWAY_REFUSED}
)


class Code(NamedTuple):
    status: int
    rpc: int


CODES: Final[dict[str, Code]] = {
    "invalid_json": Code(400, PARSE_ERROR),
    "invalid_request": Code(400, INVALID_REQUEST),
    "invalid_arguments": Code(400, INVALID_PARAMS),
    "missing_api_key": Code(401, GATEWAY_REFUSED),
    "invalid_api_key": Code(401, GATEWAY_REFUSED),
    "api_key_revoked": Code(401, GATEWAY_REFUSED),
    "api_key_expired": Code(401, GATEWAY_REFUSED),
    "invalid_token": Code(401, GATEWAY_REFUSED),
    "pool_forbidden": Code(403, GATEWAY_REFUSED),
    "admin_required": Code(403, GATEWAY_REFUSED),
    "stdio_forbidden": Code(403, GATEWAY_REFUSED),
    "origin_forbidden": Code(403, GATEWAY_REFUSED),
    # A tool outside the caller's policy: on MCP the spec's error for a tool not offered.
    "tool_forbidden": Code(403, INVALID_PARAMS),
    "unknown_pool": Code(404, INVALID_PARAMS),
    "unknown_tool": Code(404, INVALID_PARAMS),
    "unknown_resource": Code(404, INVALID_PARAMS),
    "unknown_prompt": Code(404, INVALID_PARAMS),
    "unknown_server": Code(404, INVALID_PARAMS),
    "unknown_rule": Code(404, INVALID_PARAMS),
    "unknown_session": Code(404, INVALID_REQUEST),
    "not_found": Code(404, METHOD_NOT_FOUND),
    "method_not_allowed": Code(405, INVALID_REQUEST),
    "not_acceptable": Code(406, INVALID_REQUEST),
    "body_timeout": Code(408, INVALID_REQUEST),
    "conflict": Code(409, INVALID_PARAMS),
    "body_too_large": Code(413, INVALID_REQUEST),
    "unsupported_media_type": Code(415, INVALID_REQUEST),
    "rate_limited": Code(429, GATEWAY_REFUSED),
    "session_limit": Code(429, GATEWAY_REFUSED),
    "upstream_error": Code(502, GATEWAY_UPSTREAM),
    "upstream_rejected": Code(502, GATEWAY_UPSTREAM),
    "no_healthy_server": Code(503, GATEWAY_UNAVAILABLE),
    "pool_busy": Code(503, GATEWAY_UNAVAILABLE),
    "database_unavailable": Code(503, GATEWAY_UNAVAILABLE),  # config/admin routes only
    "upstream_timeout": Code(504, GATEWAY_TIMEOUT),
}


class ApiError(Exception):
    """An error answer: `code` is one of `CODES`; `details` are extra members of the body."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        headers: tuple[tuple[bytes, bytes], ...] = (),
        rpc: int | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message)
        if code not in CODES:
            raise ValueError(f"unknown error code {code!r}")
        self.code = code
        self.message = message
        self.headers = headers
        self.details = details
        self._rpc = rpc  # a JSON-RPC code more precise than the code's default

    @property
    def status(self) -> int:
        return CODES[self.code].status

    @property
    def rpc_code(self) -> int:
        return self._rpc if self._rpc is not None else CODES[self.code].rpc

    def body(self) -> bytes:
        """The REST body: `{"error": {"code", "message", ...details}}`."""
        return orjson.dumps({"error": {"code": self.code, "message": self.message, **self.details}})

    def rpc_error(self) -> dict[str, Any]:
        """The JSON-RPC `error` object for the MCP endpoint."""
        return {
            "code": self.rpc_code,
            "message": self.message,
            "data": {"code": self.code, "status": self.status, **self.details},
        }


def rate_limited(retry_after: float, scope: str) -> ApiError:
    seconds = max(1, int(retry_after + 0.999))  # Retry-After is whole seconds, rounded up
    return ApiError(
        "rate_limited",
        f"rate limit of this {scope} exceeded; retry in {seconds} s",
        headers=((b"retry-after", str(seconds).encode()),),
        retry_after=seconds,
    )


# A sticky session frees its slot when its client ends it or it idles out: a retry soon may pass.
SESSION_RETRY_AFTER: Final = 10


def session_limit(message: str) -> ApiError:
    seconds = SESSION_RETRY_AFTER
    return ApiError(
        "session_limit",
        f"{message}; end a session (DELETE) or retry in {seconds} s",
        headers=((b"retry-after", str(seconds).encode()),),
        retry_after=seconds,
    )


def from_upstream(exc: UpstreamError) -> ApiError:
    """Map a runtime failure to the app's error (the exception's text names the server)."""
    if isinstance(exc, NoHealthyServer):
        return ApiError("no_healthy_server", str(exc))
    if isinstance(exc, AcquireTimeout | PoolClosed):
        return ApiError("pool_busy", f"no call slot became free in time ({exc})")
    if isinstance(exc, UpstreamTimeout):
        return ApiError("upstream_timeout", str(exc))
    if isinstance(exc, ConnectFailed):
        # Never reached: the server is down, whatever its recorded health says.
        return ApiError("no_healthy_server", f"no server of the pool could be reached ({exc})")
    if isinstance(exc, CallRejected):
        return _from_rejection(exc)
    if isinstance(exc, ProtocolError):
        return ApiError("upstream_error", f"upstream protocol error: {exc}")
    return ApiError("upstream_error", f"upstream failed: {exc}")


def _from_rejection(exc: CallRejected) -> ApiError:
    """A JSON-RPC error the upstream chose to answer: bad params are the caller's fault."""
    rpc = {k: v for k, v in exc.error.items() if k in ("code", "message", "data")}
    message = str(exc.error.get("message", "")) or str(exc)
    if exc.code == INVALID_PARAMS:
        return ApiError("invalid_arguments", message, upstream=rpc)
    if exc.code == METHOD_NOT_FOUND:
        return ApiError("not_found", message, upstream=rpc)
    if exc.code == RESOURCE_NOT_FOUND:
        return ApiError("unknown_resource", message, upstream=rpc)
    return ApiError("upstream_rejected", message, upstream=rpc)
