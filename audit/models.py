"""The audit trail in the database: tool calls of pools that opt in, and every config change."""

from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from servers.models import Pool

# A cap on the cap: arguments and results are for finding out what happened, not for archiving.
MAX_PAYLOAD_BYTES = 65_536


class Kind(models.TextChoices):
    TOOL_CALL = "tool_call", "tool call"
    CONFIG_CHANGE = "config_change", "config change"


class AuditEntry(models.Model):
    """One audited event. A key appears by name and prefix only, never its secret."""

    kind = models.CharField(max_length=20, choices=Kind.choices)
    at = models.DateTimeField(db_index=True)
    transport = models.CharField(max_length=10, blank=True, help_text="rest, mcp, admin, api, cli")
    key_name = models.CharField(max_length=100, blank=True)
    key_prefix = models.CharField(max_length=16, blank=True)
    subject = models.CharField(max_length=200, blank=True, help_text="user or token subject")
    pool = models.CharField(max_length=100, blank=True, db_index=True)
    tool = models.CharField(max_length=200, blank=True)
    server = models.CharField(max_length=100, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    outcome = models.CharField(max_length=40, blank=True)
    status = models.PositiveSmallIntegerField(default=0)
    latency_ms = models.FloatField(default=0.0)
    bytes_in = models.PositiveIntegerField(default=0)
    bytes_out = models.PositiveIntegerField(default=0)
    client_address = models.CharField(max_length=64, blank=True)
    trace_id = models.CharField(max_length=32, blank=True)
    session = models.CharField(max_length=16, blank=True, help_text="a hash of the session id")
    arguments = models.JSONField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    change = models.TextField(blank=True, help_text="config change: what changed")

    class Meta:
        ordering = ("-at", "-id")
        verbose_name_plural = "audit entries"
        indexes = [models.Index(fields=("kind", "-at"), name="audit_kind_at")]

    def __str__(self) -> str:
        what = self.tool if self.kind == Kind.TOOL_CALL else self.change[:60]
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.kind} {what}"


class PoolAuditSettings(models.Model):
    """A pool's opt-ins: its tool calls in the database, and their arguments and results."""

    pool = models.OneToOneField(Pool, on_delete=models.CASCADE, related_name="audit_settings")
    store_calls = models.BooleanField(
        default=False, help_text="Write this pool's tool calls to the audit table (in batches)."
    )
    payload_bytes = models.PositiveIntegerField(
        default=0,
        validators=[MinValueValidator(0), MaxValueValidator(MAX_PAYLOAD_BYTES)],
        help_text="Keep arguments and results up to this many bytes of JSON each (0 = never).",
    )

    class Meta:
        verbose_name = "pool audit settings"
        verbose_name_plural = "pool audit settings"

    def __str__(self) -> str:
        return f"audit of {self.pool}"
