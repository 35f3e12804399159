"""`manage.py setup_schedules`: one health-check schedule per pool, plus the daily prune."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from monitoring import schedules


class Command(BaseCommand):
    help = (
        "Create or repair the beat schedules: one health-check periodic task per check interval "
        "in use (a round of every pool with that interval), the daily history prune and the "
        "broker purge; drop the tasks of intervals no pool uses."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        counts = schedules.sync_all()
        self.stdout.write(
            f"{counts['pools']} pool(s) checked by {counts['intervals']} interval schedule(s), "
            f"{counts['removed']} stale removed, prune and broker purge scheduled."
        )
