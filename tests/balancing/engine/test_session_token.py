"""Sealed client session ids: what another web process needs, and nothing a client can forge."""

from __future__ import annotations

import base64
import re

import pytest

from balancing.engine.session_token import ForeignSession, SessionSealer, SessionToken

TOKEN = SessionToken(
    pool="p",
    key_id=7,
    owner="proc-a",
    protocol_version="2025-06-18",
    server_id=3,
    upstream_session_id="upstream-session-1",
    server_capabilities={"tools": {"listChanged": True}},
    client_info={"name": "cli", "version": "1"},
    client_capabilities={"sampling": {}},
)


def test_session_token_opened_by_another_sealer_gives_back_what_it_carries() -> None:
    # given an id sealed by one process
    session_id = SessionSealer(["k1"]).seal(TOKEN)
    # when another process with the same key opens it
    opened = SessionSealer(["k1"]).open("p", session_id)
    # then it has everything it needs to continue the session
    assert opened == TOKEN
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", session_id)  # a valid header value


def test_session_token_same_session_twice_gives_two_unguessable_ids() -> None:
    sealer = SessionSealer(["k1"])
    assert sealer.seal(TOKEN) != sealer.seal(TOKEN)


@pytest.mark.parametrize("how", ["flipped", "truncated", "other pool", "other key", "garbage"])
def test_session_token_altered_or_foreign_is_refused(how: str) -> None:
    sealer = SessionSealer(["k1"])
    session_id = sealer.seal(TOKEN)
    pool = "p"
    if how == "flipped":
        prefix, body = session_id[:6], session_id[6:]
        raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        raw[20] ^= 1
        session_id = prefix + base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    elif how == "truncated":
        session_id = session_id[:-4]
    elif how == "other pool":
        pool = "q"
    elif how == "other key":
        session_id = SessionSealer(["another deployment"]).seal(TOKEN)
    else:
        session_id = "not-an-id"
    with pytest.raises(ForeignSession):
        sealer.open(pool, session_id)


def test_session_token_of_a_retired_key_is_refused_once_rotation_completes() -> None:
    # given an id sealed before the key rotation
    session_id = SessionSealer(["old"]).seal(TOKEN)
    # while rotating (new key first, old key still listed) it still opens
    assert SessionSealer(["new", "old"]).open("p", session_id) == TOKEN
    # and once the old key is removed it does not
    with pytest.raises(ForeignSession):
        SessionSealer(["new"]).open("p", session_id)
