"""The audit trail in the admin: read-only, filterable, exported as CSV."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, StreamingHttpResponse

from audit.models import AuditEntry, PoolAuditSettings
from servers import services

if TYPE_CHECKING:
    # django-stubs makes the admin classes generic; at run time they take no type arguments.
    _EntryAdmin = admin.ModelAdmin[AuditEntry]
    _SettingsAdmin = admin.ModelAdmin[PoolAuditSettings]
else:
    _EntryAdmin = _SettingsAdmin = admin.ModelAdmin

CSV_COLUMNS = (
    "at", "kind", "transport", "key_name", "key_prefix", "subject", "pool", "tool", "server",
    "attempts", "outcome", "status", "latency_ms", "bytes_in", "bytes_out", "client_address",
    "trace_id", "session", "change", "arguments", "result",
)  # fmt: skip


class _Echo:
    def write(self, value: str) -> str:
        return value


def csv_rows(queryset: QuerySet[AuditEntry]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_COLUMNS)
    for row in queryset.values_list(*CSV_COLUMNS).iterator(chunk_size=2000):
        yield writer.writerow(["" if v is None else v for v in row])


@admin.register(AuditEntry)
class AuditEntryAdmin(_EntryAdmin):
    list_display = ("at", "kind", "who", "pool", "tool", "server", "attempts", "outcome",
                    "latency_ms", "client_address", "change")  # fmt: skip
    list_filter = ("kind", "transport", "outcome", "pool", "server", "key_name", "at")
    search_fields = ("tool", "key_name", "key_prefix", "subject", "change", "trace_id",
                     "client_address")  # fmt: skip
    date_hierarchy = "at"
    actions = ("export_csv",)
    list_per_page = 100
    show_full_result_count = False  # counting a big table on every page costs more than it tells

    @admin.display(description="who")
    def who(self, entry: AuditEntry) -> str:
        if entry.key_name or entry.key_prefix:
            return f"{entry.key_name} ({entry.key_prefix})"
        return entry.subject

    @admin.action(description="Export the selected entries as CSV")
    def export_csv(self, request: HttpRequest, queryset: QuerySet[AuditEntry]) -> Any:
        response = StreamingHttpResponse(csv_rows(queryset), content_type="text/csv")
        response["Content-Disposition"] = 'attachment; filename="mcppool-audit.csv"'
        return response

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # an audit trail is not edited; pruning removes old entries


@admin.register(PoolAuditSettings)
class PoolAuditSettingsAdmin(_SettingsAdmin):
    list_display = ("pool", "store_calls", "payload_bytes")
    list_select_related = ("pool",)

    def save_model(
        self, request: HttpRequest, obj: PoolAuditSettings, form: Any, change: bool
    ) -> None:
        # A config change like any other: every web process re-reads it, and it is audited.
        with services.config_change(f"audit settings of pool {obj.pool} (admin)"):
            obj.full_clean()
            obj.save()

    def delete_model(self, request: HttpRequest, obj: PoolAuditSettings) -> None:
        services.delete(obj)
