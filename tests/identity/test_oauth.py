"""Sign-in with the organisation's identity provider, end to end: a real authorization server
(npm oidc-provider), the gateway under uvicorn, the mcp SDK's OAuth client, a recording upstream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import httpx2
import jwt
import orjson
import pytest
from mcp import ClientSession
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from yarl import URL

from tests.api.gateway import Gateway
from tests.identity.authserver import CALLBACK, AuthServer
from tests.identity.conftest import Recorder

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.upstream]

HANDSHAKE = "2025-11-25"


def resource(gw: Gateway, pool: str = "tools") -> str:
    return f"{gw.url}/mcp/{pool}/"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def rpc(
    gw: Gateway, auth: Mapping[str, str], method: str, params: dict[str, Any] | None = None,
    pool: str = "tools",
) -> tuple[int, Any, Mapping[str, str]]:  # fmt: skip
    """One request on a fresh handshake-era session (the initialize's answer when it fails)."""
    headers = {**auth, "accept": "application/json, text/event-stream"}
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": HANDSHAKE, "capabilities": {},
                   "clientInfo": {"name": "test", "version": "1"}},
    }  # fmt: skip
    async with gw.http.post(resource(gw, pool), json=init, headers=headers) as response:
        if response.status != 200:
            return response.status, await response.json(), response.headers
        headers["mcp-session-id"] = response.headers["mcp-session-id"]
    headers["mcp-protocol-version"] = HANDSHAKE
    message = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}
    async with gw.http.post(resource(gw, pool), json=message, headers=headers) as response:
        return response.status, await response.json(), response.headers


async def rest_call(
    gw: Gateway, auth: Mapping[str, str], tool: str
) -> tuple[int, Any, Mapping[str, str]]:
    url = f"{gw.url}/api/v1/pools/tools/tools/{tool}/call"
    async with gw.http.post(url, json={"arguments": {}}, headers=dict(auth)) as response:
        return response.status, await response.json(), response.headers


# ---- discovery ------------------------------------------------------------------------------


async def test_metadata_names_the_pool_resource_and_its_issuer(
    gateway: Gateway, auth_server: AuthServer
) -> None:
    url = f"{gateway.url}/.well-known/oauth-protected-resource/mcp/tools/"
    async with gateway.http.get(url) as response:
        assert response.status == 200
        document = await response.json()
    assert document["resource"] == resource(gateway)
    assert document["authorization_servers"] == [auth_server.issuer]
    assert document["scopes_supported"] == ["mcp:tools"]
    # A pool no grant of any issuer covers is no protected resource of any issuer.
    closed = f"{gateway.url}/.well-known/oauth-protected-resource/mcp/closed/"
    async with gateway.http.get(closed) as response:
        assert response.status == 404


async def test_unauthenticated_request_gets_a_challenge_naming_the_metadata(
    gateway: Gateway,
) -> None:
    status, _, headers = await rpc(gateway, {}, "tools/list")
    assert status == 401
    metadata = f"{gateway.url}/.well-known/oauth-protected-resource/mcp/tools/"
    assert headers["www-authenticate"] == f'Bearer resource_metadata="{metadata}"'


# ---- the mcp SDK's OAuth client, authorization code + PKCE ---------------------------------


class MemoryStorage:
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


class Browser:
    """Follows the authorization redirects as a user's browser would (the test authorization
    server signs in and consents by itself) and hands the client the code it was redirected with."""

    def __init__(self) -> None:
        self.result: AuthorizationCodeResult | None = None

    async def open(self, url: str) -> None:
        jar = aiohttp.CookieJar(unsafe=True)  # cookies on 127.0.0.1
        async with aiohttp.ClientSession(cookie_jar=jar) as http:
            for _ in range(10):
                async with http.get(url, allow_redirects=False) as response:
                    assert response.status in (302, 303), await response.text()
                    url = response.headers["location"]
                    if url.startswith(("/", "?")):
                        url = str(response.url.join(URL(url)))
                if url.startswith(CALLBACK):
                    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
                    assert "code" in query, query
                    self.result = AuthorizationCodeResult(
                        code=query["code"], state=query.get("state"), iss=query.get("iss")
                    )
                    return
        raise AssertionError("the authorization server never redirected back")

    async def callback(self) -> AuthorizationCodeResult:
        assert self.result is not None
        return self.result


