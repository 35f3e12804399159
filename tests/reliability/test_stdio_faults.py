"""stdio servers that misbehave are contained: through the runtime, each fault stays bounded (in
time, in spawns, in memory, in log lines) and is reported with a reason an operator can act on.

The misbehaving servers are `tests/upstreams/bad_stdio.py`; every start appends its pid to a
spawn log, which is how these tests count spawns and look for children left behind.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from balancing.engine.config import PoolConfig, ServerConfig, Snapshot, Transport
from balancing.engine.errors import ConnectFailed, UpstreamClosed
from balancing.engine.runtime import Runtime
from balancing.engine.transport_stdio import (
    GARBAGE_LOG_LIMIT,
    MAX_MESSAGE_BYTES,
    STDERR_LOG_BURST,
)

pytestmark = pytest.mark.upstream

ROOT = Path(__file__).resolve().parents[2]
STDERR_LOGGER = "balancing.engine.upstream.stderr"
# Every test is bounded by this, whatever the fault does.
TEST_DEADLINE = 60.0


@dataclass
class BadServer:
    """A pool of one misbehaving stdio server, run by a runtime of the test's own."""

    runtime: Runtime
    spawn_log: Path

    def pids(self) -> list[int]:
        text = self.spawn_log.read_text() if self.spawn_log.exists() else ""
        return [int(pid) for pid in text.split()]

    async def echo(self, text: str) -> str:
        result = await self.runtime.call_tool("p", "echo", {"text": text})
        return str(result["content"][0]["text"])


def bad_config(mode: str, spawn_log: Path, *flags: str) -> ServerConfig:
    return ServerConfig(
        id=1,
        name=mode,
        transport=Transport.STDIO,
        command=sys.executable,
        args=("-m", "tests.upstreams.bad_stdio", mode, "--spawn-log", str(spawn_log), *flags),
        cwd=str(ROOT),
    )


StartBad = Callable[..., Awaitable[BadServer]]


@pytest.fixture
async def start_bad(tmp_path: Path) -> AsyncIterator[StartBad]:
    """`await start_bad(mode, *flags)`: a runtime with a pool `p` of that one server."""
    runtimes: list[Runtime] = []

    async def start(mode: str, *flags: str, sessions: int = 1) -> BadServer:
        spawn_log = tmp_path / f"{mode}.spawns"
        pool = PoolConfig(
            id=1,
            slug="p",
            sessions_per_server=sessions,
            acquire_timeout=1.0,
            call_timeout=10.0,
            servers=(bad_config(mode, spawn_log, *flags),),
        )
        runtime = Runtime()
        runtimes.append(runtime)
        await runtime.start(Snapshot(1, (pool,)))
        return BadServer(runtime, spawn_log)

    yield start
    for runtime in runtimes:  # closing twice is harmless; a failed test leaves nothing running
        await runtime.close(grace=0)


@pytest.fixture
async def deadline() -> AsyncIterator[None]:
    async with asyncio.timeout(TEST_DEADLINE):
        yield


