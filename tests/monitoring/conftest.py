"""Fixtures for health-monitoring tests: probers, real upstream processes, pools in the DB."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from balancing.engine.config import ServerConfig
from monitoring import probes
from servers import services
from servers.models import Pool, Server
from tests.upstreams import procs


@pytest.fixture(autouse=True)
def _no_probe_loop_left() -> Iterator[None]:
    """Tasks run eagerly here and start this process's probe loop: close its sessions (and stdio
    probe processes) after every test."""
    yield
    probes.stop_process_loop()


@pytest.fixture
async def prober() -> AsyncIterator[probes.Prober]:
    p = probes.Prober()
    yield p
    await p.close()


@pytest.fixture
def replica() -> Iterator[procs.UpstreamProcess]:
    """A faulty HTTP server of the test's own, for tests that break it."""
    server = procs.start_faulty_http(name="replica", json_response=True)
    yield server
    server.stop()


class Restartable:
    """A faulty HTTP server that can be stopped and started again on the same port, as an
    operator restarting a replica would."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = procs.free_port()
        self.process: procs.UpstreamProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> None:
        command = procs.faulty_command(
            "--transport", "http", "--port", str(self.port), "--name", self.name,
            "--json-response",
        )  # fmt: skip
        log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by UpstreamProcess.stop()
        popen = subprocess.Popen(
            command, cwd=procs.ROOT, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.process = procs.UpstreamProcess(self.name, popen, self.port, log)
        deadline = time.monotonic() + procs.START_TIMEOUT
        while time.monotonic() < deadline and popen.poll() is None:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            time.sleep(0.05)
        output = self.process.output()
        self.stop()
        raise RuntimeError(f"{self.name} did not start on port {self.port}:\n{output}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def freeze(self) -> None:
        """SIGSTOP: connections are accepted by the kernel and never answered (a hung server)."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGCONT)


@pytest.fixture
def restartable() -> Iterator[Callable[[str], Restartable]]:
    """`restartable(name)` starts a replica that the test may stop and start again."""
    made: list[Restartable] = []

    def make(name: str) -> Restartable:
        server = Restartable(name)
        made.append(server)
        server.start()
        return server

    yield make
    for server in made:
        if server.process is not None:
            with contextlib.suppress(ProcessLookupError):
                server.thaw()
        server.stop()


async def until(predicate: Callable[[], Any], seconds: float) -> bool:
    """Wait until `predicate()` (a value or a coroutine) is true; False after `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        value = predicate()
        if await value if asyncio.iscoroutine(value) else value:
            return True
        await asyncio.sleep(0.1)
    return False


def make_pool(slug: str = "web", **knobs: object) -> Pool:
    """A pool saved through the service layer (fast checks unless told otherwise)."""
    fields: dict[str, object] = {
        "check_interval": 1.0, "check_timeout": 0.5, "fall": 2, "rise": 2,
        "slow_start_window": 0.0, **knobs,
    }  # fmt: skip
    return services.save(Pool(name=slug.title(), slug=slug, **fields))


def add_http(pool: Pool, name: str, url: str) -> Server:
    return services.save(Server(pool=pool, name=name, transport="streamable_http", url=url))


def add_stdio(pool: Pool, config: ServerConfig) -> Server:
    return services.save(
        Server(pool=pool, name=config.name, transport="stdio", command=config.command,
               args=list(config.args), cwd=config.cwd)
    )  # fmt: skip
