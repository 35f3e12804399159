"""The test authorization server (npm oidc-provider, `tests/upstreams/node/authserver.mjs`) as a
process, with its signing keys in a file the test controls, so a test can rotate them."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.upstreams import procs

SCRIPT = procs.NODE_DIR / "authserver.mjs"
CALLBACK = "http://127.0.0.1/callback"


def installed() -> bool:
    return (procs.NODE_DIR / "node_modules" / "oidc-provider" / "package.json").exists()


def private_jwk(kid: str) -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key))
    jwk.update(kid=kid, alg="RS256", use="sig")
    return jwk


@dataclass
class AuthServer:
    keys_file: Path
    keys: list[dict[str, Any]] = field(default_factory=list)
    process: procs.UpstreamProcess | None = None
    port: int = 0

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.keys_file.write_text(json.dumps({"keys": self.keys}))
        self.process = procs._start_http(
            "authserver",
            lambda port: ["node", str(SCRIPT)],
            env={"JWKS_FILE": str(self.keys_file)},
            env_for_port=lambda port: {"PORT": str(port)},
            port=self.port or None,
        )
        self.port = self.process.port

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def rotate(self, kid: str) -> None:
        """A new signing key first, the old ones still published; restarted on the same port."""
        self.stop()
        self.keys = [private_jwk(kid), *self.keys]
        self.start()

    async def token(
        self, resource: str, *, client: str = "cc-client", scope: str = "mcp:tools"
    ) -> str:
        """A client_credentials access token for `resource` (a JWT with that audience)."""
        form = {"grant_type": "client_credentials", "scope": scope, "resource": resource}
        headers = {"Authorization": aiohttp.encode_basic_auth(client, "cc-secret")}
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{self.issuer}/token", data=form, headers=headers) as response,
        ):
            body = await response.json()
            assert response.status == 200, body
            token: str = body["access_token"]
            return token


def start() -> AuthServer:
    server = AuthServer(Path(tempfile.mkdtemp(prefix="mcppool-as-")) / "keys.json")
    server.keys = [private_jwk("k1")]
    server.start()
    return server