def process_state(pid: int) -> str | None:
    """`R`, `S`, `Z` (zombie: exited, never reaped)…; None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


async def wait_gone(pids: list[int], within: float = 10.0) -> dict[int, str | None]:
    """The states of the pids still present after `within` seconds (polling /proc)."""
    left: dict[int, str | None] = {}
    async with asyncio.timeout(within):
        while True:
            left = {pid: state for pid in pids if (state := process_state(pid)) is not None}
            if not left:
                return left
            await asyncio.sleep(0.05)


# ---- crash on start ---------------------------------------------------------------------------


async def test_stdio_crash_on_start_fails_fast_with_reason_and_backs_off(
    start_bad: StartBad, deadline: None, caplog: pytest.LogCaptureFixture
) -> None:
    # given a server whose process exits with code 3 as soon as it starts
    server: BadServer = await start_bad("crash-on-start")

    # when callers keep calling it for a while (80 calls, 50 ms apart)
    errors: list[ConnectFailed] = []
    for _ in range(80):
        with pytest.raises(ConnectFailed) as info:
            await server.echo("hi")
        errors.append(info.value)
        await asyncio.sleep(0.05)

    # then every call failed as never delivered, naming the exit code and the server's last words
    assert all(not e.delivered for e in errors)
    assert "exited with code 3: bad-stdio: configuration error" in str(errors[0])
    # …most without even spawning (the reconnect backoff: 1 s × 1.6 …), so spawns stay few
    reconnecting = [e for e in errors if "no session (reconnecting" in str(e)]
    assert len(reconnecting) >= 60
    assert 2 <= len(server.pids()) <= 10
    assert "could not open a session" in caplog.text
    # and every crashed process was reaped while the runtime ran (no zombies), none is left after
    assert await wait_gone(server.pids()) == {}
    await server.runtime.close(grace=1)


# ---- hang ---------------------------------------------------------------------------------------


async def test_stdio_hang_on_initialize_times_out_bounded_and_is_killed(
    start_bad: StartBad, deadline: None, caplog: pytest.LogCaptureFixture
) -> None:
    # given a server that reads requests and never answers one, not even `initialize`
    server: BadServer = await start_bad("hang")

    # when a call needs a session
    with pytest.raises(ConnectFailed) as info:
        await server.echo("hi")

    # then opening gave up (the runtime's open timeout), the call was never delivered
    assert "no answer to the MCP negotiation" in str(info.value)
    assert not info.value.delivered
    assert "could not open a session" in caplog.text
    # and the next call fails at once on the backoff rather than waiting again
    with pytest.raises(ConnectFailed, match="no session \\(reconnecting"):
        await server.echo("again")
    # and no hung process outlives the runtime
    spawned = server.pids()
    await server.runtime.close(grace=1)
    assert await wait_gone(spawned) == {}


# ---- garbage on stdout -------------------------------------------------------------------------


async def test_stdio_garbage_on_stdout_is_skipped_and_calls_still_work(
    start_bad: StartBad, deadline: None, caplog: pytest.LogCaptureFixture
) -> None:
    # given a server that writes a 200 MB line without a newline, then a garbage line every 5 ms,
    # forever, between its valid answers
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        server: BadServer = await start_bad("garbage", "--megabytes", "200", "--lines", "0")

        # when calls go through it while the garbage flows
        answers = [await server.echo(f"call-{i}") for i in range(20)]
        for i in range(20, 40):
            await asyncio.sleep(0.05)
            answers.append(await server.echo(f"call-{i}"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # then every call got its own answer
    assert answers == [f"call-{i}" for i in range(40)]
    # and memory stayed bounded: the oversized line was dropped, not kept (200 MB were sent; the
    # reader buffers up to twice its line limit before it stops reading, plus one copy)
    assert peak < 4 * MAX_MESSAGE_BYTES
    assert "dropped a stdout line over" in caplog.text
    # and the garbage was logged a bounded number of times
    skipped = [r for r in caplog.records if "skipping non-JSON-RPC" in r.getMessage()]
    assert GARBAGE_LOG_LIMIT <= len(skipped) <= GARBAGE_LOG_LIMIT + 20
    await server.runtime.close(grace=1)


# ---- stderr flood -------------------------------------------------------------------------------


async def test_stdio_stderr_flood_keeps_calls_working_and_logs_bounded(
    start_bad: StartBad, deadline: None, caplog: pytest.LogCaptureFixture
) -> None:
    # given a server writing 20 MB of 100-byte lines to stderr (about 210 000 lines), then 20 MB
    # more as one line that never ends, while serving
    caplog.set_level(logging.INFO, logger=STDERR_LOGGER)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        server: BadServer = await start_bad(
            "stderr-flood", "--megabytes", "20", "--line-bytes", "100"
        )

        # when calls go through it during the flood
        answers = [await server.echo(f"call-{i}") for i in range(50)]
        # (and until the flood is over: the reader has seen every line but the endless one)
        async with asyncio.timeout(30):
            while not any("not logged" in r.getMessage() for r in caplog.records):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        answers += [await server.echo(f"late-{i}") for i in range(10)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # then every call was answered
    assert answers == [f"call-{i}" for i in range(50)] + [f"late-{i}" for i in range(10)]
    # and the gateway's memory did not grow with the flood (40 MB went through stderr)
    assert peak < 16 * 1024 * 1024
    # and our log got a bounded share of the lines, plus a count of the rest
    logged = [r for r in caplog.records if r.name == STDERR_LOGGER and r.levelno == logging.INFO]
    assert STDERR_LOG_BURST <= len(logged) < 2_000
    assert any(
        "stderr lines were not logged (rate limit)" in r.getMessage() for r in caplog.records
    )
    await server.runtime.close(grace=1)


# ---- a process that dies mid-session says why --------------------------------------------------


async def test_stdio_process_exit_mid_call_names_exit_code_and_last_words(
    start_bad: StartBad, deadline: None
) -> None:
    server: BadServer = await start_bad("ok")
    assert await server.echo("before") == "before"
    with pytest.raises(UpstreamClosed) as info:
        await server.runtime.call_tool("p", "exit", {})
    assert "exited with code 7: bad-stdio: exiting on request" in str(info.value)
    assert await server.echo("after") == "after"  # a new process took over
    spawned = server.pids()
    await server.runtime.close(grace=1)
    assert len(spawned) == 2
    assert await wait_gone(spawned) == {}


async def test_stdio_control_server_echoes(start_bad: StartBad, deadline: None) -> None:
    server: BadServer = await start_bad("ok")
    assert await server.echo("fine") == "fine"
    spawned = server.pids()
    await server.runtime.close(grace=1)
    assert len(spawned) == 1
    assert await wait_gone(spawned) == {}


async def test_stdio_arguments_reach_the_program_verbatim_never_a_shell(
    deadline: None, tmp_path: Path
) -> None:
    # given an argument full of shell syntax (the spawn log's file name), run in a directory where
    # a shell, had one run it, would leave a file named shell-ran
    name = "log $(touch shell-ran); touch shell-ran `touch shell-ran` | & > * ~"
    server = ServerConfig(
        id=1,
        name="verbatim",
        transport=Transport.STDIO,
        command=sys.executable,
        args=(str(ROOT / "tests" / "upstreams" / "bad_stdio.py"), "ok", "--spawn-log", name),
        cwd=str(tmp_path),
    )
    runtime = Runtime()
    await runtime.start(Snapshot(1, (PoolConfig(id=1, slug="p", servers=(server,)),)))

    # when the server is started and called
    try:
        result = await runtime.call_tool("p", "echo", {"text": "fine"})
    finally:
        await runtime.close(grace=1)

    # then the program got the argument as one literal string, and no shell ever ran it
    assert result["content"][0]["text"] == "fine"
    assert (tmp_path / name).exists()
    assert not (tmp_path / "shell-ran").exists()
