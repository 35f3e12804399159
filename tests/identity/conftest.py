"""Fixtures for sign-in and per-tool policy: a real authorization server, an upstream that records
every header it receives, and a gateway whose pool trusts the authorization server."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from asgiref.sync import sync_to_async
from cryptography.fernet import Fernet

from servers.identity import services as identity
from servers.identity.models import AccessGrant, ServerIdentity, TrustedIssuer
from servers.models import ApiKey, Server
from tests.api.gateway import Gateway, add_key, add_pool, serve_gateway
from tests.identity import authserver
from tests.upstreams import threaded

TOOLS = ("echo", "delete_everything", "limited", "whoami")


@dataclass
class Recorder:
    """An MCP server (handshake era, JSON answers) that keeps the headers of every request."""

    url: str = ""
    seen: list[dict[str, str]] = field(default_factory=list)  # every request's headers
    called: list[str] = field(default_factory=list)  # tools called

    def answer(self, message: dict[str, Any], headers: dict[str, str]) -> Any:
        method = message.get("method")
        if method == "initialize":
            return {
                "protocolVersion": "2025-11-25",
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "recorder", "version": "1"},
            }
        if method == "tools/list":
            schema = {"type": "object"}
            return {"tools": [{"name": n, "inputSchema": schema} for n in TOOLS]}
        if method == "tools/call":
            name = message["params"]["name"]
            self.called.append(name)
            text = orjson.dumps(headers).decode() if name == "whoami" else f"{name} ran"
            return {"content": [{"type": "text", "text": text}]}
        return {}


@pytest.fixture(scope="session")
def auth_server() -> Iterator[authserver.AuthServer]:
    if not authserver.installed():
        if os.environ.get("CI") == "true":
            pytest.fail("npm oidc-provider is missing: make node")
        pytest.skip("npm oidc-provider is not installed (make node)")
    server = authserver.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def recorder() -> Iterator[Recorder]:
    rec = Recorder()

    async def handle(request: web.Request) -> web.StreamResponse:
        headers = {k.lower(): v for k, v in request.headers.items()}
        rec.seen.append(headers)
        if request.method != "POST":
            return web.Response(status=405 if request.method == "GET" else 200)
        message = orjson.loads(await request.read())
        if "id" not in message:
            return web.Response(status=202)
        body = {"jsonrpc": "2.0", "id": message["id"], "result": rec.answer(message, headers)}
        return web.json_response(body, headers={"mcp-session-id": "rec-1"})

    with threaded.serve(handle) as url:
        rec.url = url
        yield rec


def _setup(issuer_url: str, upstream_url: str) -> dict[str, str]:
    """Pools `tools` (shared) and `sticky` trust the authorization server: tokens with scope
    mcp:tools may call every tool but delete_*, `limited` twice a minute; an API key with the same
    grant on `tools`; `closed` is a pool no grant covers; servers learn their caller in X-User."""
    pool = add_pool("tools", [("rec", upstream_url)])
    sticky = add_pool("sticky", [("rec", upstream_url)], session_mode="sticky")
    add_pool("closed", [("rec", upstream_url)])
    # No leeway: the expiry test waits out a 1 s token, not 30 s more.
    issuer = identity.save(TrustedIssuer(name="test-as", issuer=issuer_url, leeway_seconds=0))
    policy = {"allow_tools": ["*"], "deny_tools": ["delete_*"], "tool_rate_limits": {"limited": 2}}
    for granted in (pool, sticky):
        identity.save(
            AccessGrant(issuer=issuer, claim="scope", value="mcp:tools", pool=granted, **policy)
        )
    keys = {"app": add_key("app", ["tools"]), "plain": add_key("plain", ["tools"])}
    identity.save(AccessGrant(api_key=ApiKey.objects.get(name="app"), pool=pool, **policy))
    for server in Server.objects.filter(pool__in=[pool, sticky]):
        identity.save(
            ServerIdentity(server=server, identity_header="X-User", secret_header="X-Token")
        )
    identity.set_user_secret(Server.objects.get(pool=pool), "plain", "plain-own-secret")
    return keys


@pytest.fixture
async def gateway(
    auth_server: authserver.AuthServer, recorder: Recorder, settings: Any
) -> AsyncIterator[Gateway]:
    settings.MCPPOOL_SECRETS_KEYS = [Fernet.generate_key().decode()]
    settings.MCPPOOL_JWKS_MIN_REFETCH_SECONDS = 0.0  # the rotation test rotates within seconds
    keys = await sync_to_async(_setup)(auth_server.issuer, recorder.url)
    async with serve_gateway() as gw:
        gw.keys.update(keys)
        yield gw
