"""Era negotiation: which protocol revision a POST speaks, its wire rules, and the two ways in.

* Handshake era (2024-11-05 … 2025-11-25): `initialize` makes a client session (`Mcp-Session-Id`);
  a sticky pool binds it to one server and opens that server's session *as the client*: the
  client's requested version, `clientInfo` and capabilities.
* 2026-07-28: no session; each request is checked against the spec's wire rules before anything
  else (the SDK's own validation ladder: `_meta` envelope → header/body agreement → supported
  version), so the same request a server would refuse is refused here with the same error:
  missing envelope 400/-32602, a header that disagrees with the body (`MCP-Protocol-Version`,
  `Mcp-Method`, `Mcp-Name` — base64 form allowed) 400/-32020, an unsupported version 400/-32022.
  `server/discover` answers what every server of the pool offers (the intersection, so a call
  never lands where a feature is missing), restricted to what the gateway forwards.

Like the SDK's server, a POST is on the 2026 wire when its `MCP-Protocol-Version` header names
anything but a handshake-era version (so `v999.0.0` is refused as unsupported, not taken for a
handshake request), or, without that header, when its `_meta` names a 2026 version.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Final

import orjson
from mcp.shared.inbound import (
    InboundLadderRejection,
    classify_inbound_request,
    find_duplicated_routing_header,
)

from balancing.api.http import Scope, Send, headers_dict, send_bytes
from balancing.engine import protocol
from balancing.engine.affinity import RequestContext
from balancing.engine.config import Era, SessionMode
from balancing.engine.errors import UpstreamError
from balancing.engine.runtime import LivePool
from balancing.engine.sticky import ClientSession
from balancing.errors_http import (
    HEADER_MISMATCH,
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    UNSUPPORTED_PROTOCOL_VERSION,
    ApiError,
    from_upstream,
)
from balancing.host import RuntimeHost
from balancing.keys import KeyRecord
from balancing.mcpserver import clients
from balancing.mcpserver.relays import session_events
from balancing.mcpserver.replies import frame, json_headers, refuse

SERVER_VERSION: Final = "0.1.0"
# What the gateway forwards of a server's capabilities to a handshake-era client of a shared pool:
# its own answers (the merged tool list), and shared upstream sessions relay no list-changed
# notifications or subscriptions.
FORWARDABLE: Final[dict[str, Any]] = {
    "tools": {"listChanged": False},
    "resources": {},
    "prompts": {},
    "logging": {},
    "completions": {},
}
# To a 2026 client (`server/discover`): change notifications too, through `subscriptions/listen`
# (served from every server's own, `engine/feeds.py`), where every server offers them.
FORWARDABLE_MODERN: Final[dict[str, Any]] = {
    **FORWARDABLE,
    "tools": {"listChanged": True},
    "resources": {"subscribe": True, "listChanged": True},
    "prompts": {"listChanged": True},
}
# Methods forwarded upstream as they are on a shared pool.
FORWARDED: Final = frozenset(
    {
        "tools/call",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "prompts/list",
        "prompts/get",
        "completion/complete",
    }
)
# Methods the 2026-07-28 wire has that the gateway forwards (or answers: discover, tools/list;
# serves from its servers' change notifications: subscriptions/listen, `mcpserver/listen.py`).
MODERN_METHODS: Final = FORWARDED | {"server/discover", "tools/list", "subscriptions/listen"}
_RUNG_CODES: Final = {
    INVALID_PARAMS: "invalid_arguments",
    HEADER_MISMATCH: "invalid_request",
    UNSUPPORTED_PROTOCOL_VERSION: "invalid_request",
}
_ROUTING: Final = (b"mcp-protocol-version", b"mcp-method", b"mcp-name")


def is_modern(scope: Scope, message: dict[str, Any]) -> bool:
    for name, value in scope["headers"]:
        if name == b"mcp-protocol-version":
            return value.decode("latin-1") not in protocol.HANDSHAKE_PROTOCOL_VERSIONS
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    return isinstance(meta, dict) and (
        meta.get(protocol.PROTOCOL_VERSION_META_KEY) in protocol.MODERN_PROTOCOL_VERSIONS
    )


def check_modern_request(scope: Scope, message: dict[str, Any]) -> None:
    """Refuse a 2026-07-28 request the spec says a server must refuse."""
    method = message["method"]
    if not _plainly_valid(scope, message, method):
        _check_ladder(scope, message)
    if method not in MODERN_METHODS:
        # initialize, ping, logging/setLevel, resources/subscribe… are not on this wire.
        raise ApiError("not_found", f"Method not found: {method}", rpc=METHOD_NOT_FOUND)


def _plainly_valid(scope: Scope, message: dict[str, Any], method: str) -> bool:
    """The hot path's check of a well-formed request (a few comparisons, no allocation): when it
    is not plainly valid, the SDK's ladder finds the first rung it fails, with its error."""
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    if not isinstance(meta, dict) or protocol.CLIENT_CAPABILITIES_META_KEY not in meta:
        return False
    version = meta.get(protocol.PROTOCOL_VERSION_META_KEY)
    if version not in protocol.MODERN_PROTOCOL_VERSIONS:
        return False
    name_key = protocol.NAME_BEARING_METHODS.get(method)
    name = params.get(name_key) if name_key is not None and params is not None else None
    seen = 0
    for header_name, value in scope["headers"]:
        if header_name == b"mcp-protocol-version":
            ok = value == version.encode()
        elif header_name == b"mcp-method":
            ok = value == method.encode()
        elif header_name == b"mcp-name":
            ok = name is None or value == name.encode()
        else:
            continue
        if not ok:
            return False
        seen += 1
    return seen == (3 if name is not None else 2)


