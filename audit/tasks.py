"""Celery task of the audit trail: the daily prune (scheduled by `audit.schedule`)."""

from __future__ import annotations

import datetime as dt

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from audit.models import AuditEntry

PRUNE_EXPIRES = 3600


def prune_audit_entries(retention_days: int, *, now: dt.datetime | None = None) -> int:
    """Delete audit entries older than `retention_days`; returns how many went."""
    cutoff = (now or timezone.now()) - dt.timedelta(days=retention_days)
    deleted, _ = AuditEntry.objects.filter(at__lt=cutoff).delete()
    return int(deleted)


@shared_task(name="audit.tasks.prune_audit", expires=PRUNE_EXPIRES)  # type: ignore[untyped-decorator]
def prune_audit() -> int:
    return prune_audit_entries(settings.MCPPOOL_AUDIT_RETENTION_DAYS)
