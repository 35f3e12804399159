"""MCP protocol eras: the constants and the small pure decisions of era negotiation.

Wire facts, as the mcp 2.3.0 client sends them and its server checks them:

* Handshake era (2024-11-05 … 2025-11-25): ``initialize`` (params ``protocolVersion``,
  ``capabilities``, ``clientInfo``) → result with ``protocolVersion``, ``capabilities``,
  ``serverInfo``; then the ``notifications/initialized`` notification. Over HTTP the response
  carries ``Mcp-Session-Id``; every later request sends it back plus ``MCP-Protocol-Version``
  (``initialize`` itself sends neither). An unknown session answers 404; DELETE ends it.
* Modern era (2026-07-28): no handshake, no session id, no ``ping``. Every request's
  ``params._meta`` carries ``io.modelcontextprotocol/protocolVersion``, ``…/clientInfo`` and
  ``…/clientCapabilities``; over HTTP the headers ``MCP-Protocol-Version``, ``Mcp-Method`` and, for
  ``tools/call`` / ``prompts/get`` / ``resources/read``, ``Mcp-Name`` (the tool/prompt name or
  resource uri) must match the body or the server answers -32020. ``server/discover`` probes.
  Cancelling over HTTP means closing the response stream: the server drops notification POSTs.
  Logging reaches a call only when its ``_meta`` opts in with ``io.modelcontextprotocol/logLevel``.
"""

from __future__ import annotations

from typing import Any, Final

from mcp.shared.inbound import encode_header_value
from mcp_types.version import (
    HANDSHAKE_PROTOCOL_VERSIONS,
    LATEST_HANDSHAKE_VERSION,
    LATEST_MODERN_VERSION,
    MODERN_PROTOCOL_VERSIONS,
)

from balancing.engine.errors import CallRejected

__all__ = [
    "CLIENT_CAPABILITIES_META_KEY",
    "CLIENT_INFO_META_KEY",
    "HANDSHAKE_PROTOCOL_VERSIONS",
    "LATEST_HANDSHAKE_VERSION",
    "LATEST_MODERN_VERSION",
    "LOG_LEVEL_META_KEY",
    "MODERN_PROTOCOL_VERSIONS",
    "PROTOCOL_VERSION_META_KEY",
    "SERVER_INFO_META_KEY",
    "discover_version",
    "falls_back_to_handshake",
    "modern_headers",
    "with_meta",
]

PROTOCOL_VERSION_META_KEY: Final = "io.modelcontextprotocol/protocolVersion"
CLIENT_INFO_META_KEY: Final = "io.modelcontextprotocol/clientInfo"
CLIENT_CAPABILITIES_META_KEY: Final = "io.modelcontextprotocol/clientCapabilities"
LOG_LEVEL_META_KEY: Final = "io.modelcontextprotocol/logLevel"
SERVER_INFO_META_KEY: Final = "io.modelcontextprotocol/serverInfo"

# HTTP header names, lowercase as the SDK writes them (HTTP header names are case-insensitive).
SESSION_ID_HEADER: Final = "mcp-session-id"
PROTOCOL_VERSION_HEADER: Final = "mcp-protocol-version"
METHOD_HEADER: Final = "mcp-method"
NAME_HEADER: Final = "mcp-name"

# Method → the params key mirrored into `Mcp-Name` (same table as mcp.shared.inbound).
NAME_BEARING_METHODS: Final[dict[str, str]] = {
    "tools/call": "name",
    "prompts/get": "name",
    "resources/read": "uri",
}

UNSUPPORTED_PROTOCOL_VERSION: Final = -32022

# How long the `server/discover` probe may take before `auto` gives up on the modern era; the SDK
# uses 10 s. A handshake-only stdio server may never answer a method it does not know.
DISCOVER_PROBE_TIMEOUT: Final = 10.0


def with_meta(params: dict[str, Any] | None, meta: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``params`` whose ``_meta`` also holds ``meta`` (ours win; the caller's own keys,
    like ``progressToken`` or a log level, stay). The caller's dicts are never mutated."""
    if not params:
        return {"_meta": meta}
    caller_meta = params.get("_meta")
    merged = {**caller_meta, **meta} if isinstance(caller_meta, dict) else meta
    return {**params, "_meta": merged}


_ENVELOPE_KEYS: Final = (
    PROTOCOL_VERSION_META_KEY,
    CLIENT_INFO_META_KEY,
    CLIENT_CAPABILITIES_META_KEY,
)


def has_envelope(meta: dict[str, Any]) -> bool:
    return any(key in meta for key in _ENVELOPE_KEYS)


def without_envelope(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k not in _ENVELOPE_KEYS}


def with_envelope(params: dict[str, Any] | None, envelope: dict[str, Any]) -> dict[str, Any]:
    """``params`` carrying a 2026 envelope: the caller's own ``clientInfo`` and
    ``clientCapabilities`` (a client's request forwarded as it sent them) win over the session's
    defaults; the protocol version is the session's, which its headers name."""
    if not params:
        return {"_meta": envelope}
    caller_meta = params.get("_meta")
    if not isinstance(caller_meta, dict):
        return {**params, "_meta": envelope}
    merged = {**envelope, **caller_meta}
    merged[PROTOCOL_VERSION_META_KEY] = envelope[PROTOCOL_VERSION_META_KEY]
    return {**params, "_meta": merged}


def modern_headers(method: str, params: dict[str, Any] | None) -> dict[str, str]:
    """The per-request routing headers of the modern era (besides ``MCP-Protocol-Version``)."""
    headers = {METHOD_HEADER: method}
    name_key = NAME_BEARING_METHODS.get(method)
    if name_key is not None and params is not None:
        name = params.get(name_key)
        if isinstance(name, str):
            headers[NAME_HEADER] = encode_header_value(name)
    return headers


def trace_headers(params: dict[str, Any]) -> dict[str, str] | None:
    """The W3C trace context a request carries in ``_meta`` (the gateway's span, or a client's
    passed along), as HTTP headers too: HTTP-aware tracing in front of the server sees it."""
    meta = params.get("_meta")
    if not isinstance(meta, dict) or "traceparent" not in meta:
        return None
    return {k: v for k in ("traceparent", "tracestate") if isinstance(v := meta.get(k), str)}


def discover_version(result: dict[str, Any]) -> str | None:
    """The newest modern version a ``server/discover`` result shares with us, or None when the
    server only advertises handshake-era versions (go-sdk's stateful default does that)."""
    supported = result.get("supportedVersions")
    if not isinstance(supported, list):
        return None
    mutual = [v for v in MODERN_PROTOCOL_VERSIONS if v in supported]
    return mutual[-1] if mutual else None


def falls_back_to_handshake(error: CallRejected) -> bool:
    """Does a JSON-RPC error to ``server/discover`` mean "speak the handshake era"?

    Like the SDK's ``auto`` mode this is a denylist: every error falls back except -32022 naming
    only modern versions we do not share — that server is modern-only and truly incompatible.
    """
    if error.code != UNSUPPORTED_PROTOCOL_VERSION:
        return True
    data = error.error.get("data")
    supported = data.get("supported") if isinstance(data, dict) else None
    if not isinstance(supported, list):
        return True
    return any(v in HANDSHAKE_PROTOCOL_VERSIONS for v in supported)
