"""The Celery app: Redis when REDIS_URL is set, otherwise SQLAlchemy over a SQLite file."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mcppool.settings")

app = Celery("mcppool")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
