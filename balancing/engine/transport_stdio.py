"""An upstream MCP server as a child process speaking newline-delimited JSON on stdin/stdout.

The child gets only the configured environment plus a short allowlist from ours (never our
secrets), runs in its own process group (so ``npx``-style launchers and their children stop
together), and is always reaped. One reader task matches responses to waiting calls by id; stderr
is logged line by line with bounded lines, at a bounded rate. When the process dies, the error
says how: its exit code and the last line it wrote to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from typing import TYPE_CHECKING, Final

from balancing.engine import jsonrpc
from balancing.engine.config import Era, ServerConfig
from balancing.engine.errors import ConnectFailed, SessionGone, UpstreamClosed
from balancing.engine.jsonrpc import JsonObject
from balancing.engine.policy import CommandPolicy, PolicyRefused

if TYPE_CHECKING:
    from balancing.engine.upstream import Call, Deliver

logger = logging.getLogger(__name__)
stderr_logger = logging.getLogger("balancing.engine.upstream.stderr")

# Variables a child inherits from us; everything else must be configured on the server.
INHERITED_ENV: Final = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TMPDIR",
    "TEMP",
    "TMP",
    "SYSTEMROOT",
    "USER",
    "LOGNAME",
)
# Largest stdout line (one message) we read; a longer one is dropped with a warning.
MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
MAX_STDERR_LINE: Final = 2000
# stderr lines logged per server: a burst, then a steady rate; the rest are counted, not logged.
# A server printing a million short lines a second must not turn our event loop into its logger.
STDERR_LOG_BURST: Final = 200
STDERR_LOG_RATE: Final = 20.0  # lines per second
# The last stderr line is kept (this long at most) to explain a process that died.
LAST_WORDS_CHARS: Final = 300
# After the process exits, how long its stderr gets to deliver its last line for the error; and
# after stdout closes, how long the exit watcher gets to name the exit code and last words (a
# process that closed stdout is almost always exiting: on a loaded machine that took over 0.5 s,
# and the calls it held fail only this much later). Both wait for events that come at once
# unless the machine is busy; only a dying server pays them.
LAST_WORDS_GRACE: Final = 1.0
STDOUT_EOF_GRACE: Final = 3.0
# Stop logging garbage lines after this many (then only every 1000th): a server printing its
# logs to stdout must not flood ours.
GARBAGE_LOG_LIMIT: Final = 20
# Shutdown, as the MCP spec orders it: close stdin, wait, SIGTERM, wait, SIGKILL.
EXIT_GRACE: Final = 2.0
TERM_GRACE: Final = 2.0
# Flush stdin once this much is buffered, so a stalled child applies back pressure.
WRITE_HIGH_WATER: Final = 256 * 1024


def child_environment(configured: tuple[tuple[str, str], ...]) -> dict[str, str]:
    env = {key: value for key in INHERITED_ENV if (value := os.environ.get(key)) is not None}
    env.update(configured)
    return env


class StdioTransport:
    """Framing and process lifecycle for one stdio `UpstreamSession`."""

    def __init__(
        self, server: ServerConfig, deliver: Deliver, commands: CommandPolicy | None = None
    ) -> None:
        self._server = server
        self._commands = commands
        self._name = server.name
        self._deliver = deliver
        self._process: asyncio.subprocess.Process | None = None
        self._pending: dict[int, asyncio.Future[JsonObject]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._exit_watch: asyncio.Task[None] | None = None
        self._drain_lock = asyncio.Lock()
        self._alive = False
        self._garbage = 0
        self._stderr_tokens = float(STDERR_LOG_BURST)
        self._stderr_refilled_at = 0.0
        self._stderr_dropped = 0
        self._last_words = ""

    @property
    def alive(self) -> bool:
        return self._alive

    @property
    def cancels_by_disconnect(self) -> bool:
        return False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def use(self, era: Era, version: str | None) -> None:
        """stdio carries no per-message headers: nothing changes with the era."""

    async def start(self) -> None:
        server = self._server
        if self._commands is not None:
            # Checked again at spawn: the config may predate the policy, or have been written
            # around the model (a raw SQL edit, a restored dump).
            try:
                self._commands.check(server.command, server.args, dict(server.env), server.cwd)
            except PolicyRefused as refused:
                raise ConnectFailed(
                    f"not started, refused by the command policy: {refused}", server=self._name
                ) from None
        try:
            self._process = await asyncio.create_subprocess_exec(
                server.command,
                *server.args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=child_environment(server.env),
                cwd=server.cwd or None,
                limit=MAX_MESSAGE_BYTES,
                start_new_session=True,
            )
        except OSError as exc:
            raise ConnectFailed(
                f"cannot start {server.command!r}: {exc}", server=self._name
            ) from exc
        self._alive = True
        loop = asyncio.get_running_loop()
        self._stderr_refilled_at = loop.time()
        stderr_task = loop.create_task(self._read_stderr())
        self._exit_watch = loop.create_task(self._watch_exit(stderr_task))
        self._tasks = [loop.create_task(self._read_messages()), stderr_task, self._exit_watch]

    # ---------------------------------------------------------------- sending

    async def roundtrip(
        self, call: Call, body: bytes, method: str, params: JsonObject | None
    ) -> JsonObject:
        future: asyncio.Future[JsonObject] = asyncio.get_running_loop().create_future()
        self._pending[call.id] = future
        try:
            await self._write(body)
            return await future
        finally:
            del self._pending[call.id]

    async def send(self, body: bytes, method: str, params: JsonObject | None) -> None:
        await self._write(body)

    async def _write(self, body: bytes) -> None:
        if not self._alive or self._process is None or self._process.stdin is None:
            raise SessionGone("the server process has exited", server=self._name)
        stdin = self._process.stdin
        stdin.write(body + b"\n")
        # Writes are buffered by the pipe transport; only drain (one writer at a time) when the
        # child stops reading, so the common case costs no await at all.
        if stdin.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            async with self._drain_lock:
                try:
                    await stdin.drain()
                except (ConnectionError, BrokenPipeError) as exc:
                    raise UpstreamClosed(f"stdin closed: {exc}", server=self._name) from exc

    # ---------------------------------------------------------------- receiving

    async def _read_messages(self) -> None:
        assert self._process is not None  # noqa: S101  # started before this runs
        assert self._process.stdout is not None  # noqa: S101  # started before this runs
        assert self._exit_watch is not None  # noqa: S101  # started before this runs
        stdout, exit_watch = self._process.stdout, self._exit_watch
        try:
            while True:
                try:
                    line = await stdout.readline()
                except ValueError:
                    # asyncio dropped a line over MAX_MESSAGE_BYTES; its call will time out.
                    logger.warning(
                        "%s: dropped a stdout line over %d bytes", self._name, MAX_MESSAGE_BYTES
                    )
                    continue
                if not line:
                    # Usually the process is exiting: let its exit (code, last words) explain,
                    # as the exit watcher words it.
                    await asyncio.wait({exit_watch}, timeout=STDOUT_EOF_GRACE)
                    return
                message = jsonrpc.decode(line) if _looks_like_object(line) else None
                if message is None:
                    self._garbage_line(line)
                    continue
                if "method" not in message:
                    future = self._pending.get(message.get("id"))  # type: ignore[arg-type]
                    if future is not None:
                        if not future.done():
                            future.set_result(message)
                        continue
                try:
                    await self._deliver(message, None)
                except Exception:
                    logger.exception("%s: delivering a message failed", self._name)
        finally:
            self._lost("the server closed its stdout")

    def _garbage_line(self, line: bytes) -> None:
        if not line.strip():
            return
        self._garbage += 1
        if self._garbage <= GARBAGE_LOG_LIMIT or self._garbage % 1000 == 0:
            logger.warning(
                "%s: skipping non-JSON-RPC stdout line #%d: %r",
                self._name,
                self._garbage,
                line[:200],
            )

    async def _read_stderr(self) -> None:
        """Log stderr line by line; lines are cut at MAX_STDERR_LINE so nothing grows unbounded."""
        assert self._process is not None  # noqa: S101  # started before this runs
        assert self._process.stderr is not None  # noqa: S101  # started before this runs
        stderr = self._process.stderr
        partial = b""
        while chunk := await stderr.read(65536):
            lines = (partial + chunk).split(b"\n")
            partial = lines.pop()[:MAX_STDERR_LINE]
            for line in lines:
                self._stderr_line(line)
        self._stderr_line(partial)
        if self._stderr_dropped:
            stderr_logger.warning(
                "%s: %d stderr lines were not logged (rate limit)", self._name, self._stderr_dropped
            )

    def _stderr_line(self, line: bytes) -> None:
        if not line.strip():
            return
        text = line[:MAX_STDERR_LINE].decode(errors="replace").rstrip()
        self._last_words = text[:LAST_WORDS_CHARS]
        now = asyncio.get_running_loop().time()
        self._stderr_tokens = min(
            float(STDERR_LOG_BURST),
            self._stderr_tokens + (now - self._stderr_refilled_at) * STDERR_LOG_RATE,
        )
        self._stderr_refilled_at = now
        if self._stderr_tokens < 1.0:
            self._stderr_dropped += 1
            return
        self._stderr_tokens -= 1.0
        if self._stderr_dropped:
            stderr_logger.warning(
                "%s: %d stderr lines were not logged (rate limit)", self._name, self._stderr_dropped
            )
            self._stderr_dropped = 0
        stderr_logger.info("%s: %s", self._name, text)

    async def _watch_exit(self, stderr_task: asyncio.Task[None]) -> None:
        # A grandchild may hold stdout open after the server itself died; the exit decides.
        assert self._process is not None  # noqa: S101  # started before this runs
        code = await self._process.wait()
        if self._alive:
            # Its last stderr line usually says why (a bad option, a missing variable).
            await asyncio.wait({stderr_task}, timeout=LAST_WORDS_GRACE)
        reason = f"the server process exited with code {code}"
        self._lost(f"{reason}: {self._last_words}" if self._last_words else reason)

    def _lost(self, reason: str) -> None:
        """The process is gone: fail every waiting call (it may have run) and refuse new ones."""
        if not self._alive and not self._pending:
            return
        self._alive = False
        for future in self._pending.values():
            if not future.done():
                future.set_exception(UpstreamClosed(reason, server=self._name))

    # ---------------------------------------------------------------- stopping

    async def close(self) -> None:
        """Close stdin, give the server EXIT_GRACE to leave, then SIGTERM, then SIGKILL its process
        group; always reap it."""
        process = self._process
        self._alive = False
        if process is None:
            return
        self._lost("the session was closed")
        if process.returncode is None and process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        try:
            if not await _exited(process, EXIT_GRACE):
                _signal_group(process.pid, signal.SIGTERM)
                if not await _exited(process, TERM_GRACE):
                    _signal_group(process.pid, signal.SIGKILL)
                    await process.wait()
        finally:
            # Stragglers of the group (a launcher's children) go with the leader.
            _signal_group(process.pid, signal.SIGKILL)
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _looks_like_object(line: bytes) -> bool:
    """Cheap first test of a stdout line: a JSON-RPC message is an object, `{…}`. Log lines and
    binary junk fail it without a parse, which matters: orjson's error for an invalid document
    briefly takes about 15 times the document's size in memory."""
    body = line.strip()
    return body[:1] == b"{" and body[-1:] == b"}"


async def _exited(process: asyncio.subprocess.Process, grace: float) -> bool:
    try:
        await asyncio.wait_for(process.wait(), grace)
    except TimeoutError:
        return False
    return True


def _signal_group(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)
