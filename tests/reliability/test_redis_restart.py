"""Redis restarted under load: tool calls keep succeeding while it is gone (the hot path does not
touch Redis); once it is back, config events reach the web process again and the Celery worker
takes tasks again.

Redis here is a `redis-server` of the test's own on a free port — never the machine's shared one —
killed with SIGKILL mid-load and started again on the same port, empty (as a restarted cache
without persistence is). The web process polls the database only once an hour, so a config change
it applies after the restart came by event: its listener rejoined the control group on the new
Redis by itself. The worker (no beat: the test sends the task itself) reconnects to the broker on
its own; a health check sent after the restart writes its row.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitoring.models import HealthCheck
from tests.conftest import missing_prerequisite
from tests.reliability.conftest import (
    Load,
    call,
    echo_pool_with_key,
    manage,
    start_web,
    until,
    web_env,
)
from tests.upstreams import procs
from tests.upstreams.procs import UpstreamProcess

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.upstream]

DOWN_SECONDS = 3.0  # load runs this long with Redis gone
SEND_CHECK = (
    "from monitoring.tasks import run_health_checks; from servers.models import Pool; "
    "run_health_checks.delay(Pool.objects.get(slug='echo').pk)"
)
ADD_POOL = (
    "from servers import services; from servers.models import Pool, Server; "
    "pool = services.save(Pool(name='Second', slug='second')); "
    "services.save(Server(pool=pool, name='r1', transport='streamable_http', url={url!r}))"
)


class RedisServer:
    """A private redis-server (no persistence) that can be killed and started on its port."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            missing_prerequisite("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.port = procs.free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            procs.guarded([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save",
                           "", "--appendonly", "no", "--daemonize", "no"]),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        if not until(self._answers, 10, every=0.05):
            raise RuntimeError(f"redis-server did not start on port {self.port}")

    def _answers(self) -> bool:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock,
        ):
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
        return False

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self.process = None


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.kill()


@pytest.fixture
def worker(redis_server: RedisServer, var_dir: Path) -> Iterator[dict[str, str]]:
    """A Celery worker on our Redis and the test database, on a queue of its own; yields the
    environment that sends tasks to it."""
    queue = f"mcppool-test-{redis_server.port}"
    env = web_env(var_dir, redis_url=redis_server.url, MCPPOOL_TEST_QUEUE=queue,
                  DJANGO_SETTINGS_MODULE="tests.monitoring.worker_settings")  # fmt: skip
    env.pop("MCPPOOL_WORKER_METRICS_PORT", None)
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by UpstreamProcess.stop
    process = subprocess.Popen(
        procs.guarded([sys.executable, "-m", "celery", "-A", "mcppool", "worker", "--loglevel",
                       "INFO", "--concurrency", "1", "-Q", queue, "--without-gossip",
                       "--without-mingle", "--without-heartbeat"]),
        cwd=procs.ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    running = UpstreamProcess("celery-worker", process, 0, log)
    yield env
    running.stop()


def checks_written() -> int:
    return HealthCheck.objects.count()


def test_redis_killed_under_load_calls_flow_and_events_and_tasks_resume_after_restart(
    webs: list[UpstreamProcess],
    replica: UpstreamProcess,
    redis_server: RedisServer,
    worker: dict[str, str],
    channel_prefix: str,
    var_dir: Path,
) -> None:
    # given a web process and a Celery worker whose Redis is our own; the web process polls the
    # database once an hour; the worker takes tasks
    key = echo_pool_with_key(replica.url, all_pools=True)
    manage(worker, SEND_CHECK)
    assert until(lambda: checks_written() > 0, 60, every=0.5), "the worker never ran the check"
    env = web_env(var_dir, redis_url=redis_server.url, MCPPOOL_CHANNEL_PREFIX=channel_prefix,
                  MCPPOOL_CONFIG_POLL_SECONDS="3600")  # fmt: skip
    web = start_web(env)
    webs.append(web)

    with Load(web.port, key) as load:
        assert until(lambda: load.snapshot()["200"] >= 20, 15)

        # when Redis dies under load, and stays away a while
        redis_server.kill()
        before = load.snapshot()
        time.sleep(DOWN_SECONDS)
        during = load.snapshot() - before

        # then calls kept flowing, every one of them
        assert set(during) == {"200"}, during
        assert during["200"] > 0, during

        # when Redis is started again (empty) on its port, with load still running
        redis_server.start()
        resumed = load.snapshot()
        assert until(lambda: (load.snapshot() - resumed)["200"] >= 20, 30, every=0.05)
    assert set(load.snapshot()) == {"200"}, load.snapshot()

    # then a config change made now reaches the web process by event: its new pool answers
    manage(env, ADD_POOL.format(url=replica.url))
    applied = until(lambda: call(web.port, key, "second") == 200, 15, every=0.2)
    assert applied, f"the config event never arrived:\n{web.output()}"

    # and a task sent now is run by the worker, reconnected to the new Redis
    written = checks_written()
    manage(worker, SEND_CHECK)
    assert until(lambda: checks_written() > written, 60, every=0.5), "the worker did not reconnect"
