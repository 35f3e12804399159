"""`make run`: prepare the embedded default and run web, worker and beat until Ctrl-C.

Runs `migrate`, makes an admin user when there is none (its password is printed once and kept in
`var/admin-password`), loads `examples/pools.yaml` into an empty database, then starts the ASGI
server and a Celery worker with embedded beat as child processes. Ctrl-C (or SIGTERM) stops them
all; if one dies, the others are stopped too, so nothing is left half-running.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HOST = os.environ.get("MCPPOOL_HOST", "127.0.0.1")
PORT = os.environ.get("MCPPOOL_PORT", "8000")
# Stopping, the web process gives answers in progress this long (as the runtime gives its calls),
# then cuts the streams still open and stops.
STOP_GRACE = os.environ.get("MCPPOOL_SHUTDOWN_GRACE_SECONDS", "10")
# The worker's own /metrics (health checks run there: monitoring/worker_metrics.py); 0 = none.
WORKER_METRICS_PORT = os.environ.get("MCPPOOL_WORKER_METRICS_PORT", "9808")
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "pools.yaml"


def prepare() -> None:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mcppool.settings")
    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from servers.models import Pool

    call_command("migrate", interactive=False, verbosity=0)
    if _has_command("setup_schedules"):  # the health-check schedules, once monitoring has them
        call_command("setup_schedules", verbosity=0)
    declare_queues()
    user_model = get_user_model()
    password_file = Path(settings.VAR_DIR) / "admin-password"
    if not user_model.objects.filter(is_superuser=True).exists():
        password = secrets.token_urlsafe(12)
        user_model.objects.create_superuser("admin", "admin@localhost", password)
        password_file.write_text(password + "\n")
        password_file.chmod(0o600)
    if not Pool.objects.exists() and EXAMPLE.exists():
        call_command("mcppool", "apply", str(EXAMPLE), verbosity=0)
    login = password_file.read_text().strip() if password_file.exists() else "(your password)"
    print(
        f"\n  mcppool is starting on http://{HOST}:{PORT}/\n"
        f"  admin:     http://{HOST}:{PORT}/admin/   user admin, password {login}\n"
        f"  dashboard: http://{HOST}:{PORT}/dashboard/\n"
        f"  metrics:   http://{HOST}:{PORT}/metrics"
        + (f" (worker: http://{HOST}:{WORKER_METRICS_PORT}/metrics)" if _worker_metrics() else "")
        + "\n",
        flush=True,
    )


def declare_queues() -> None:
    """Create the broker's queues before the worker and its embedded beat start.

    On the embedded SQLite broker both would otherwise race to insert the `celery` queue row;
    the loser's SQLAlchemy session stays rolled back and beat then fails every scheduled check.
    """
    from mcppool.celery import app

    with app.connection_for_write() as connection:
        for queue in app.amqp.queues.values():
            queue.bind(connection.default_channel).declare()


def _worker_metrics() -> bool:
    return WORKER_METRICS_PORT not in ("", "0")


def _has_command(name: str) -> bool:
    from django.core.management import get_commands

    return name in get_commands()


def children() -> list[list[str]]:
    python = sys.executable
    web = [
        python, "-m", "uvicorn", "mcppool.asgi:application",
        "--host", HOST, "--port", PORT, "--lifespan", "on", "--no-access-log",
        # answers in progress get this long on stop; then open streams are cut
        "--timeout-graceful-shutdown", STOP_GRACE,
    ]  # fmt: skip
    worker = [
        python, "-m", "celery", "-A", "mcppool", "worker", "--beat",
        "--loglevel", "INFO", "--concurrency", "2",
        "--schedule", str(Path(os.environ.get("MCPPOOL_VAR_DIR", "var")) / "celerybeat-schedule"),
    ]  # fmt: skip
    return [web, worker]


def wait_until_up(deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{PORT}/admin/login/", timeout=1):
                return True
        except OSError:
            time.sleep(0.3)
    return False


def main() -> int:
    prepare()
    os.environ["MCPPOOL_WORKER_METRICS_PORT"] = WORKER_METRICS_PORT  # the worker reads it
    procs = [subprocess.Popen(cmd) for cmd in children()]  # noqa: S603  # our own argv lists
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    if wait_until_up(time.monotonic() + 60):
        print(f"  ready: http://{HOST}:{PORT}/admin/  (Ctrl-C stops everything)", flush=True)
    while not stopping and all(p.poll() is None for p in procs):
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return 0 if stopping else 1


if __name__ == "__main__":
    sys.exit(main())
