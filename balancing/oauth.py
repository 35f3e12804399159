"""JWT access tokens from trusted issuers: signature against the issuer's JWKS, audience, expiry.

mcppool is an OAuth 2.1 protected resource (RFC 9728): an MCP client gets a token for a pool's
resource URL (RFC 8707) from the organisation's authorization server and sends it as a bearer
token. A token is accepted when

- its `iss` is a trusted issuer's identifier, exactly;
- its header's `alg` is one of the issuer's pinned algorithms (asymmetric only: `none` and the
  HMAC family can never be configured, so a public key can never be used as an HMAC secret);
- its signature verifies with the issuer's key of that `kid`;
- its `aud` holds the pool's resource URL, and `exp` (required) has not passed, `nbf`/`iat` allow,
  within the issuer's leeway.

Keys come from the issuer's JWKS (its `jwks_uri`, or the one its RFC 8414 / OpenID metadata names;
the metadata's `issuer` must equal the configured one). They are cached; a set older than
`max_age` is re-fetched in the background while the cached keys keep serving. A token signed with a
`kid` the cache does not know triggers one fetch at once (key rotation), at most once per
`min_refetch` seconds per issuer, so a flood of made-up `kid`s cannot turn into a flood of
fetches. Plain Python with aiohttp: no Django.

A token that passed is remembered (bounded) until its `exp`: the next request with the same token
skips the signature check. The verdict is dropped the moment its issuer's config changes or its
signing key leaves the issuer's key set, so removing a compromised key revokes its tokens here at
the next key-set fetch, not at their expiry.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import jwt
import orjson

log = logging.getLogger(__name__)

DEFAULT_ALGORITHMS: Final = ("RS256", "ES256")
MAX_DOCUMENT_BYTES: Final = 256 * 1024
FETCH_TIMEOUT: Final = 5.0
MAX_TOKEN_BYTES: Final = 16 * 1024
# Verdicts kept per (token, audience): a client sends the same token for many calls, and the
# signature check is most of the cost (~0.1 ms for RS256). Bounded; see `TokenValidator`.
VERIFIED_MAX: Final = 10_000

FetchJson = Callable[[str], Awaitable[Any]]


class TokenRejected(Exception):
    """The token is not acceptable; the message says why (safe to show the client)."""


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    issuer: str  # the exact `iss`
    jwks_uri: str = ""  # "" → discovered from the issuer's metadata
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    subject_claim: str = "sub"
    leeway: float = 30.0


@dataclass(frozen=True, slots=True)
class ValidToken:
    issuer: str
    subject: str
    claims: Mapping[str, Any]
    expires_at: float


def _symmetric(alg: str) -> bool:
    # Never, whatever a config says: with HS* a published public key becomes a shared secret.
    return alg == "none" or alg.upper().startswith("HS")


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")


def _segment(data: str) -> Any:
    try:
        return orjson.loads(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise TokenRejected("the token is not a well-formed JWT") from None


def metadata_urls(issuer: str) -> list[str]:
    """Where an issuer's metadata may be: RFC 8414 (path inserted), then OpenID Connect's."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    oauth = urlunsplit(
        (parts.scheme, parts.netloc, f"/.well-known/oauth-authorization-server{path}", "", "")
    )
    oidc = issuer.rstrip("/") + "/.well-known/openid-configuration"
    return [oauth, oidc]


