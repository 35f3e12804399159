"""The Celery app: Redis when REDIS_URL is set, otherwise SQLAlchemy over a SQLite file."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mcppool.settings")

app = Celery("mcppool")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# The worker's own /metrics for Prometheus, when MCPPOOL_WORKER_METRICS_PORT is set.
import monitoring.worker_metrics  # noqa: E402, F401  (connects the worker_init signal)
