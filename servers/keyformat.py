"""API key secrets: the one format, parser and hasher. Plain Python (no Django), so the gateway's
key cache, the services that create keys and the benchmarks all use the same functions."""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

API_KEY_PREFIX_LEN: Final = 8


def hash_secret(secret: str) -> str:
    # API secrets are 256-bit random tokens, so a fast hash is enough (no dictionary to guess from).
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, hashed_secret: str) -> bool:
    """Whether a presented secret is the one whose hash is stored (in constant time)."""
    return hmac.compare_digest(hash_secret(secret), hashed_secret)


def parse_api_key(secret: str) -> str | None:
    """The lookup prefix of `mcp_<prefix>_<body>`, or None when the secret is not shaped so."""
    parts = secret.split("_", 2)
    if len(parts) != 3 or parts[0] != "mcp" or len(parts[1]) != API_KEY_PREFIX_LEN or not parts[2]:
        return None
    return parts[1]