class KeySet:
    """One issuer's signing keys (kid → key), fetched and re-fetched as described above."""

    def __init__(
        self,
        config: IssuerConfig,
        fetch_json: FetchJson,
        *,
        monotonic: Callable[[], float],
        min_refetch: float,
        max_age: float,
    ) -> None:
        self.config = config
        self._fetch_json = fetch_json
        self._monotonic = monotonic
        self._min_refetch = min_refetch
        self._max_age = max_age
        self.keys: dict[str, Any] = {}  # kid → cryptography public key
        self.loaded = False
        self.fetches = 0
        self._fetched_at = 0.0
        self._attempted_at = -1e18
        self._jwks_uri = config.jwks_uri
        self._inflight: asyncio.Future[None] | None = None
        self._background: asyncio.Task[None] | None = None

    async def key(self, kid: str | None) -> Any:
        """The key for `kid` (None when unknown even after the fetch this may allow). Raises
        when the set was never loaded and may not be fetched again yet: an issuer that is down
        is asked at most once per `min_refetch`, however many tokens arrive."""
        found = self.lookup(kid)
        now = self._monotonic()
        if found is None:
            if self._inflight is not None or now - self._attempted_at >= self._min_refetch:
                await self.refresh()  # first use, or maybe rotated: look once more
                found = self.lookup(kid)
            elif not self.loaded:
                raise RuntimeError("not loaded yet; the last fetch failed")
        elif now - self._fetched_at >= self._max_age:
            self.refresh_soon()
        return found

    def lookup(self, kid: str | None) -> Any:
        if kid is not None:
            return self.keys.get(kid)
        # No kid: only unambiguous with a single key.
        return next(iter(self.keys.values())) if len(self.keys) == 1 else None

    def refresh_soon(self) -> None:
        """Fetch in the background (the cached keys keep serving meanwhile)."""
        if self._background is None or self._background.done():
            self._background = asyncio.ensure_future(self._refresh_quietly())

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:  # logged; the cached keys keep serving
            log.warning("JWKS of %s: %s", self.config.issuer, exc)

    async def refresh(self) -> None:
        """Fetch the key set now; callers arriving meanwhile wait for the same fetch."""
        if self._inflight is not None:
            await asyncio.shield(self._inflight)
            return
        self._inflight = asyncio.get_running_loop().create_future()
        self._attempted_at = self._monotonic()
        try:
            self.keys = await self._fetch_keys()
            self._fetched_at = self._monotonic()
            self.loaded = True
            self.fetches += 1
            self._inflight.set_result(None)
        except Exception as exc:
            self._inflight.set_exception(exc)
            self._inflight.exception()  # retrieved: waiters re-raise their own copy
            raise
        finally:
            self._inflight = None

    async def _fetch_keys(self) -> dict[str, Any]:
        if not self._jwks_uri:
            self._jwks_uri = await self._discover()
        document = await self._fetch_json(self._jwks_uri)
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise ValueError(f"{self._jwks_uri} is not a JWK set")
        keys: dict[str, Any] = {}
        for position, entry in enumerate(entries):
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            try:
                keys[str(entry.get("kid", f"#{position}"))] = jwt.PyJWK(entry).key
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
                log.info("JWKS of %s: key %s skipped: %s", self.config.issuer, position, exc)
        return keys

    async def _discover(self) -> str:
        issuer = self.config.issuer
        for url in metadata_urls(issuer):
            try:
                metadata = await self._fetch_json(url)
            except (aiohttp.ClientError, TimeoutError, ValueError):
                continue
            if not isinstance(metadata, dict):
                continue
            if metadata.get("issuer") != issuer:
                # RFC 8414 §3.3: metadata naming another issuer must not be used.
                raise ValueError(f"{url} names issuer {metadata.get('issuer')!r}, not {issuer!r}")
            jwks_uri = metadata.get("jwks_uri")
            if isinstance(jwks_uri, str) and jwks_uri:
                return jwks_uri
        raise ValueError(f"no metadata with a jwks_uri found for issuer {issuer}")

    def close(self) -> None:
        if self._background is not None:
            self._background.cancel()


