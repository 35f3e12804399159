"""What authenticating a call costs: an API key against a JWT access token (issue 21).

    .venv/bin/python -m bench.auth_cost [--calls 5000] [--json out.json]

Each way is timed as the REST and MCP endpoints run it per request (`access.authenticate` then
`access.allowed_tool`): an API key is a prefix lookup in the in-memory cache plus one SHA-256; a
token seen for the first time is parsed, its issuer's cached key found by `kid`, its signature
verified (RS256 with a 2048-bit key, ES256 with P-256), its claims checked and mapped to grants;
the same token again is a lookup of the kept verdict plus checks of its key and expiry. The key
set is already cached, as it is on every request but the first after a rotation. CPU time
(`time.process_time`) per call, best of five rounds; the yardstick is the gateway's measured CPU
per forwarded call (about 0.3–0.4 ms, docs/benchmarks.md). Plain Python, no Django, no network.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from balancing.engine.toolpolicy import ClaimRule, Grant
from balancing.identity import AccessBook, AccessSnapshot
from balancing.keys import KeyCache, KeyRecord
from balancing.oauth import IssuerConfig, TokenValidator
from servers.keyformat import hash_secret, parse_api_key, secret_matches

ISSUER = "https://login.example.com"
AUDIENCE = "https://gw.example.com/mcp/crm/"
CALL_CPU_MS = 0.35  # the gateway's CPU per forwarded call, REST at c=16 (bench/results.json)


def _jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = jwt.algorithms.RSAAlgorithm if alg == "RS256" else jwt.algorithms.ECAlgorithm
    entry: dict[str, Any] = json.loads(algorithm.to_jwk(key.public_key()))
    return {**entry, "kid": kid, "alg": alg, "use": "sig"}


async def _setup() -> tuple[KeyCache, AccessBook, str, dict[str, str]]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwks = {"keys": [_jwk(rsa_key, "r1", "RS256"), _jwk(ec_key, "e1", "ES256")]}

    async def fetch(url: str) -> Any:
        return jwks

    book = AccessBook(TokenValidator(fetch_json=fetch))
    grant = Grant(pools=("crm",), deny=("delete_*",), tool_limits=())
    book.replace(
        AccessSnapshot(
            issuers=(
                IssuerConfig(
                    issuer=ISSUER, jwks_uri=f"{ISSUER}/jwks", algorithms=("RS256", "ES256")
                ),
            ),
            claim_rules=(ClaimRule(ISSUER, "scope", "mcp:tools", grant),),
            key_grants={1: (grant,)},
        )
    )
    secret = "mcp_abcd1234_" + "x" * 43
    keys = KeyCache(parse=parse_api_key, verify=secret_matches)
    keys.replace(
        [
            KeyRecord(
                id=1,
                name="app",
                prefix="abcd1234",
                hashed_secret=hash_secret(secret),
                pools=frozenset({"crm"}),
            )
        ]
    )
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "scope": "mcp:tools openid",
        "exp": int(time.time()) + 3600,
        "iat": int(time.time()),
        "groups": ["engineering"],
    }
    tokens = {
        "RS256": jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": "r1"}),
        "ES256": jwt.encode(claims, ec_key, algorithm="ES256", headers={"kid": "e1"}),
    }
    await book.validator.validate(tokens["RS256"], AUDIENCE)  # the key set, cached once
    return keys, book, secret, tokens


def _best_ms(run: Callable[[], Awaitable[None]], calls: int, rounds: int = 5) -> float:
    loop = asyncio.new_event_loop()
    try:
        best = float("inf")
        for _ in range(rounds):
            started = time.process_time()
            loop.run_until_complete(run())
            best = min(best, (time.process_time() - started) / calls * 1000)
        return best
    finally:
        loop.close()


def measure(calls: int) -> dict[str, float]:
    keys, book, secret, tokens = asyncio.run(_setup())
    # A fresh book per loop would refetch; the validator's event-loop-bound parts are idle here.

    async def by_key() -> None:
        for _ in range(calls):
            record = await keys.authenticate(secret)
            book.on_pool(record, "crm").allows("search")

    def by_token(token: str, first_seen: bool) -> Callable[[], Awaitable[None]]:
        validator = book.validator
        # First seen: the whole verification, as for a token's first request (the verdict
        # cache bypassed); repeated: what every later request with the same token costs.
        check = validator._verify if first_seen else validator.validate

        async def run() -> None:
            for _ in range(calls):
                valid = await check(token, AUDIENCE)
                if isinstance(valid, tuple):
                    valid = valid[0]
                subject = book._new_subject(valid) if first_seen else book.subject_for(valid)
                book.on_pool(subject, "crm").allows("search")

        return run

    return {
        "api_key_ms": _best_ms(by_key, calls),
        "jwt_rs256_first_ms": _best_ms(by_token(tokens["RS256"], True), calls),
        "jwt_es256_first_ms": _best_ms(by_token(tokens["ES256"], True), calls),
        "jwt_repeated_ms": _best_ms(by_token(tokens["RS256"], False), calls),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = measure(args.calls)
    print(f"authentication + tool policy, CPU per call (best of 5 × {args.calls} calls):")
    labels = {
        "api_key_ms": "API key (cache lookup + SHA-256)",
        "jwt_rs256_first_ms": "JWT RS256 2048-bit, first request",
        "jwt_es256_first_ms": "JWT ES256 P-256, first request",
        "jwt_repeated_ms": "JWT, same token again (verdict kept)",
    }
    for key, label in labels.items():
        ms = result[key]
        share = ms / CALL_CPU_MS * 100
        print(f"  {label:38s} {ms * 1000:7.1f} µs  ({share:4.1f} % of a {CALL_CPU_MS} ms call)")
    if args.json:
        args.json.write_text(json.dumps({**result, "calls": args.calls}, indent=2))


if __name__ == "__main__":
    main()
