"""Health-check history: one row per probe of a server."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from servers.choices import Era
from servers.models import Server


class HealthCheck(models.Model):
    server = models.ForeignKey(Server, on_delete=models.CASCADE, related_name="health_checks")
    at = models.DateTimeField(default=timezone.now)
    ok = models.BooleanField()
    latency_ms = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True)
    era = models.CharField(max_length=10, choices=Era.choices, blank=True)
    protocol_version = models.CharField(max_length=20, blank=True)
    tools_count = models.PositiveIntegerField(null=True, blank=True)
    tools_hash = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["server", "-at"], name="healthcheck_server_at")]

    def __str__(self) -> str:
        return f"{self.server} {'ok' if self.ok else 'failed'} at {self.at:%H:%M:%S}"
