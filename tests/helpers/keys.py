"""API keys through the gateway's real authentication path: the key cache exactly as the runtime
host builds it (the servers app's one parser and one hash check), filled from the database."""

from __future__ import annotations

import asyncio
from typing import Any

from balancing import adapter
from balancing.errors_http import ApiError
from balancing.keys import KeyCache, KeyRecord, Lookup


def key_cache(lookup: Lookup | None = None, **kwargs: Any) -> KeyCache:
    """A key cache wired as `RuntimeHost` wires its own."""
    return KeyCache(lookup, parse=adapter.parse_api_key, verify=adapter.secret_matches, **kwargs)


def authenticated(secret: str) -> KeyRecord | None:
    """The stored key this secret authenticates as, or None (sync: call from DB tests)."""
    cache = key_cache()
    cache.replace(adapter.load_api_keys())
    try:
        return asyncio.run(cache.authenticate(secret))
    except ApiError:
        return None


def a_wrong_secret(secret: str) -> str:
    """The same key with its last character changed: same prefix, wrong secret."""
    return secret[:-1] + ("A" if secret[-1] != "A" else "B")
