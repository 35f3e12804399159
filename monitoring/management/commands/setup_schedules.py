"""`manage.py setup_schedules`: one health-check schedule per pool, plus the daily prune."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from monitoring import schedules


class Command(BaseCommand):
    help = (
        "Create or repair the beat schedules: a health-check periodic task per pool (its "
        "interval and expiry from the pool), the daily history prune; drop those of deleted pools."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        counts = schedules.sync_all()
        self.stdout.write(
            f"{counts['pools']} pool schedule(s) in place, {counts['removed']} stale removed, "
            "daily prune scheduled."
        )