def _check_ladder(scope: Scope, message: dict[str, Any]) -> None:
    routing = [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in scope["headers"]
        if name in _ROUTING
    ]
    duplicated = find_duplicated_routing_header(routing)
    if duplicated is not None:
        raise ApiError(
            "invalid_request", f"{duplicated} header appears more than once", rpc=HEADER_MISMATCH
        )
    verdict = classify_inbound_request(message, headers=dict(routing))
    if isinstance(verdict, InboundLadderRejection):
        raise _rejection(verdict)


def _rejection(verdict: InboundLadderRejection) -> ApiError:
    data = verdict.data if isinstance(verdict.data, dict) else {}
    code = _RUNG_CODES.get(verdict.code, "invalid_request")
    return ApiError(code, verdict.message, rpc=verdict.code, **data)


# ---- server/discover and the handshake's capabilities ------------------------------------


def meet(ours: Any, theirs: Any) -> Any:
    """What both sides offer: keys in both, recursively; a flag only when both set it."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return {k: meet(v, theirs[k]) for k, v in ours.items() if k in theirs}
    if isinstance(ours, bool) or isinstance(theirs, bool):
        return bool(ours) and bool(theirs)
    return ours


async def pool_capabilities(
    host: RuntimeHost, live: LivePool, forwardable: dict[str, Any] = FORWARDABLE
) -> dict[str, Any]:
    """The capabilities every available server of the pool offers, as the gateway forwards them."""
    if not live.capabilities:
        await host.runtime.list_tools(live.config.slug)  # opens the servers' first sessions
    now = host.runtime.clock()
    offered = [
        caps
        for server_id, caps in live.capabilities.items()
        if (endpoint := live.endpoints.get(server_id)) is not None and endpoint.available(now)
    ]
    capabilities: Any = forwardable
    for caps in offered:
        capabilities = meet(capabilities, caps)
    return dict(capabilities)


async def discover(host: RuntimeHost, live: LivePool) -> dict[str, Any]:
    return {
        "supportedVersions": list(protocol.MODERN_PROTOCOL_VERSIONS),
        "capabilities": await pool_capabilities(host, live, FORWARDABLE_MODERN),
        "resultType": "complete",
        "ttlMs": 0,
        "cacheScope": "private",
        "_meta": {protocol.SERVER_INFO_META_KEY: _server_info(live)},
    }


def _server_info(live: LivePool) -> dict[str, str]:
    return {"name": f"mcppool/{live.config.slug}", "version": SERVER_VERSION}


# ---- initialize (handshake era) --------------------------------------------------------------


async def initialize(
    scope: Scope,
    send: Send,
    host: RuntimeHost,
    key: KeyRecord,
    live: LivePool,
    message: dict[str, Any],
    id_json: bytes,
) -> None:
    params = message.get("params")
    if not isinstance(params, dict):
        params = {}
    requested = params.get("protocolVersion")
    version = (
        requested
        if requested in protocol.HANDSHAKE_PROTOCOL_VERSIONS
        else protocol.LATEST_HANDSHAKE_VERSION
    )
    capabilities = params.get("capabilities")
    capabilities = capabilities if isinstance(capabilities, dict) else {}
    client_info = params.get("clientInfo")
    now = host.runtime.clock()
    session = ClientSession(
        id="",
        pool=live.config.slug,
        key_id=key.id,
        protocol_version=version,
        created_at=now,
        last_used=now,
        client_capabilities=capabilities,
        client_info=client_info if isinstance(client_info, dict) else {},
    )
    result: dict[str, Any] = {"protocolVersion": version, "serverInfo": _server_info(live)}
    if live.config.session_mode is SessionMode.STICKY:
        try:
            upstream = await _bind(scope, host, key, live, session, params, version)
        except ApiError as error:
            await refuse(send, error, id_json)
            return
        # The client's own session on its server: what that server negotiated with it.
        # (A server set to the 2026 era speaks that upstream; the client keeps its own version.)
        negotiated = upstream.protocol_version
        if negotiated not in protocol.HANDSHAKE_PROTOCOL_VERSIONS:
            negotiated = version
        result["protocolVersion"] = session.protocol_version = negotiated
        result["capabilities"] = upstream.server_capabilities
        if upstream.instructions:
            result["instructions"] = upstream.instructions
    else:
        try:
            result["capabilities"] = await pool_capabilities(host, live)
        except UpstreamError:
            result["capabilities"] = FORWARDABLE
    session.id = clients.seal(host, session)  # any web process can continue it from its id
    for expired in host.client_sessions.add(session):
        clients.end(host, expired)
    await send_bytes(
        send, 200, frame(id_json, b"result", orjson.dumps(result)), json_headers(session)
    )


async def _bind(
    scope: Scope,
    host: RuntimeHost,
    key: KeyRecord,
    live: LivePool,
    session: ClientSession,
    params: dict[str, Any],
    version: str,
) -> Any:
    """Sticky: pick this client's server as any call would (rules, health, the half-open trial)
    and open its own session there, speaking as the client."""
    client_info = params.get("clientInfo")
    client_info = client_info if isinstance(client_info, dict) else None
    ctx = None
    if live.config.rules:
        name = client_info.get("name", "") if client_info else ""
        ctx = RequestContext(
            api_key_name=key.name, client_id=str(name), headers=headers_dict(scope)
        )
    runtime = host.runtime
    try:
        live, pick = runtime.pick_binding(live.config.slug, ctx)
    except UpstreamError as exc:
        raise from_upstream(exc) from None
    server = pick.endpoint.config
    if server.era is Era.AUTO:
        # Sticky sessions exist for session state (log level, subscriptions, sampling and
        # elicitation mid-call), which only the handshake era has.
        server = replace(server, era=Era.HANDSHAKE)
    session.server_id = server.id
    on_event = session_events(session, live.config.call_timeout)
    try:
        # `listen`: over HTTP, the upstream's GET stream carries exactly these messages.
        upstream = await runtime.open_upstream(
            live.config,
            server,
            capabilities=session.client_capabilities,
            on_event=on_event,
            listen=True,
            client_info=client_info,
            handshake_version=version,
        )
    except UpstreamError as exc:
        runtime.settle_binding(live, pick, exc)
        raise from_upstream(exc) from None
    runtime.settle_binding(live, pick, None)
    session.upstream = upstream
    return upstream
