"""Upstream secrets at rest: Fernet-encrypted header and environment values.

A server keeps plain values in `headers` / `env` and secret ones in `secret_headers` /
`secret_env`, each a map of name → Fernet token. Only this module sees both the key and the
plaintext: the model stores tokens, the admin and exports show `mask()`ed values, and the
runtime's adapter asks `reveal()` for the plain values when it builds a `ServerConfig`.

Keys come from `MCPPOOL_SECRETS_KEY` (comma-separated; the first encrypts, every one decrypts,
so a new key goes first and the old one stays until `mcppool rotate-secrets` has re-encrypted
everything). A masked value (`••••` plus at most the last two characters) anywhere a value is
written back means "keep the stored value": an operator can save a form or re-apply an export
without ever seeing, or having to know, the secret.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from servers.models import Server

MASK = "••••"
# Only a long secret shows its last two characters: enough to tell two tokens apart, too little
# to help guess one.
_MASK_HINT_MIN_LENGTH = 12
_KEY_VARIABLE = "MCPPOOL_SECRETS_KEY"


class SecretsKeyMissing(ImproperlyConfigured):
    """A secret is stored or read but no key is configured."""


class SecretUnreadable(ImproperlyConfigured):
    """A stored token does not decrypt with any configured key."""


class MaskedWithoutValue(ValueError):
    """A masked value was given for a name that has no stored value to keep."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        super().__init__(
            f"{', '.join(names)}: masked, but nothing is stored to keep; give the value"
        )


def _configured_keys() -> tuple[str, ...]:
    return tuple(getattr(settings, "MCPPOOL_SECRETS_KEYS", ()))


