"""What a sealed client session id costs per request: opening it (every request a process does
not hold the session for, once; then the session is held) and sealing it (once per session).

    python -m bench.session_token [--rounds 20000]

Prints microseconds per seal and per open of a typical sticky session's id (server-everything's
capabilities, an SDK client's info), and the id's length in bytes.
"""

from __future__ import annotations

import argparse
import time

from balancing.engine.session_token import SessionSealer, SessionToken

TOKEN = SessionToken(
    pool="tools",
    key_id=42,
    owner="9f2c4e1d7a6b4c3e8f0a1b2c3d4e5f60",
    protocol_version="2025-11-25",
    server_id=7,
    upstream_session_id="6f9b3c2e-1a4d-4e8f-9b7c-2d1e0f3a4b5c",
    server_capabilities={
        "prompts": {},
        "resources": {"subscribe": True},
        "tools": {},
        "logging": {},
        "completions": {},
    },
    client_info={"name": "mcp", "version": "2.3.0"},
    client_capabilities={
        "sampling": {},
        "elicitation": {"form": {}},
        "roots": {"listChanged": True},
    },
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20000)
    rounds = parser.parse_args().rounds
    sealer = SessionSealer(["a secrets key", "the key before it"])
    started = time.perf_counter()
    for _ in range(rounds):
        session_id = sealer.seal(TOKEN)
    sealed = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(rounds):
        sealer.open("tools", session_id)
    opened = time.perf_counter() - started
    print(f"seal: {sealed / rounds * 1e6:.1f} µs  open: {opened / rounds * 1e6:.1f} µs  "
          f"id: {len(session_id)} bytes")  # fmt: skip


if __name__ == "__main__":
    main()
