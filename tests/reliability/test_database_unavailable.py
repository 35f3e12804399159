"""The database unreachable under load: tool calls keep flowing on the last known config, the
admin and config writes answer a clear 503 instead of a stack trace, and once the database is
back the same process writes health results again, with nothing half-written in between.

The web process reaches PostgreSQL through a TCP relay this test runs (127.0.0.1:<port> → the
test database), so "unreachable" is real: open connections are cut and new ones refused, while
the database itself — shared with the rest of the suite — never stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests

from monitoring.models import HealthCheck
from servers import services
from servers.models import ConfigState, Pool, Server
from tests.monitoring.test_worker import database_url
from tests.reliability.conftest import Load, manage, start_web, until, web_env
from tests.upstreams import procs
from tests.upstreams.procs import UpstreamProcess

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.upstream]

DOWN_SECONDS = 3.0  # several config polls fail meanwhile
PASSWORD = "not-a-secret-0"
# In a service process: the test settings hash passwords with a hasher the service does not have.
CREATE_ADMIN = (
    "from django.contrib.auth.models import User; "
    f"User.objects.create_superuser('admin', '', {PASSWORD!r})"
)


class Relay:
    """A TCP relay to the database that the test can cut (every connection) and restore."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = procs.free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: asyncio.Server | None = None
        self.transports: set[asyncio.WriteTransport] = set()

    def start(self) -> None:
        asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(10)

    def cut(self) -> None:
        asyncio.run_coroutine_threadsafe(self._cut(), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    async def _listen(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def _cut(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for transport in list(self.transports):
            transport.abort()  # a reset, as a network failure or a stopped database looks
        self.transports.clear()

    async def _close(self) -> None:
        await self._cut()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.transports |= {writer.transport, up_writer.transport}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
        self.transports.discard(writer.transport)


@pytest.fixture
def relay(postgres: None) -> Iterator[Relay]:
    parts = urlsplit(database_url())
    running = Relay((parts.hostname or "127.0.0.1", parts.port or 5432))
    running.start()
    yield running
    running.close()


def relayed_url(relay: Relay) -> str:
    parts = urlsplit(database_url())
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{relay.port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


@pytest.fixture
def replica() -> Iterator[UpstreamProcess]:
    upstream = procs.start_faulty_http(name="r1", json_response=True)
    yield upstream
    upstream.stop()


def setup(url: str) -> tuple[str, str, int]:
    pool = services.save(Pool(name="Echo", slug="echo"))
    server = services.save(Server(pool=pool, name="r1", transport="streamable_http", url=url))
    _, app = services.create_api_key("app", pools=[pool])
    _, admin = services.create_api_key("admin", all_pools=True, is_admin=True)
    return app, admin, server.pk


def log_in(base: str) -> requests.Session:
    """An admin session, as a browser would hold it."""
    browser = requests.Session()
    browser.get(f"{base}/admin/login/", timeout=10)
    answer = browser.post(
        f"{base}/admin/login/?next=/admin/",
        data={"username": "admin", "password": PASSWORD,
              "csrfmiddlewaretoken": browser.cookies["csrftoken"]},
        timeout=10,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text[:500]
    assert "Log out" in answer.text, answer.text[:500]
    return browser


def check_now(browser: requests.Session, base: str, server_id: int) -> int:
    """The admin's "check now" action on one server; the status of the page it answers."""
    answer = browser.post(
        f"{base}/admin/servers/server/",
        data={"action": "check_now", "_selected_action": [server_id], "index": 0,
              "csrfmiddlewaretoken": browser.cookies["csrftoken"]},
        timeout=30,
    )  # fmt: skip
    return answer.status_code


def test_database_unreachable_calls_flow_admin_says_so_and_writes_resume_after(
    webs: list[UpstreamProcess], relay: Relay, replica: UpstreamProcess, var_dir: Path
) -> None:
    # given a web process whose database connection goes through the relay
    app, admin, server_id = setup(replica.url)
    # (no worker here: "check now", queued on Celery, runs eagerly in the web process)
    env = web_env(var_dir, db_url=relayed_url(relay), MCPPOOL_CONFIG_POLL_SECONDS="0.5",
                  SESSION_COOKIE_SECURE="0", CSRF_COOKIE_SECURE="0",
                  CELERY_TASK_ALWAYS_EAGER="1")  # fmt: skip
    manage(env, CREATE_ADMIN)
    web = start_web(env)
    webs.append(web)
    base = f"http://127.0.0.1:{web.port}"
    browser = log_in(base)
    version = ConfigState.objects.get().version
    pools = Pool.objects.count()

    with Load(web.port, app) as load:
        assert until(lambda: load.snapshot()["200"] >= 20, 15)

        # when the database becomes unreachable under load
        relay.cut()
        before = load.snapshot()
        page = browser.get(f"{base}/admin/servers/server/", timeout=30)
        stranger = requests.Session()
        stranger.get(f"{base}/admin/login/", timeout=30)  # the form itself needs no database
        login = stranger.post(
            f"{base}/admin/login/", timeout=30,
            data={"username": "admin", "password": PASSWORD,
                  "csrfmiddlewaretoken": stranger.cookies["csrftoken"]},
        )  # fmt: skip
        write = requests.post(f"{base}/api/v1/pools", json={"slug": "new", "name": "New"},
                              headers={"Authorization": f"Bearer {admin}"}, timeout=30)  # fmt: skip
        until(lambda: False, DOWN_SECONDS)  # wait: several config polls fail meanwhile
        during = load.snapshot() - before

        # then every call still succeeds on the last known config
        assert set(during) == {"200"}, during
        assert during["200"] > 0, during
        # and the admin and config writes say what is wrong, as a 503, not a stack trace
        assert page.status_code == 503, page.text[:500]
        assert "Database unavailable" in page.text
        assert "Traceback" not in page.text
        assert page.headers["Retry-After"]
        assert login.status_code == 503
        assert "Database unavailable" in login.text
        assert write.status_code == 503, write.text[:500]
        assert write.json()["error"]["code"] == "database_unavailable"

        # when the database is reachable again
        relay.start()
        back = until(lambda: browser.get(f"{base}/admin/", timeout=30).status_code == 200, 20)
        assert back, web.output()
    assert set(load.snapshot()) == {"200"}, load.snapshot()

    # then the same process writes health results again (the admin's "check now")
    checks = HealthCheck.objects.count()
    assert until(lambda: check_now(browser, base, server_id) == 200, 20, every=0.5)
    assert HealthCheck.objects.count() > checks
    # and nothing was half-written: the refused write left no pool, the config is as it was
    assert Pool.objects.count() == pools
    assert not Pool.objects.filter(slug="new").exists()
    assert ConfigState.objects.get().version >= version
    assert HealthCheck.objects.filter(server_id=server_id).exists()
