"""Health in the admin: the check history (read-only), "check now", a server's recent history.

`servers` may not import `monitoring`, so the health additions to the server and pool admins are
made here, by replacing their registrations with subclasses (`admin.site.unregister` + `register`,
public API). A subclass keeps everything `servers.admin` defines, reads as one class with its
additions in plain sight, and does not depend on the admin site's private registry. This module
is imported after `servers.admin` (admin autodiscovery follows INSTALLED_APPS order).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.admin.options import IS_POPUP_VAR
from django.db.models import Prefetch, QuerySet
from django.http import HttpRequest
from django.utils.text import Truncator

from monitoring import checks
from monitoring.models import HealthCheck
from servers.admin import PoolAdmin, ServerAdmin
from servers.choices import Health, ServerState
from servers.models import Flip, Pool, Server

if TYPE_CHECKING:
    _HealthCheckAdmin = admin.ModelAdmin[HealthCheck]
    _FlipAdmin = admin.ModelAdmin[Flip]
    _HealthCheckInline = admin.TabularInline[HealthCheck, Server]
    _FlipInline = admin.TabularInline[Flip, Server]
else:
    _HealthCheckAdmin = _FlipAdmin = admin.ModelAdmin
    _HealthCheckInline = _FlipInline = admin.TabularInline

# How much history a server's page shows; the full history is on the HealthCheck and Flip lists.
RECENT = 20


def _object_id(request: HttpRequest) -> int | None:
    match = request.resolver_match
    raw = match.kwargs.get("object_id") if match else None
    return int(raw) if isinstance(raw, str) and raw.isdigit() else None


class _RecentHistoryInline:
    """A read-only inline listing the newest `RECENT` rows of the server being viewed."""

    extra = 0
    max_num: int | None = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def recent(self, queryset: QuerySet[Any], request: HttpRequest) -> QuerySet[Any]:
        server_id = _object_id(request)
        ids = list(queryset.filter(server_id=server_id).values_list("pk", flat=True)[:RECENT])
        return queryset.filter(pk__in=ids)


class FlipInline(_RecentHistoryInline, _FlipInline):
    model = Flip
    fields = readonly_fields = ("at", "old", "new", "source", "reason")
    verbose_name_plural = f"health changes (latest {RECENT})"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Flip]:
        return self.recent(super().get_queryset(request), request)


class HealthCheckInline(_RecentHistoryInline, _HealthCheckInline):
    model = HealthCheck
    fields = readonly_fields = ("at", "ok", "latency_ms", "era", "tools_count", "error")
    verbose_name_plural = f"health checks (latest {RECENT})"

    def get_queryset(self, request: HttpRequest) -> QuerySet[HealthCheck]:
        return self.recent(super().get_queryset(request), request)


def report(request: HttpRequest, done: list[HealthCheck]) -> None:
    """One message per checked server: its verdict and state now."""
    if not done:
        messages.info(request, "Nothing to check (disabled servers are not checked).")
        return
    states = dict(
        Server.objects.filter(pk__in=[c.server_id for c in done]).values_list("pk", "health")
    )
    for check in done:
        state = Health(states.get(check.server_id, Health.UNKNOWN)).label.lower()
        if check.ok:
            era = f", {check.era}" if check.era else ""
            text = f"{check.server}: passed in {check.latency_ms or 0:.1f} ms{era}; now {state}."
            messages.success(request, text)
        else:
            text = f"{check.server}: failed ({check.error}); now {state}."
            messages.warning(request, text)


def with_check_now(
    model_admin: admin.ModelAdmin[Any], request: HttpRequest, actions: dict[str, Any]
) -> dict[str, Any]:
    """Add the "check now" action where the admin offers actions at all (not in popups)."""
    action = model_admin.get_action("check_now")
    if action is not None and IS_POPUP_VAR not in request.GET:
        actions["check_now"] = action
    return actions


admin.site.unregister(Server)


@admin.register(Server)
class ServerHealthAdmin(ServerAdmin):
    """The server admin, plus "check now" and the server's recent health history."""

    def get_inlines(self, request: HttpRequest, obj: Server | None) -> list[type[Any]]:
        return [*super().get_inlines(request, obj), FlipInline, HealthCheckInline]

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        return with_check_now(self, request, super().get_actions(request))

    @admin.action(description="Check selected servers now")
    def check_now(self, request: HttpRequest, queryset: QuerySet[Server]) -> None:
        servers = queryset.exclude(state=ServerState.DISABLED).select_related("pool")
        report(request, checks.check_servers(servers))


admin.site.unregister(Pool)


@admin.register(Pool)
class PoolHealthAdmin(PoolAdmin):
    """The pool admin, plus "check now" and the servers that are not up."""

    def get_list_display(self, request: HttpRequest) -> list[Any]:
        return [*super().get_list_display(request), "unhealthy"]

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        return with_check_now(self, request, super().get_actions(request))

    def get_queryset(self, request: HttpRequest) -> QuerySet[Pool]:
        not_up = Server.objects.exclude(health=Health.UP).exclude(state=ServerState.DISABLED)
        return (
            super()
            .get_queryset(request)
            .prefetch_related(Prefetch("servers", queryset=not_up, to_attr="not_up"))
        )

    @admin.display(description="not up")
    def unhealthy(self, pool: Pool) -> str:
        servers: list[Server] = getattr(pool, "not_up", [])
        return ", ".join(f"{s.name} ({s.health})" for s in servers) or "–"

    @admin.action(description="Check every server of the selected pools now")
    def check_now(self, request: HttpRequest, queryset: QuerySet[Pool]) -> None:
        servers = Server.objects.filter(pool__in=queryset).exclude(state=ServerState.DISABLED)
        report(request, checks.check_servers(servers.select_related("pool")))


@admin.register(HealthCheck)
class HealthCheckAdmin(_HealthCheckAdmin):
    """Every probe's result, newest first; written only by the checks."""

    list_display = ("at", "server", "ok", "latency_ms", "era", "tools_count", "short_error")
    list_filter = ("ok", "era", "server__pool")
    search_fields = ("server__name", "server__pool__slug", "error")
    list_select_related = ("server__pool",)
    date_hierarchy = "at"
    readonly_fields = (
        "server", "at", "ok", "latency_ms", "error", "era", "protocol_version", "tools_count",
        "tools_hash",
    )  # fmt: skip

    @admin.display(description="error")
    def short_error(self, check: HealthCheck) -> str:
        return Truncator(check.error).chars(80)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: HealthCheck | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: HealthCheck | None = None) -> bool:
        return False  # the scheduled prune keeps the table bounded


if not admin.site.is_registered(Flip):

    @admin.register(Flip)
    class FlipAdmin(_FlipAdmin):
        """When and why servers changed health, newest first."""

        list_display = ("at", "server", "old", "new", "source", "reason")
        list_filter = ("source", "new", "server__pool")
        search_fields = ("server__name", "server__pool__slug", "reason")
        list_select_related = ("server__pool",)
        date_hierarchy = "at"

        def has_add_permission(self, request: HttpRequest) -> bool:
            return False

        def has_change_permission(self, request: HttpRequest, obj: Flip | None = None) -> bool:
            return False

        def has_delete_permission(self, request: HttpRequest, obj: Flip | None = None) -> bool:
            return False
