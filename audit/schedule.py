"""The daily prune of the audit trail in beat's schedule (django-celery-beat), kept by migrate."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models.signals import post_migrate
from django_celery_beat.models import PeriodicTask

from monitoring.schedules import interval

PRUNE_TASK = "audit.tasks.prune_audit"
PRUNE_NAME = "mcppool: prune audit trail"
PRUNE_EXPIRES = 3600
DAY = 86_400.0
RETENTION_SETTING = "MCPPOOL_AUDIT_RETENTION_DAYS"


def sync_prune() -> PeriodicTask:
    """Create or repair the daily prune (the operator's `enabled` tick box is left alone)."""
    wanted = {
        "task": PRUNE_TASK,
        "interval": interval(DAY),
        "expire_seconds": PRUNE_EXPIRES,
        "description": f"Delete audit entries older than {RETENTION_SETTING}",
    }
    return PeriodicTask.objects.update_or_create(name=PRUNE_NAME, defaults=wanted)[0]


def _migrated(sender: AppConfig, using: str = DEFAULT_DB_ALIAS, **_: Any) -> None:
    if PeriodicTask._meta.db_table in connections[using].introspection.table_names():
        sync_prune()


def connect(app: AppConfig) -> None:
    post_migrate.connect(_migrated, sender=app, dispatch_uid="mcppool-audit-schedule")