@pytest.mark.parametrize(
    ("pool", "registered"),
    [("tools", False), ("sticky", True)],
    ids=["shared-pool-dynamic-registration", "sticky-pool-preregistered-pkce-client"],
)
async def test_sdk_client_signs_in_through_the_401_and_calls_a_tool(
    gateway: Gateway, recorder: Recorder, pool: str, registered: bool
) -> None:
    # given an MCP client that knows nothing but the pool's URL (and maybe its client id)
    browser = Browser()
    storage = MemoryStorage()
    if registered:
        storage.client = OAuthClientInformationFull(
            client_id="pkce-client",
            redirect_uris=[CALLBACK],  # type: ignore[list-item]
            token_endpoint_auth_method="none",
            grant_types=["authorization_code"],
            response_types=["code"],
        )
    provider = OAuthClientProvider(
        server_url=resource(gateway, pool),
        client_metadata=OAuthClientMetadata(
            client_name="test client",
            redirect_uris=[CALLBACK],  # type: ignore[list-item]
            grant_types=["authorization_code"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=browser.open,
        callback_handler=browser.callback,
    )
    recorder.seen.clear()
    # when it connects: 401 → metadata → authorization server → code → token → retry
    async with (
        httpx2.AsyncClient(auth=provider, timeout=30.0) as http,
        streamable_http_client(resource(gateway, pool), http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        listed = await session.list_tools()
        result = await session.call_tool("whoami", {})
    # then the token was for this pool, and the user sees and calls what the policy allows
    assert storage.tokens is not None
    token = storage.tokens.access_token
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["aud"] == resource(gateway, pool)
    assert claims["sub"] == "alice"
    assert (storage.client.client_id == "pkce-client") == registered  # type: ignore[union-attr]
    assert {t.name for t in listed.tools} == {"echo", "limited", "whoami"}
    seen = orjson.loads(result.content[0].text)  # type: ignore[union-attr]
    assert seen["x-user"] == "alice"
    # and the upstream never saw the token, in any request
    assert recorder.seen
    for headers in recorder.seen:
        assert "authorization" not in headers
        assert all(token not in value for value in headers.values())


# ---- tokens refused ---------------------------------------------------------------------------


async def test_token_for_another_audience_is_refused(
    gateway: Gateway, auth_server: AuthServer
) -> None:
    token = await auth_server.token(resource(gateway, "closed"))
    status, body, headers = await rpc(gateway, bearer(token), "tools/list")
    assert status == 401
    assert body["error"]["data"]["code"] == "invalid_token"
    assert 'error="invalid_token"' in headers["www-authenticate"]
    status, body, _ = await rest_call(gateway, bearer(token), "echo")
    assert (status, body["error"]["code"]) == (401, "invalid_token")
    # The same token on the pool it was issued for: valid, but no grant lets it in.
    status, body, _ = await rpc(gateway, bearer(token), "tools/list", pool="closed")
    assert (status, body["error"]["data"]["code"]) == (403, "pool_forbidden")


async def test_token_for_a_lookalike_host_is_refused_whatever_host_the_client_claims(
    gateway: Gateway, auth_server: AuthServer
) -> None:
    # given a token the same provider issued for another service's look-alike URL
    token = await auth_server.token("http://evil.example.com/mcp/tools/")
    # when the client claims to be talking to that host
    headers = {**bearer(token), "Host": "evil.example.com"}
    status, body, _ = await rest_call(gateway, headers, "echo")
    # then the audience is never taken from a Host outside ALLOWED_HOSTS
    assert (status, body["error"]["code"]) == (403, "origin_forbidden")


async def test_expired_token_is_refused(gateway: Gateway, auth_server: AuthServer) -> None:
    token = await auth_server.token(resource(gateway), client="cc-short")
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]
    # Until the token's own expiry has passed (a condition on the clock, not a fixed pause).
    await asyncio.sleep(max(0.0, expires + 0.5 - time.time()))
    status, body, _ = await rest_call(gateway, bearer(token), "echo")
    assert status == 401
    assert body["error"]["code"] == "invalid_token"
    assert "expired" in body["error"]["message"]


async def test_token_signed_with_a_rotated_key_is_accepted(
    gateway: Gateway, auth_server: AuthServer
) -> None:
    # given the gateway holding the issuer's current keys
    first = await auth_server.token(resource(gateway))
    assert (await rest_call(gateway, bearer(first), "echo"))[0] == 200
    # when the issuer starts signing with a new key
    auth_server.rotate(f"k{int(time.time() * 1000)}")
    second = await auth_server.token(resource(gateway))
    assert jwt.get_unverified_header(second)["kid"] != jwt.get_unverified_header(first)["kid"]
    # then the gateway fetches the new key set on the unknown kid, and both tokens work
    assert (await rest_call(gateway, bearer(second), "echo"))[0] == 200
    assert (await rest_call(gateway, bearer(first), "echo"))[0] == 200


# ---- per-tool policy ----------------------------------------------------------------------


async def test_tool_outside_the_policy_is_invisible_and_refused(
    gateway: Gateway, auth_server: AuthServer, recorder: Recorder
) -> None:
    token = await auth_server.token(resource(gateway))
    recorder.called.clear()
    status, body, _ = await rpc(gateway, bearer(token), "tools/list")
    assert status == 200
    assert {t["name"] for t in body["result"]["tools"]} == {"echo", "limited", "whoami"}
    call = {"name": "delete_everything", "arguments": {}}
    status, body, _ = await rpc(gateway, bearer(token), "tools/call", call)
    assert status == 200
    assert body["error"]["code"] == -32602  # the spec's error for a tool not offered
    assert body["error"]["data"]["code"] == "tool_forbidden"
    status, body, _ = await rest_call(gateway, bearer(token), "delete_everything")
    assert (status, body["error"]["code"]) == (403, "tool_forbidden")
    assert "delete_everything" not in recorder.called


async def test_api_keys_follow_their_grants_and_keys_without_grants_see_everything(
    gateway: Gateway,
) -> None:
    status, body, _ = await rpc(gateway, gateway.auth("app"), "tools/list")
    assert {t["name"] for t in body["result"]["tools"]} == {"echo", "limited", "whoami"}
    status, body, _ = await rest_call(gateway, gateway.auth("app"), "delete_everything")
    assert (status, body["error"]["code"]) == (403, "tool_forbidden")
    status, body, _ = await rpc(gateway, gateway.auth("plain"), "tools/list")
    assert {t["name"] for t in body["result"]["tools"]} == {
        "echo", "delete_everything", "limited", "whoami",
    }  # fmt: skip


@pytest.mark.parametrize("caller", ["token", "key"])
async def test_per_tool_rate_limit_answers_429_with_retry_after(
    gateway: Gateway, auth_server: AuthServer, caller: str
) -> None:
    if caller == "token":
        auth = bearer(await auth_server.token(resource(gateway)))
    else:
        auth = gateway.auth("app")
    statuses = [(await rest_call(gateway, auth, "limited"))[0] for _ in range(2)]
    assert statuses == [200, 200]
    status, body, headers = await rest_call(gateway, auth, "limited")
    assert (status, body["error"]["code"]) == (429, "rate_limited")
    assert int(headers["retry-after"]) >= 1
    # over MCP too, as a transport refusal with Retry-After
    status, _, headers = await rpc(gateway, auth, "tools/call", {"name": "limited"})
    assert status == 429
    assert int(headers["retry-after"]) >= 1
    # other tools are not limited
    assert (await rest_call(gateway, auth, "echo"))[0] == 200


# ---- what the upstream learns ----------------------------------------------------------------


async def test_upstream_learns_the_caller_and_its_own_secret_never_the_token(
    gateway: Gateway, auth_server: AuthServer
) -> None:
    token = await auth_server.token(resource(gateway))
    status, body, _ = await rest_call(gateway, bearer(token), "whoami")
    assert status == 200
    seen = orjson.loads(body["content"][0]["text"])
    assert seen["x-user"] == "cc-client"  # a client_credentials token's subject
    assert "x-token" not in seen  # no secret stored for it
    assert "authorization" not in seen
    status, body, _ = await rest_call(gateway, gateway.auth("plain"), "whoami")
    seen = orjson.loads(body["content"][0]["text"])
    assert seen["x-user"] == "plain"
    assert seen["x-token"] == "plain-own-secret"
