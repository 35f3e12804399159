"""Each pool as an OAuth protected resource (RFC 9728, the MCP authorization spec).

A pool's resource URL is its MCP endpoint, `<base>/mcp/<pool>/`: the audience its tokens must
carry (RFC 8707). `<base>` is `MCPPOOL_PUBLIC_URL` when set — set it whenever the gateway sits
behind a proxy, so the audience never depends on what a client put in `Host` — else the scheme and
`Host` of the request.

`GET /.well-known/oauth-protected-resource/mcp/<pool>/` answers the pool's metadata: the resource
URL, the issuers whose tokens some grant lets onto the pool, and the scopes those grants name. A
pool no issuer covers has none (404). 401 answers name that document in `WWW-Authenticate`, which
is how an MCP client discovers where to get a token.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Final

from django.conf import settings
from django.http.request import split_domain_port, validate_host

from balancing.api.http import Receive, Scope, Send, header, send_bytes, send_error, send_json
from balancing.errors_http import ApiError
from balancing.host import RuntimeHost

WELL_KNOWN: Final = "/.well-known/oauth-protected-resource"
MCP_PATH: Final = "/mcp/"


def base_url(scope: Scope) -> str:
    """The public base URL; from the request only for a `Host` in `ALLOWED_HOSTS` (403 else):
    otherwise a client could pick the audience its token is checked against."""
    configured: str = settings.MCPPOOL_PUBLIC_URL
    if configured:
        return configured
    host = (header(scope, b"host") or b"").decode("latin-1")
    if not _allowed(host, tuple(settings.ALLOWED_HOSTS)):
        raise ApiError("origin_forbidden", "this Host is not allowed (ALLOWED_HOSTS)")
    scheme = scope.get("scheme") or "http"
    return f"{scheme}://{host}"


@lru_cache(maxsize=256)
def _allowed(host: str, allowed: tuple[str, ...]) -> bool:
    domain, _ = split_domain_port(host)
    return bool(domain) and validate_host(domain, list(allowed))


def resource_url(scope: Scope, slug: str) -> str:
    return f"{base_url(scope)}{MCP_PATH}{slug}/"


def metadata_url(scope: Scope, slug: str) -> str:
    return f"{base_url(scope)}{WELL_KNOWN}{MCP_PATH}{slug}/"


def challenge(
    host: RuntimeHost, scope: Scope, slug: str, error: str = "", detail: str = ""
) -> bytes:
    """The `WWW-Authenticate` value of a 401 on pool `slug` (RFC 6750 §3, RFC 9728 §5.1)."""
    parts = []
    if error:
        parts.append(f'error="{error}"')
        if detail:
            parts.append('error_description="{}"'.format(detail.replace('"', "'")))
    try:
        metadata = metadata_url(scope, slug) if slug and host.access.issuers_for(slug) else ""
    except ApiError:
        metadata = ""
    parts.append(f'resource_metadata="{metadata}"' if metadata else 'realm="mcppool"')
    return ("Bearer " + ", ".join(parts)).encode("latin-1", "replace")


def match(path: str) -> str | None:
    """The pool slug of a metadata URL, else None."""
    prefix = WELL_KNOWN + MCP_PATH
    if not path.startswith(prefix):
        return None
    slug = path[len(prefix) :].strip("/")
    return slug if slug and "/" not in slug else None


async def handle(scope: Scope, receive: Receive, send: Send, host: RuntimeHost) -> None:
    slug = match(scope["path"])
    cors = [(b"access-control-allow-origin", b"*")]  # public metadata; browser clients read it
    if scope["method"] == "OPTIONS":
        await send_bytes(send, 204, b"", [*cors, (b"access-control-allow-methods", b"GET")])
        return
    issuers = host.access.issuers_for(slug) if slug else []
    if scope["method"] != "GET" or slug is None or not issuers or slug not in host.runtime.pools:
        status = 405 if scope["method"] != "GET" else 404
        await send_json(send, status, {"error": "no protected resource here"}, cors)
        return
    try:
        resource = resource_url(scope, slug)
    except ApiError as error:
        await send_error(send, error)
        return
    document = {
        "resource": resource,
        "authorization_servers": issuers,
        "bearer_methods_supported": ["header"],
        "resource_name": f"mcppool pool {slug}",
    }
    scopes = host.access.scopes_for(slug)
    if scopes:
        document["scopes_supported"] = scopes
    await send_json(send, 200, document, cors)
