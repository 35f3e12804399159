"""Token validation without a network: keys signed here, the JWKS fetch injected and counted."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from balancing.oauth import IssuerConfig, TokenRejected, TokenValidator
from tests.helpers.fakes import Clock

ISSUER = "https://id.example.com"
AUDIENCE = "https://gw.example.com/mcp/docs/"


class Issuer:
    """Signing keys and the JWKS (and metadata) documents a fake fetch serves."""

    def __init__(self) -> None:
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.fetched: list[str] = []
        self.metadata_issuer = ISSUER
        self.add_key("k1")

    def add_key(self, kid: str) -> None:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    async def fetch(self, url: str) -> Any:
        self.fetched.append(url)
        if url.endswith("/.well-known/openid-configuration"):
            return {"issuer": self.metadata_issuer, "jwks_uri": f"{ISSUER}/jwks"}
        if url == f"{ISSUER}/jwks":
            entries = []
            for kid, key in self.keys.items():
                jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
                entries.append({**jwk, "kid": kid, "use": "sig"})
            return {"keys": entries}
        raise ValueError(f"404 {url}")

    def token(self, kid: str = "k1", **claims: Any) -> str:
        payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": time.time() + 60}
        payload.update(claims)
        return jwt.encode(payload, self.keys[kid], algorithm="RS256", headers={"kid": kid})

    @property
    def jwks_fetches(self) -> int:
        return self.fetched.count(f"{ISSUER}/jwks")


def validator(issuer: Issuer, clock: Clock, **config: Any) -> TokenValidator:
    v = TokenValidator(fetch_json=issuer.fetch, monotonic=clock, min_refetch=10.0, max_age=300.0)
    v.configure([IssuerConfig(issuer=ISSUER, **config)])
    return v


async def test_validator_accepts_a_good_token_after_discovering_the_jwks() -> None:
    issuer = Issuer()
    token = await validator(issuer, Clock()).validate(issuer.token(groups=["sre"]), AUDIENCE)
    assert (token.issuer, token.subject, token.claims["groups"]) == (ISSUER, "alice", ["sre"])
    assert f"{ISSUER}/.well-known/openid-configuration" in issuer.fetched


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hand_made(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest() if secret else b""
    return f"{signing_input}.{_b64(mac)}"


async def test_validator_refuses_hmac_signed_with_the_public_key_and_none() -> None:
    # given an issuer whose config even lists HS256, and an attacker holding its public key
    issuer = Issuer()
    v = validator(issuer, Clock(), algorithms=("RS256", "HS256"))
    await v.validate(issuer.token(), AUDIENCE)  # keys loaded
    public_pem = (
        issuer.keys["k1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": time.time() + 60}
    # when it signs with HS256 using the public key as the secret, or does not sign at all
    confused = _hand_made({"alg": "HS256", "kid": "k1"}, claims, public_pem)
    unsigned = _hand_made({"alg": "none", "kid": "k1"}, claims, None)
    # then neither is accepted
    for forged in (confused, unsigned):
        with pytest.raises(TokenRejected, match="algorithm"):
            await v.validate(forged, AUDIENCE)


async def test_validator_refetches_on_unknown_kid_at_most_once_per_interval() -> None:
    issuer = Issuer()
    clock = Clock()
    v = validator(issuer, clock)
    await v.validate(issuer.token(), AUDIENCE)
    assert issuer.jwks_fetches == 1
    # a flood of made-up kids after the interval: one re-fetch, then none until it passes again
    clock.now += 10.0
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": time.time() + 60}
    for n in range(20):
        unknown = jwt.encode(
            claims, issuer.keys["k1"], algorithm="RS256", headers={"kid": f"nope-{n}"}
        )
        with pytest.raises(TokenRejected, match="does not publish"):
            await v.validate(unknown, AUDIENCE)
    assert issuer.jwks_fetches == 2
    # a real rotation after the interval is picked up
    issuer.add_key("k2")
    clock.now += 10.0
    token = await v.validate(issuer.token("k2"), AUDIENCE)
    assert token.subject == "alice"
    assert issuer.jwks_fetches == 3


async def test_validator_refuses_metadata_that_names_another_issuer() -> None:
    issuer = Issuer()
    issuer.metadata_issuer = "https://evil.example.com"
    with pytest.raises(TokenRejected, match="unavailable"):
        await validator(issuer, Clock()).validate(issuer.token(), AUDIENCE)
    assert issuer.jwks_fetches == 0


async def test_validator_refuses_untrusted_issuer_missing_exp_and_wrong_audience() -> None:
    issuer = Issuer()
    v = validator(issuer, Clock())
    with pytest.raises(TokenRejected, match="not trusted"):
        await v.validate(issuer.token(iss="https://elsewhere.example.com"), AUDIENCE)
    no_exp = jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "sub": "a"}, issuer.keys["k1"], algorithm="RS256",
        headers={"kid": "k1"},
    )  # fmt: skip
    with pytest.raises(TokenRejected, match="'exp'"):
        await v.validate(no_exp, AUDIENCE)
    with pytest.raises(TokenRejected, match="not meant for this resource"):
        await v.validate(issuer.token(aud="https://gw.example.com/mcp/other/"), AUDIENCE)


async def test_validator_forgets_a_kept_verdict_when_its_key_leaves_the_key_set() -> None:
    # given a token verified once (its verdict kept for the next requests)
    issuer = Issuer()
    clock = Clock()
    v = validator(issuer, clock)
    token = issuer.token()
    assert (await v.validate(token, AUDIENCE)).subject == "alice"
    # when the issuer withdraws the key (compromised) and the key set is fetched again
    issuer.add_key("k2")
    del issuer.keys["k1"]
    clock.now += 10.0
    assert (await v.validate(issuer.token("k2"), AUDIENCE)).subject == "alice"
    # then the token signed with the withdrawn key is refused, expiry or not
    with pytest.raises(TokenRejected, match="does not publish"):
        await v.validate(token, AUDIENCE)


async def test_validator_refuses_a_kept_verdict_once_the_token_expires() -> None:
    issuer = Issuer()
    v = TokenValidator(fetch_json=issuer.fetch)
    v.configure([IssuerConfig(issuer=ISSUER, leeway=0.0)])
    expires = int(time.time()) + 1
    token = issuer.token(exp=expires)
    await v.validate(token, AUDIENCE)
    await asyncio.sleep(max(0.0, expires + 0.2 - time.time()))  # until the token's own expiry
    with pytest.raises(TokenRejected, match="expired"):
        await v.validate(token, AUDIENCE)


async def test_validator_asks_an_unreachable_issuer_once_per_interval() -> None:
    # given an issuer whose key set cannot be fetched
    issuer = Issuer()
    clock = Clock()
    fetched: list[str] = []

    async def down(url: str) -> Any:
        fetched.append(url)
        raise ValueError("503")

    v = TokenValidator(fetch_json=down, monotonic=clock, min_refetch=10.0)
    v.configure([IssuerConfig(issuer=ISSUER, jwks_uri=f"{ISSUER}/jwks")])
    # when many tokens arrive, then it is asked once, and each token is refused as such
    for _ in range(10):
        with pytest.raises(TokenRejected, match="unavailable"):
            await v.validate(issuer.token(), AUDIENCE)
    assert fetched == [f"{ISSUER}/jwks"]
    clock.now += 10.0
    with pytest.raises(TokenRejected, match="unavailable"):
        await v.validate(issuer.token(), AUDIENCE)
    assert len(fetched) == 2
