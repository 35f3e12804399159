"""The Celery worker's own `/metrics` (health checks run there), for Prometheus to scrape.

Set `MCPPOOL_WORKER_METRICS_PORT` (docker-compose and `make run`: 9808) and the worker serves
`http://<worker>:<port>/metrics`; unset or 0, it serves nothing. A port already in use is logged
as an error and the worker runs on without metrics.

Why prometheus_client's multiprocess mode: Celery's default pool forks child processes and the
checks run in them, each with its own memory. A scrape must see the sum over every child, dead
or alive, so each child writes its samples to memory-mapped files in one directory and the
worker's main process (which owns the port) merges them at scrape time
(`MultiProcessCollector`). Starting a server in each child instead would need one port per child
and a scrape target that changes with every restart. A Pushgateway would add a service.

The directory is `PROMETHEUS_MULTIPROC_DIR` when set, else `<MCPPOOL_VAR_DIR>/worker-metrics`;
it is emptied when the worker starts, as prometheus_client requires (old files would add a
previous run's counts to every scrape).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from celery.signals import worker_init, worker_process_shutdown
from prometheus_client import CollectorRegistry, multiprocess, start_http_server, values

from mcppool.env import env_int

PORT_ENV = "MCPPOOL_WORKER_METRICS_PORT"
DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

log = logging.getLogger(__name__)


def metrics_port() -> int:
    """The port to serve on; 0 = serve nothing."""
    return env_int(PORT_ENV, 0, minimum=0)


def prepare_directory(default: Path) -> Path:
    """Create and empty the multiprocess directory, and make new metrics write into it."""
    directory = Path(os.environ.get(DIR_ENV) or default)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    os.environ[DIR_ENV] = str(directory)
    # prometheus_client picks how values are stored when it is first imported, which Django's
    # set-up (django-prometheus) did before this signal. Switch it now, before the pool forks:
    # every labelled metric creates its storage on first `.labels()`, which happens in a child.
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    return directory


def serve(port: int, directory: Path) -> None:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    try:
        start_http_server(port, registry=registry)
    except OSError as exc:  # a busy port costs the metrics, not the health checks
        log.error("worker metrics not served: port %d: %s", port, exc)
        return
    log.info("worker metrics on :%d/metrics (multiprocess dir %s)", port, directory)


@worker_init.connect  # type: ignore[untyped-decorator]
def serve_worker_metrics(**_: Any) -> None:
    port = metrics_port()
    if not port:
        return
    from django.conf import settings

    serve(port, prepare_directory(Path(settings.VAR_DIR) / "worker-metrics"))


@worker_process_shutdown.connect  # type: ignore[untyped-decorator]
def forget_dead_child(pid: int | None = None, **_: Any) -> None:
    # Only live gauges need this; counters and histograms of a dead child keep counting.
    if os.environ.get(DIR_ENV) and pid is not None:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
