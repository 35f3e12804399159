"""A stdio MCP server that misbehaves in one way, chosen by its mode (standard library only, so it
starts in a few milliseconds and a spawn loop would show up as many spawns, not slow ones).

    python -m tests.upstreams.bad_stdio MODE [--spawn-log FILE] [--lines N] [--megabytes N]
                                             [--line-bytes N] [--start-delay SECONDS]

Modes:
  crash-on-start  print a line to stderr and exit with code 3 before reading anything
  hang            read requests, never answer (not even `initialize`)
  garbage         write N non-JSON lines to stdout (`--lines`, 0 = one every 5 ms forever), one
                  line of `--megabytes` MB without a newline when asked, and serve `echo`
  stderr-flood    write `--megabytes` MB to stderr in lines of `--line-bytes`, then as much again
                  as one line that never ends, while serving `echo`
  ok              serve `echo` and nothing else (the control case)

Every mode that serves also has the tool `exit`: say so on stderr, then exit with code 7.

Every start appends its pid to `--spawn-log`, so a test can count how often it was spawned.
`--start-delay` sleeps before reading anything: a server slow to start (a loaded machine).
The server speaks the handshake era only: `server/discover` is answered "method not found".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

HANDSHAKE_VERSION = "2025-11-25"
ECHO_TOOL = {
    "name": "echo",
    "description": "Return the text.",
    "inputSchema": {
        "type": "object",
        "properties": {"text": {"type": "string"}},
        "required": ["text"],
    },
}
_out_lock = threading.Lock()


def _write_stdout(data: bytes) -> None:
    with _out_lock:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


def _reply(message_id: Any, result: Any = None, error: Any = None) -> None:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": message_id}
    body.update({"error": error} if error is not None else {"result": result})
    _write_stdout(json.dumps(body).encode() + b"\n")


def _answer(message: dict[str, Any]) -> None:
    method, message_id = message.get("method"), message.get("id")
    if message_id is None:
        return  # a notification
    params = message.get("params") or {}
    if method == "initialize":
        _reply(
            message_id,
            {
                "protocolVersion": HANDSHAKE_VERSION,
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "bad-stdio", "version": "1"},
            },
        )
    elif method == "ping":
        _reply(message_id, {})
    elif method == "tools/list":
        _reply(message_id, {"tools": [ECHO_TOOL]})
    elif method == "tools/call" and params.get("name") == "exit":
        sys.stderr.write("bad-stdio: exiting on request\n")
        sys.stderr.flush()
        os._exit(7)
    elif method == "tools/call" and params.get("name") == "echo":
        text = str((params.get("arguments") or {}).get("text", ""))
        _reply(message_id, {"content": [{"type": "text", "text": text}], "isError": False})
    else:
        _reply(message_id, error={"code": -32601, "message": f"method not found: {method}"})


def _serve(*, answer: bool = True) -> None:
    for line in sys.stdin.buffer:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if answer and isinstance(message, dict):
            _answer(message)


def _garbage(lines: int, megabytes: int) -> None:
    if megabytes:
        # One enormous "line" that only ends long after the reader's limit (whole: answers to
        # requests come before or after it, never inside it).
        chunk = b"x" * 65536
        with _out_lock:
            for _ in range(megabytes * 16):
                sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.write(b"\n")
            sys.stdout.buffer.flush()
    count = 0
    while lines == 0 or count < lines:
        count += 1
        _write_stdout(f"garbage line {count}: not JSON-RPC {{\n".encode())
        if lines == 0:
            time.sleep(0.005)


def _flood_stderr(megabytes: int, line_bytes: int) -> None:
    line = b"e" * (line_bytes - 1) + b"\n"
    for _ in range(megabytes * 1024 * 1024 // line_bytes):
        sys.stderr.buffer.write(line)
    sys.stderr.buffer.flush()
    # Then a line that never ends: the reader must not keep it all.
    chunk = b"n" * 65536
    for _ in range(megabytes * 16):
        sys.stderr.buffer.write(chunk)
    sys.stderr.buffer.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["crash-on-start", "hang", "garbage", "stderr-flood", "ok"])
    parser.add_argument("--spawn-log", default="")
    parser.add_argument("--lines", type=int, default=100)
    parser.add_argument("--megabytes", type=int, default=0)
    parser.add_argument("--line-bytes", type=int, default=64 * 1024)
    parser.add_argument("--start-delay", type=float, default=0.0)
    options = parser.parse_args()
    if options.spawn_log:
        with open(options.spawn_log, "a") as log:
            log.write(f"{os.getpid()}\n")
    time.sleep(options.start_delay)
    mode = options.mode
    if mode == "crash-on-start":
        sys.stderr.write("bad-stdio: configuration error, exiting\n")
        sys.exit(3)
    if mode == "hang":
        _serve(answer=False)
        return
    if mode == "garbage":
        threading.Thread(
            target=_garbage, args=(options.lines, options.megabytes), daemon=True
        ).start()
    elif mode == "stderr-flood":
        threading.Thread(
            target=_flood_stderr, args=(options.megabytes, options.line_bytes), daemon=True
        ).start()
    _serve()


if __name__ == "__main__":
    main()
