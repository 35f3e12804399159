"""The real thing: Celery beat + worker (Redis broker, PostgreSQL) check servers on schedule, and
the runtime applies what they find. A server stopped mid-run is marked down after `fall` checks and
stops receiving calls; started again, it is up after `rise` checks and takes calls again."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections

from balancing.engine.config import Health
from balancing.host import RuntimeHost
from servers import services
from servers.choices import ServerState
from servers.models import Flip, Pool, Server
from tests.conftest import require_postgres
from tests.helpers.wait import until
from tests.monitoring.conftest import Restartable, add_http, make_pool, who_answers
from tests.upstreams import procs

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.upstream]

ROOT = Path(__file__).resolve().parents[2]


def database_url() -> str:
    """The URL of the database this test is using (pytest-django's `test_<name>` database)."""
    db = settings.DATABASES["default"]
    auth = quote(db["USER"] or "") + (f":{quote(db['PASSWORD'])}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture
def isolation() -> dict[str, str]:
    """A queue and a channel prefix of this test's own on the shared Redis."""
    tag = uuid.uuid4().hex[:10]
    return {"queue": f"mcppool-test-{tag}", "prefix": f"mcppool-test-{tag}"}


@pytest.fixture
def worker(
    transactional_db: Any, redis_url: str, isolation: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    require_postgres("the worker shares the test database")
    with tempfile.TemporaryDirectory() as var, tempfile.TemporaryFile() as log:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.monitoring.worker_settings",
            "DATABASE_URL": database_url(),
            "REDIS_URL": redis_url,
            "MCPPOOL_TEST_QUEUE": isolation["queue"],
            "MCPPOOL_CHANNEL_PREFIX": isolation["prefix"],
            "MCPPOOL_VAR_DIR": var,
            "SECRET_KEY": "tests-only",
        }
        env.pop("MCPPOOL_WORKER_METRICS_PORT", None)
        command = [
            sys.executable, "-m", "celery", "-A", "mcppool", "worker", "--beat",
            "--loglevel", "INFO", "--concurrency", "2", "-Q", isolation["queue"],
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--schedule", str(Path(var) / "celerybeat-schedule"),
        ]  # fmt: skip
        process = subprocess.Popen(
            procs.guarded(command), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            yield process
        finally:
            _stop(process)
            log.seek(0)
            output = log.read().decode(errors="replace")
            if "Traceback" in output:
                print(output[-6000:])  # shown when the test fails


def _stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # prefork children and stdio probes too
    process.wait(5)


@pytest.fixture
async def host(settings: Any, redis_url: str, isolation: dict[str, str]) -> AsyncIterator[Any]:
    """A runtime that hears health only through Redis events (the poll is an hour)."""
    settings.REDIS_URL = redis_url
    settings.MCPPOOL_CONFIG_POLL_SECONDS = 3600
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [redis_url], "prefix": isolation["prefix"]},
        }
    }
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    h = RuntimeHost()
    yield h
    await h.stop()
    channel_layers.backends.clear()
    await sync_to_async(connections.close_all)()


@sync_to_async
def health_of(server: Server) -> str:
    return Server.objects.values_list("health", flat=True).get(pk=server.pk)


async def is_health(server: Server, wanted: Health) -> bool:
    return await health_of(server) == wanted


def endpoint_health(host: RuntimeHost, name: str) -> Health:
    live = host.runtime.pool("web")
    return next(e.config.health for e in live.endpoints.values() if e.config.name == name)


async def test_worker_marks_a_stopped_server_down_and_a_restarted_one_up(
    worker: subprocess.Popen[bytes],
    host: RuntimeHost,
    restartable: Callable[[str], Restartable],
) -> None:
    # given two replicas in a pool checked every second (down after 2 failures, up after 2 passes)
    a, b = restartable("a"), restartable("b")

    @sync_to_async
    def setup() -> tuple[Server, Server]:
        pool = make_pool("web", check_interval=1.0, check_timeout=0.5, fall=2, rise=2)
        return add_http(pool, "a", a.url), add_http(pool, "b", b.url)

    server_a, server_b = await setup()
    assert await until(lambda: is_health(server_a, Health.UP), 60), "beat + worker never checked"
    assert await until(lambda: is_health(server_b, Health.UP), 10)
    await host.start()
    assert set(await who_answers(host, 10)) == {"a", "b"}

    # when b stops mid-run
    b.stop()

    # then the scheduled checks mark it down, the runtime hears it, and b takes no more calls
    assert await until(lambda: is_health(server_b, Health.DOWN), 30)
    assert await until(lambda: endpoint_health(host, "b") is Health.DOWN, 5)
    assert await who_answers(host, 20) == Counter({"a": 20})

    # when b is started again
    b.start()

    # then it is up after `rise` checks and takes calls again
    assert await until(lambda: is_health(server_b, Health.UP), 30)
    assert await until(lambda: endpoint_health(host, "b") is Health.UP, 5)
    assert await until(lambda: _answered_by(host, "b"), 15)
    flips = await sync_to_async(
        lambda: list(
            Flip.objects.filter(server=server_b).order_by("at", "id").values_list("new", "source")
        )
    )()
    assert flips == [("up", "check"), ("down", "check"), ("up", "check")]
    assert worker.poll() is None  # the worker never died along the way


async def _answered_by(host: RuntimeHost, name: str) -> bool:
    return name in await who_answers(host, 10)


def test_worker_settings_module_is_the_service_settings_with_a_private_queue() -> None:
    env = {**os.environ, "MCPPOOL_TEST_QUEUE": "q-1", "SECRET_KEY": "x"}
    code = (
        "import tests.monitoring.worker_settings as s; "
        "print(s.CELERY_TASK_DEFAULT_QUEUE, s.CELERY_TASK_ALWAYS_EAGER)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, timeout=60
    )
    assert out.stdout.decode().split() == ["q-1", "False"], out.stderr.decode()[-2000:]


def _alive(pid: int) -> bool:
    """Is the process running (a zombie waiting to be reaped has ended)?"""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _probe_pids(spawn_log: Path) -> list[int]:
    return [int(p) for p in spawn_log.read_text().split()] if spawn_log.exists() else []


async def test_worker_deleted_pool_and_disabled_server_end_their_probe_processes_at_once(
    worker: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    # given two pools whose stdio servers only the worker runs (no web process reports on them)
    logs = {name: tmp_path / f"{name}.spawns" for name in ("gone", "off")}

    @sync_to_async
    def setup() -> tuple[Pool, Server]:
        made = []
        for name, log in logs.items():
            pool = make_pool(name, check_interval=1.0, check_timeout=0.5)
            made.append(services.save(Server(
                pool=pool, name=name, transport="stdio", command=sys.executable, cwd=str(ROOT),
                args=["-m", "tests.upstreams.bad_stdio", "ok", "--spawn-log", str(log)],
            )))  # fmt: skip
        return made[0].pool, made[1]

    deleted_pool, disabled = await setup()
    assert await until(lambda: all(_probe_pids(log) for log in logs.values()), 60)
    assert await until(
        lambda: sync_to_async(lambda: Server.objects.filter(health=Health.UP).count())(), 30
    )

    # when the operator deletes one pool and disables the other's server
    await sync_to_async(services.delete)(deleted_pool)
    await sync_to_async(services.set_server_state)([disabled], ServerState.DISABLED)

    # then every probe process of both ends within a few seconds, while the worker lives on
    every = [pid for log in logs.values() for pid in _probe_pids(log)]
    assert await until(lambda: not any(_alive(pid) for pid in every), 15), every
    assert worker.poll() is None