class TokenValidator:
    """Validates bearer JWTs against the configured issuers."""

    def __init__(
        self,
        *,
        fetch_json: FetchJson | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        min_refetch: float = 10.0,
        max_age: float = 300.0,
    ) -> None:
        self._fetch_json = fetch_json or self._http_json
        self._clock = clock
        self._monotonic = monotonic
        self._min_refetch = min_refetch
        self._max_age = max_age
        self._sets: dict[str, KeySet] = {}
        self._http: aiohttp.ClientSession | None = None
        # (token, audience) → (verdict, key set, kid)
        self._verified: dict[tuple[str, str], tuple[ValidToken, KeySet, str | None]] = {}

    @property
    def issuers(self) -> list[str]:
        return list(self._sets)

    def key_set(self, issuer: str) -> KeySet | None:
        return self._sets.get(issuer)

    def configure(self, issuers: Iterable[IssuerConfig]) -> None:
        """Take the trusted issuers of a config (start and each reload); an issuer whose settings
        did not change keeps its cached keys."""
        sets: dict[str, KeySet] = {}
        for config in issuers:
            current = self._sets.get(config.issuer)
            if current is not None and current.config == config:
                sets[config.issuer] = current
                continue
            sets[config.issuer] = KeySet(
                config,
                self._fetch_json,
                monotonic=self._monotonic,
                min_refetch=self._min_refetch,
                max_age=self._max_age,
            )
        for issuer, old in self._sets.items():
            if sets.get(issuer) is not old:
                old.close()
        self._sets = sets
        self._verified.clear()

    def prefetch(self) -> None:
        """Start fetching the keys of issuers not loaded yet, off the request path."""
        for key_set in self._sets.values():
            if not key_set.loaded:
                key_set.refresh_soon()

    async def validate(self, token: str, audience: str) -> ValidToken:
        known = self._verified.get((token, audience))
        if known is not None:
            valid, key_set, kid = known
            if (
                self._sets.get(valid.issuer) is key_set
                and key_set.lookup(kid) is not None
                and self._clock() <= valid.expires_at + key_set.config.leeway
            ):
                return valid
            del self._verified[(token, audience)]
        valid, key_set, kid = await self._verify(token, audience)
        if len(self._verified) >= VERIFIED_MAX:
            del self._verified[next(iter(self._verified))]  # the oldest
        self._verified[(token, audience)] = (valid, key_set, kid)
        return valid

    async def _verify(  # noqa: C901  # one check per RFC rule, in order
        self, token: str, audience: str
    ) -> tuple[ValidToken, KeySet, str | None]:
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenRejected("the token is too large")
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenRejected("the token is not a well-formed JWT")
        header, payload = _segment(parts[0]), _segment(parts[1])
        if not isinstance(header, dict) or not isinstance(payload, dict):
            raise TokenRejected("the token is not a well-formed JWT")
        issuer = payload.get("iss")
        key_set = self._sets.get(issuer) if isinstance(issuer, str) else None
        if key_set is None:
            raise TokenRejected("the token's issuer is not trusted here")
        config = key_set.config
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in config.algorithms or _symmetric(alg):
            raise TokenRejected(f"the token's algorithm {alg!r} is not accepted for its issuer")
        kid = header.get("kid")
        kid = kid if isinstance(kid, str) else None
        try:
            key = await key_set.key(kid)
        except Exception as exc:
            log.warning("JWKS of %s unavailable: %s", config.issuer, exc)
            raise TokenRejected("the issuer's signing keys are unavailable") from None
        if key is None:
            raise TokenRejected("the token is signed with a key its issuer does not publish")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=audience,
                issuer=config.issuer,
                leeway=config.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected("the token has expired") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected(f"the token is not meant for this resource ({audience})") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRejected(f"the token has no {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise TokenRejected("the token's signature does not verify") from None
        except (jwt.InvalidTokenError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
            raise TokenRejected(f"the token is not valid: {exc}") from None
        subject = claims.get(config.subject_claim)
        if not isinstance(subject, str | int) or subject == "":
            raise TokenRejected(f"the token has no {config.subject_claim!r} claim")
        valid = ValidToken(config.issuer, str(subject), claims, float(claims["exp"]))
        return valid, key_set, kid

    async def _http_json(self, url: str) -> Any:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT))
        async with self._http.get(url, headers={"accept": "application/json"}) as response:
            if response.status != 200:
                raise ValueError(f"GET {url}: HTTP {response.status}")
            body = await response.content.read(MAX_DOCUMENT_BYTES + 1)
            if len(body) > MAX_DOCUMENT_BYTES:
                raise ValueError(f"GET {url}: document too large")
            return orjson.loads(body)

    async def close(self) -> None:
        for key_set in self._sets.values():
            key_set.close()
        if self._http is not None:
            await self._http.close()
            self._http = None
