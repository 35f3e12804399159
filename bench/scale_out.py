"""What serving a stdio session through another web process costs: the added p50 latency and the
CPU per call (both web processes together) of a call forwarded to the session's owner over Redis,
against the same call served by the owner itself.

    python -m bench.scale_out [--calls 400] [--redis redis://127.0.0.1:6379/15]

Two uvicorn processes of mcppool on one database and one Redis (a channel prefix of this run's
own), a sticky pool whose server is our stdio test server (`echo`), one handshake-era client
session initialized on process A; the same sequential calls first through A, then through B.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import time
import uuid
from typing import Any

from bench.gateway import prepare, start
from bench.procfs import cpu_seconds

POOLS = [{
    "slug": "local", "name": "Local", "session_mode": "sticky",
    "servers": [{"name": "child", "transport": "stdio", "command": "python",
                 "args": ["-m", "tests.upstreams.faulty", "--transport", "stdio"]}],
}]  # fmt: skip
INIT = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "bench", "version": "1"}}}  # fmt: skip


class Session:
    def __init__(self, token: str) -> None:
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                        "Accept": "application/json, text/event-stream"}  # fmt: skip

    def post(self, connection: http.client.HTTPConnection, body: dict[str, Any]) -> int:
        connection.request("POST", "/mcp/local/", json.dumps(body).encode(), self.headers)
        answer = connection.getresponse()
        answer.read()
        if sid := answer.getheader("mcp-session-id"):
            self.headers["Mcp-Session-Id"] = sid
        return answer.status


def run(session: Session, port: int, calls: int, pids: list[int]) -> tuple[float, float]:
    """p50 seconds and CPU seconds per call (all `pids`) of `calls` sequential echo calls."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "x"}}}  # fmt: skip
    for _ in range(20):  # warm up (connections, the copy of the session)
        assert session.post(connection, call) == 200
    latencies = []
    cpu_before = sum(cpu_seconds(pid) for pid in pids)
    for _ in range(calls):
        started = time.perf_counter()
        status = session.post(connection, call)
        latencies.append(time.perf_counter() - started)
        assert status == 200, status
    cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
    connection.close()
    return statistics.median(latencies), cpu / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15"))
    options = parser.parse_args()
    var_dir, token = prepare(POOLS)
    env = {"REDIS_URL": options.redis, "SECRET_KEY": "bench-only",
           "MCPPOOL_CHANNEL_PREFIX": f"mcppool-bench-{uuid.uuid4().hex[:8]}"}  # fmt: skip
    a = start(var_dir, token, extra_env=env)
    b = start(var_dir, token, extra_env=env)
    try:
        session = Session(token)
        connection = http.client.HTTPConnection("127.0.0.1", a.process.port, timeout=60)
        assert session.post(connection, INIT) == 200
        session.post(connection, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        connection.close()
        pids = [a.pid, b.pid]
        local_p50, local_cpu = run(session, a.process.port, options.calls, pids)
        forwarded_p50, forwarded_cpu = run(session, b.process.port, options.calls, pids)
    finally:
        a.stop()
        b.stop()
    print(f"served by the owner:  p50 {local_p50 * 1e3:.2f} ms  CPU {local_cpu * 1e3:.2f} ms/call")
    print(f"forwarded to it:      p50 {forwarded_p50 * 1e3:.2f} ms  "
          f"CPU {forwarded_cpu * 1e3:.2f} ms/call (both processes)")  # fmt: skip
    print(f"added by forwarding:  p50 {(forwarded_p50 - local_p50) * 1e3:.2f} ms  "
          f"CPU {(forwarded_cpu - local_cpu) * 1e3:.2f} ms/call")  # fmt: skip


if __name__ == "__main__":
    main()
