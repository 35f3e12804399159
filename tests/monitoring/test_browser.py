"""The dashboard and the admin in a real browser against the real service: a stopped upstream turns
its row down without a reload; every admin and dashboard page fits a 1366 px screen; `make run`'s
worker serves its metrics.

Runs `make run`'s launcher (uvicorn + Celery worker with beat, embedded SQLite in a temp dir) with
a pool of two faulty HTTP upstreams checked every second, drives Debian's chromium through
Playwright, stops one upstream, and waits for the health checks → flip → runtime reload →
WebSocket push to turn its chip and row red. Screenshots land in `test-artifacts/`; with
`MCPPOOL_UPDATE_SCREENSHOTS=1` the 1366 px page screenshots also replace `docs/screenshots/`.

Skipped locally when chromium or Playwright is missing; in CI (CI=true) that is a failure.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import missing_prerequisite
from tests.upstreams import procs

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = procs.ROOT / "test-artifacts"
DOC_SHOTS = procs.ROOT / "docs" / "screenshots"
LAPTOP = {"width": 1366, "height": 768}
START_TIMEOUT = 60.0
# The first checks wait for the Celery worker and beat to start (slow on a busy 2-core machine);
# after that a check runs every second, 2 failures mark a server down, the runtime reloads
# within a second and the page hears it at the next push.
FIRST_CHECK_TIMEOUT_MS = 120_000
HEALTH_TIMEOUT_MS = 45_000

pytestmark = [pytest.mark.upstream, pytest.mark.timeout(300)]


def _require_browser() -> Any:
    missing = ""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "playwright is not installed (pip install playwright)"
    if not missing and not CHROMIUM.exists():
        missing = f"{CHROMIUM} is missing (apt-get install -y chromium)"
    if missing:
        missing_prerequisite(missing)
    return sync_playwright


@dataclass
class Service:
    url: str
    password: str
    process: subprocess.Popen[bytes]
    log: Path
    worker_metrics_port: int


POOLS = """
pools:
  - slug: live
    name: Live
    strategy: round_robin
    check_interval: 1
    check_timeout: 0.5
    fall: 2
    rise: 1
    servers:
{servers}
"""


def _wait_for(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the service exited:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"the service did not start:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def upstreams() -> Iterator[list[procs.UpstreamProcess]]:
    with procs.faulty_replicas(2) as started:
        yield started


@pytest.fixture(scope="module")
def service(
    upstreams: list[procs.UpstreamProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    var = tmp_path_factory.mktemp("service")
    port, worker_metrics_port = procs.free_port(), procs.free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        DJANGO_SETTINGS_MODULE="mcppool.settings",
        MCPPOOL_VAR_DIR=str(var),
        MCPPOOL_HOST="127.0.0.1",
        MCPPOOL_PORT=str(port),
        MCPPOOL_WORKER_METRICS_PORT=str(worker_metrics_port),
        SECRET_KEY="browser-test-only",
        PYTHONUNBUFFERED="1",
    )
    servers = "\n".join(
        f"      - name: {u.name}\n        transport: streamable_http\n        url: {u.url}"
        for u in upstreams
    )
    pools = var / "pools.yaml"
    pools.write_text(POOLS.format(servers=servers))
    manage = [sys.executable, "manage.py"]
    for command in (["migrate", "--noinput", "-v", "0"], ["mcppool", "apply", str(pools)]):
        subprocess.run(manage + command, env=env, cwd=procs.ROOT, check=True, timeout=120)
    log = var / "service.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            procs.guarded([sys.executable, "-m", "mcppool.launcher"]),
            env=env,
            cwd=procs.ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: teardown reaps uvicorn and celery
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{url}/admin/login/", process, log)
        password = (var / "admin-password").read_text().strip()
        yield Service(url, password, process, log, worker_metrics_port)
    finally:
        _stop_group(process)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGTERM)  # the launcher stops its children on SIGTERM
        process.wait(20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # whatever did not stop, and grandchildren
    process.wait(5)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_playwright = _require_browser()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield chromium
        chromium.close()


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)


def test_browser_stopped_upstream_turns_down_without_reload(
    browser: Any, service: Service, upstreams: list[procs.UpstreamProcess]
) -> None:
    # given on-call signed in, looking at the overview of a healthy pool, on a laptop screen
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    page.set_default_timeout(HEALTH_TIMEOUT_MS)
    try:
        page.goto(f"{service.url}/admin/login/?next=/dashboard/")
        page.fill("#id_username", "admin")
        page.fill("#id_password", service.password)
        page.click("input[type=submit]")
        page.wait_for_url(f"{service.url}/dashboard/")
        page.wait_for_selector("#conn[data-state=live]")
        for name in ("r0", "r1"):  # the first passing check marks each up
            chip = f'.chip[data-server="{name}"][data-health="up"]'
            page.wait_for_selector(chip, timeout=FIRST_CHECK_TIMEOUT_MS)
        row = page.locator('tr[data-pool="live"]')
        assert row.locator('[data-field="healthy"]').inner_text() == "2/2"
        page.evaluate("window.__sameDocument = true")  # gone if the page ever reloads
        _shot(page, "1-overview-healthy")

        # when one upstream process stops
        upstreams[1].stop()

        # then, without a reload, its chip turns down and the pool counts 1 of 2 healthy
        page.wait_for_selector('.chip[data-server="r1"][data-health="down"]')
        page.wait_for_function(
            "document.querySelector('tr[data-pool=\"live\"]').dataset.status === 'degraded'"
        )
        assert row.locator('[data-field="healthy"]').inner_text() == "1/2"
        assert page.evaluate("window.__sameDocument") is True
        assert page.locator('.chip[data-server="r0"]').get_attribute("data-health") == "up"
        _shot(page, "2-overview-r1-down")

        # and the pool page shows the down row and the flip with its reason
        page.click('tr[data-pool="live"] a[href="/dashboard/pools/live/"]')
        page.wait_for_selector('#servers tr[data-server="r1"][data-health="down"]')
        page.wait_for_selector("#flips li:has-text('failed check')")
        _shot(page, "3-pool-r1-down")
    except Exception:
        _shot(page, "failure")
        print(f"service log (tail):\n{service.log.read_text()[-6000:]}")  # shown by pytest
        raise
    finally:
        page.close()


def test_make_run_worker_serves_its_metrics(service: Service) -> None:
    # the launcher starts the worker with MCPPOOL_WORKER_METRICS_PORT (9808 unless set), and the
    # checks it runs every second show up there
    url = f"http://127.0.0.1:{service.worker_metrics_port}/metrics"
    deadline = time.monotonic() + FIRST_CHECK_TIMEOUT_MS / 1000
    text = ""
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as response:
                text = response.read().decode()
            if 'mcppool_health_checks_total{outcome="ok",pool="live"' in text:
                return
        time.sleep(0.5)
    pytest.fail(f"no health checks on {url}:\n{text[-2000:]}\n{service.log.read_text()[-3000:]}")


# Every page an operator opens first, at 1366 px: (screenshot name, path).
PAGES = (
    ("admin-index", "/admin/"),
    ("admin-servers", "/admin/servers/server/"),
    ("admin-pool", "/admin/servers/pool/{pool_id}/change/"),
    ("admin-server", "/admin/servers/server/{server_id}/change/"),
    ("admin-pools", "/admin/servers/pool/"),
    ("admin-api-key-add", "/admin/servers/apikey/add/"),
    ("admin-health-checks", "/admin/monitoring/healthcheck/"),
    ("dashboard-overview", "/dashboard/"),
    ("dashboard-pool", "/dashboard/pools/live/"),
    ("dashboard-server", "/dashboard/pools/live/servers/r0/"),
)
# Everything wider than the viewport, or cut off inside a scrolling box: tables, the page itself.
OVERFLOW = """() => {
  const width = window.innerWidth, out = [], page = document.documentElement.scrollWidth;
  if (page > width) out.push("page " + page);
  document.querySelectorAll("table").forEach((t, i) => {
    const right = Math.round(t.getBoundingClientRect().right);
    const box = t.parentElement;
    if (right > width) out.push(`table ${i} (${t.id || t.className}) ends at ${right}`);
    if (box && box.scrollWidth > box.clientWidth + 1)
      out.push(`table ${i} (${t.id || t.className}) scrolls: ${box.scrollWidth}`);
  });
  return out;
}"""


def _login(page: Any, service: Service, next_path: str) -> None:
    page.goto(f"{service.url}/admin/login/?next={next_path}")
    page.fill("#id_username", "admin")
    page.fill("#id_password", service.password)
    page.click("input[type=submit]")
    page.wait_for_url(f"{service.url}{next_path}")


def _ids(service: Service) -> dict[str, str]:
    code = (
        "import django; django.setup(); from servers.models import Server; "
        "s = Server.objects.get(pool__slug='live', name='r0'); print(s.pool_id, s.pk)"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        DJANGO_SETTINGS_MODULE="mcppool.settings",
        MCPPOOL_VAR_DIR=str(service.log.parent),
        SECRET_KEY="browser-test-only",
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=procs.ROOT, capture_output=True, text=True,
        check=True, timeout=60,
    )  # fmt: skip
    pool_id, server_id = out.stdout.split()[-2:]
    return {"pool_id": pool_id, "server_id": server_id}


def test_browser_admin_and_dashboard_pages_fit_a_laptop_screen(
    browser: Any, service: Service
) -> None:
    page = browser.new_page(viewport=LAPTOP)
    page.set_default_timeout(HEALTH_TIMEOUT_MS)
    ids = _ids(service)
    update_docs = os.environ.get("MCPPOOL_UPDATE_SCREENSHOTS") == "1"
    try:
        # `/` is the way in: the login, then the dashboard
        page.goto(f"{service.url}/")
        page.wait_for_url("**/admin/login/?next=/dashboard/")
        _login(page, service, "/dashboard/")
        page.wait_for_selector(".chip[data-health=up]", timeout=FIRST_CHECK_TIMEOUT_MS)
        for name, path in PAGES:
            page.goto(service.url + path.format(**ids))
            page.wait_for_load_state("networkidle")
            assert page.evaluate(OVERFLOW) == [], name
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
            if update_docs:
                DOC_SHOTS.mkdir(exist_ok=True)
                page.screenshot(path=str(DOC_SHOTS / f"{name}.png"), full_page=True)
        # the server list's first columns are what on-call reads: all on screen
        page.goto(f"{service.url}/admin/servers/server/")
        for column in ("name", "health_badge", "state", "checked", "short_error", "tools"):
            right = page.evaluate(
                f"document.querySelector('th.column-{column}').getBoundingClientRect().right"
            )
            assert right <= LAPTOP["width"], column
        assert "mcppool administration" in page.inner_text("#site-name")
    except Exception:
        _shot(page, "admin-failure")
        print(f"service log (tail):\n{service.log.read_text()[-6000:]}")
        raise
    finally:
        page.close()
