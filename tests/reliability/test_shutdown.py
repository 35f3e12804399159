"""The web process stopped with SIGTERM (as docker, systemd and Kubernetes stop it): calls in
flight finish, then it exits and takes every stdio server it started with it.

The real service: `uvicorn mcppool.asgi:application --lifespan on` on a throw-away SQLite var dir,
a pool of two stdio servers applied with `manage.py mcppool apply` (through `bench.gateway`, which
prepares and starts the web process exactly as `make run` does).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import gateway
from tests.upstreams.procs import ROOT

pytestmark = pytest.mark.upstream

SLOW_SECONDS = 3.0
CALLS = 6
# uvicorn waits for requests in flight; the runtime then gets MCPPOOL_SHUTDOWN_GRACE_SECONDS (10)
# for calls still holding a session. Both are far below this bound on the whole test.
EXIT_WITHIN = 60.0


def stdio_server(name: str) -> dict[str, object]:
    return {
        "name": name,
        "transport": "stdio",
        "command": sys.executable,
        "args": ["-m", "tests.upstreams.faulty", "--transport", "stdio", "--name", name],
        "cwd": str(ROOT),
    }


def process_tree(root: int) -> dict[int, str]:
    """Every descendant of `root` (walking /proc by parent pid), with its start time, so a pid
    reused later is not mistaken for the same process."""
    parents: dict[int, int] = {}
    started: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])  # fields[0] is the state, [1] the parent
        started[int(entry.name)] = fields[19]  # starttime, in clock ticks since boot
    tree: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in tree:
                tree[pid] = started[pid]
                frontier.append(pid)
    return tree


def still_running(processes: dict[int, str]) -> list[int]:
    alive = []
    for pid, started in processes.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[19] == started and fields[0] != "Z":
            alive.append(pid)
    return alive


def in_flight(base_url: str) -> float:
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return sum(
        float(value)
        for value in re.findall(r'^mcppool_in_flight\{[^}]*pool="slow"[^}]*\} (\S+)$', text, re.M)
    )


@pytest.fixture
def web(tmp_path: Path) -> Iterator[gateway.Gateway]:
    pools = [
        {
            "slug": "slow",
            "name": "Slow",
            "sessions_per_server": 1,
            "servers": [stdio_server("s1"), stdio_server("s2")],
        }
    ]
    var_dir, token = gateway.prepare(pools, tmp_path)
    web = gateway.start(var_dir, token, ready_path="/api/v1/pools/slow/tools/echo/call")
    yield web
    web.stop()  # SIGKILL for the group if the test failed before the process left


def test_sigterm_lets_calls_in_flight_finish_and_leaves_no_child(web: gateway.Gateway) -> None:
    # given calls in flight on the pool's stdio servers
    results: list[tuple[int, str]] = []

    def call() -> None:
        request = urllib.request.Request(
            web.rest_url("slow", "slow"),
            data=f'{{"arguments": {{"seconds": {SLOW_SECONDS}}}}}'.encode(),
            headers={"Authorization": f"Bearer {web.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=EXIT_WITHIN) as answer:
                results.append((answer.status, answer.read().decode()))
        except urllib.error.HTTPError as error:
            results.append((error.code, error.read().decode()))
        except OSError as error:
            results.append((0, repr(error)))

    callers = [threading.Thread(target=call) for _ in range(CALLS)]
    for thread in callers:
        thread.start()
    deadline = time.monotonic() + EXIT_WITHIN
    while in_flight(web.base_url) < CALLS:  # every call has reached an upstream session
        assert time.monotonic() < deadline, "the calls never got in flight"
        time.sleep(0.05)
    children = process_tree(web.pid)
    assert len(children) >= 2, children  # the two stdio servers (and whatever they started)

    # when the web process is asked to stop
    os.kill(web.pid, signal.SIGTERM)

    # then it exits by itself, cleanly, once the calls are done
    code = web.process.process.wait(timeout=EXIT_WITHIN)
    for thread in callers:
        thread.join(timeout=EXIT_WITHIN)
    output = web.process.output()
    # (uvicorn re-raises the signal it handled once shutdown is complete, so -SIGTERM is clean)
    assert code in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output, output
    assert "Traceback" not in output, output
    # and every call in flight finished with its answer
    assert len(results) == CALLS
    assert all(status == 200 and f"slept {SLOW_SECONDS}" in body for status, body in results), (
        results
    )
    # and no process it started outlived it
    assert still_running(children) == [], subprocess.run(
        ["ps", "-o", "pid,ppid,stat,args", "-p", ",".join(map(str, children))],
        capture_output=True,
        text=True,
    ).stdout
