"""Real mcppool web processes on the test's own database (and a Redis of the test's choosing),
for the reliability tests that stop a service under them or run two of them side by side.

They serve `mcppool.asgi:application` under uvicorn with the service's settings, as
docker-compose runs them; the database is pytest-django's test database, so these tests are
`transaction=True` (the processes must see committed rows) and PostgreSQL only.
"""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from bench.gateway import command
from tests.conftest import missing_prerequisite, require_postgres
from tests.helpers.wait import until_sync
from tests.monitoring.test_worker import database_url
from tests.upstreams import procs
from tests.upstreams.procs import ROOT, UpstreamProcess, free_port, guarded

START_TIMEOUT = 60.0
BODY = b'{"arguments": {"text": "hi"}}'


def web_env(
    var_dir: Path, *, redis_url: str = "", db_url: str = "", **extra: str
) -> dict[str, str]:
    """The environment of a web process on the test database (`db_url` to reach it otherwise)."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "mcppool.settings",
        "DATABASE_URL": db_url or database_url(),
        "MCPPOOL_VAR_DIR": str(var_dir),
        "SECRET_KEY": "tests-only",
        "DEBUG": "0",
        **extra,
    }
    env.pop("REDIS_URL", None)
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


def start_web(env: dict[str, str], name: str = "web") -> UpstreamProcess:
    """Serve the app on a free port; returns once it answers (the runtime starts with it)."""
    port = free_port()
    log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by UpstreamProcess.stop
    process = subprocess.Popen(
        guarded(command("uvicorn", port)), cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    web = UpstreamProcess(name, process, port, log)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/login/", timeout=5):
                return web
        except (OSError, urllib.error.HTTPError):
            time.sleep(0.2)
    output = web.output()
    web.stop()
    raise RuntimeError(f"{name} did not come up:\n{output}")


def manage(env: dict[str, str], code: str) -> str:
    """Run Python in `manage.py shell` with a web process's settings (a second service
    process, as an operator's command would be); its output."""
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"manage.py shell failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def call(port: int, key: str, pool: str, tool: str = "echo", timeout: float = 10.0) -> int:
    """One REST tool call; its HTTP status."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/pools/{pool}/tools/{tool}/call",
        data=b'{"arguments": {"text": "hi"}}',
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


class Load:
    """REST clients in threads, each on a keep-alive connection, until stopped."""

    def __init__(self, port: int, key: str, pool: str = "echo", clients: int = 4) -> None:
        self.port = port
        self.path = f"/api/v1/pools/{pool}/tools/echo/call"
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.outcomes: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.client) for _ in range(clients)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)

    def client(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            while not self.stopping.is_set():
                try:
                    connection.request("POST", self.path, body=BODY, headers=self.headers)
                    answer = connection.getresponse()
                    answer.read()
                    outcome = str(answer.status)
                except (OSError, http.client.HTTPException) as exc:
                    outcome = type(exc).__name__
                    connection.close()
                with self.lock:
                    self.outcomes[outcome] += 1
        finally:
            connection.close()

    def snapshot(self) -> Counter[str]:
        with self.lock:
            return self.outcomes.copy()


until = until_sync  # the shared helper, under the name these tests use


@pytest.fixture
def postgres(transactional_db: Any) -> None:
    """The test database, committed rows visible to other processes (PostgreSQL only)."""
    require_postgres("other processes share the test database")


@pytest.fixture
def var_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mcppool-rel-") as path:
        yield Path(path)


@pytest.fixture
def channel_prefix() -> str:
    """Channel-layer names of this test's own on a shared Redis."""
    return f"mcppool-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def webs(postgres: None) -> Iterator[list[UpstreamProcess]]:
    """Web processes a test starts (append them): stopped at the end, before the test database
    is flushed."""
    started: list[UpstreamProcess] = []
    yield started
    for web in started:
        web.stop()


@pytest.fixture
def replica() -> Iterator[UpstreamProcess]:
    """One faulty HTTP upstream answering JSON, named r1."""
    upstream = procs.start_faulty_http(name="r1", json_response=True)
    yield upstream
    upstream.stop()


def echo_pool_with_key(url: str, *, all_pools: bool = False) -> str:
    """Pool `echo` with the one server `r1` at `url`, and an API key `app` for it; its secret."""
    from servers import services
    from servers.models import Pool, Server

    pool = services.save(Pool(name="Echo", slug="echo"))
    services.save(Server(pool=pool, name="r1", transport="streamable_http", url=url))
    pools = [] if all_pools else [pool]
    _, secret = services.create_api_key("app", pools=pools, all_pools=all_pools)
    return secret


@pytest.fixture
def start_webs(
    webs: list[UpstreamProcess],
    var_dir: Path,
    redis_url: str,
    channel_prefix: str,
) -> Callable[[int], list[UpstreamProcess]]:
    """Start `count` web processes on the test database and a Redis prefix of the test's own."""

    def start(count: int) -> list[UpstreamProcess]:
        env = web_env(var_dir, redis_url=redis_url, MCPPOOL_CHANNEL_PREFIX=channel_prefix)
        for i in range(count):
            webs.append(start_web(env, f"web-{i}"))
        return webs

    return start


Balanced = Callable[[], tuple[str, list[UpstreamProcess]]]


@pytest.fixture
def balanced(
    start_webs: Callable[[int], list[UpstreamProcess]],
    var_dir: Path,
) -> Iterator[Balanced]:
    """Starts three web processes behind Debian's HAProxy (round robin, no affinity) once the
    test's config is written; gives HAProxy's URL of `/mcp/` and the processes."""
    if shutil.which("haproxy") is None:
        missing_prerequisite("haproxy is not installed (apt-get install haproxy)")
    started: list[UpstreamProcess] = []

    def start() -> tuple[str, list[UpstreamProcess]]:
        gateways = start_webs(3)
        started.append(procs.start_haproxy(gateways, var_dir))
        return f"http://127.0.0.1:{started[0].port}/mcp/", gateways

    yield start
    for haproxy in started:
        haproxy.stop()