@lru_cache(maxsize=4)
def _fernet_for(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise SecretsKeyMissing(
            f"{_KEY_VARIABLE} is not set, so secret headers and environment values cannot be "
            "stored or read. Generate one with: python -c 'from cryptography.fernet import "
            "Fernet; print(Fernet.generate_key().decode())'"
        )
    fernets = []
    for position, key in enumerate(keys, start=1):
        try:
            fernets.append(Fernet(key.encode()))
        except (ValueError, TypeError):
            # Never echo the key itself, not even in an error.
            raise ImproperlyConfigured(
                f"{_KEY_VARIABLE}: key #{position} is not a Fernet key "
                "(32 url-safe base64-encoded bytes)"
            ) from None
    return MultiFernet(fernets)


def fernet() -> MultiFernet:
    """The configured keys, checked; raises ImproperlyConfigured naming the variable."""
    return _fernet_for(_configured_keys())


def check_keys() -> None:
    """Fail start-up on a malformed key (a missing one only fails once a secret is used)."""
    if _configured_keys():
        fernet()


def encrypt(plain: str) -> str:
    return fernet().encrypt(plain.encode()).decode()


def decrypt(token: str, *, what: str = "a secret") -> str:
    try:
        return fernet().decrypt(token.encode()).decode()
    except (InvalidToken, UnicodeDecodeError):
        raise SecretUnreadable(
            f"{what} cannot be decrypted with {_KEY_VARIABLE}: it was encrypted with another key "
            f"(to rotate, list the new key first and keep the old one after it)"
        ) from None


def rotate(token: str, *, what: str = "a secret") -> str:
    """The same value encrypted with the first key."""
    try:
        return fernet().rotate(token.encode()).decode()
    except InvalidToken:
        raise SecretUnreadable(f"{what} cannot be decrypted with {_KEY_VARIABLE}") from None


def reveal(tokens: Mapping[str, str], *, what: str = "secret") -> dict[str, str]:
    """Plain values of a token map; `what` names the owner in the error (`server pool/a …`)."""
    return {name: decrypt(token, what=f"{what} {name!r}") for name, token in tokens.items()}


def runtime_headers(server: Server) -> tuple[tuple[str, str], ...]:
    """Plain and secret headers together, as the runtime sends them upstream."""
    return _merged(server, server.headers, server.secret_headers, "header")


def runtime_env(server: Server) -> tuple[tuple[str, str], ...]:
    """Plain and secret environment values together, as the runtime starts the process with."""
    return _merged(server, server.env, server.secret_env, "environment value")


def _merged(
    server: Server, plain: Mapping[str, str], tokens: Mapping[str, str], kind: str
) -> tuple[tuple[str, str], ...]:
    if not tokens:
        return tuple(sorted(plain.items()))
    # Named without touching server.pool: the snapshot loads servers without their pools.
    what = f"server {server.name!r} (id {server.pk}): secret {kind}"
    return tuple(sorted({**plain, **reveal(tokens, what=what)}.items()))


def mask(plain: str) -> str:
    return MASK + plain[-2:] if len(plain) >= _MASK_HINT_MIN_LENGTH else MASK


def is_masked(value: str) -> bool:
    return value.startswith(MASK)


def masked(tokens: Mapping[str, str]) -> dict[str, str]:
    """What an operator may see of a token map. A token no key opens still shows as set."""
    shown = {}
    for name, token in tokens.items():
        try:
            shown[name] = mask(decrypt(token))
        except ImproperlyConfigured:
            shown[name] = MASK
    return shown


class Sealed(dict[str, str]):
    """A token map as a write sealed it, remembering which names the write gave in plaintext
    (`supplied`): only those survive a change of the server's target (`drop_on_new_target`)."""

    supplied: frozenset[str] = frozenset()


def seal(values: Mapping[str, str], current: Mapping[str, str]) -> Sealed:
    """The token map to store for `values` (name → plain or masked value), given the stored one.

    A masked value keeps the stored token; an unchanged plain value keeps it too, so saving a
    form or re-applying a file writes nothing new. A name left out is removed. Raises
    MaskedWithoutValue when a masked value has nothing stored to keep.
    """
    sealed = Sealed()
    sealed.supplied = frozenset(name for name, value in values.items() if not is_masked(value))
    missing: list[str] = []
    for name, value in values.items():
        token = current.get(name)
        if is_masked(value):
            if token is None:
                missing.append(name)
            else:
                sealed[name] = token
        elif token is not None and _decrypts_to(token, value):
            sealed[name] = token
        else:
            sealed[name] = encrypt(value)
    if missing:
        raise MaskedWithoutValue(missing)
    return sealed


def _decrypts_to(token: str, value: str) -> bool:
    try:
        return decrypt(token) == value
    except SecretUnreadable:
        return False


# What a secret value is bound to: where the requests go (HTTP) or what program receives the
# environment (stdio). A write that changes one of these could point a stored credential at a
# listener of its own, so stored secrets do not survive it unless the write gives them again.
TARGET_FIELDS = ("transport", "url", "command", "args", "cwd")
SECRET_FIELDS = ("secret_headers", "secret_env")


def drop_on_new_target(
    server: Server, update_fields: Iterable[str] | None = None
) -> dict[str, list[str]]:
    """Before a save: when the server's target changes, keep only the secret values this same
    write supplied in plaintext (a masked value, or no value, is not supplying it). Returns the
    dropped names per field. Called from `Server.save()`, so admin, REST and YAML alike pass."""
    if server.pk is None or not (server.secret_headers or server.secret_env):
        return {}
    if update_fields is not None and not set(update_fields) & set(TARGET_FIELDS):
        return {}
    stored = type(server).objects.filter(pk=server.pk).values(*TARGET_FIELDS).first()
    if stored is None or all(stored[f] == getattr(server, f) for f in TARGET_FIELDS):
        return {}
    dropped: dict[str, list[str]] = {}
    for field in SECRET_FIELDS:
        tokens = getattr(server, field) or {}
        supplied: frozenset[str] = getattr(tokens, "supplied", frozenset())
        kept = {name: token for name, token in tokens.items() if name in supplied}
        if len(kept) != len(tokens):
            dropped[field] = sorted(set(tokens) - set(kept))
            setattr(server, field, kept)
    return dropped
