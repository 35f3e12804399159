"""Health in the admin: the check history (read-only), "check now" (queued), a server's history.

`servers` may not import `monitoring`, so the health additions to the server and pool admins are
made here, by replacing their registrations with subclasses (`admin.site.unregister` + `register`,
public API). A subclass keeps everything `servers.admin` defines, reads as one class with its
additions in plain sight, and does not depend on the admin site's private registry. This module
is imported after `servers.admin` (admin autodiscovery follows INSTALLED_APPS order).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.contrib import admin, messages
from django.contrib.admin.options import IS_POPUP_VAR
from django.db.models import Prefetch, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.text import Truncator

from monitoring.models import HealthCheck
from servers.admin import PoolAdmin, ServerAdmin
from servers.choices import Health, ServerState
from servers.models import Flip, Pool, Server

if TYPE_CHECKING:
    _HealthCheckAdmin = admin.ModelAdmin[HealthCheck]
    _FlipAdmin = admin.ModelAdmin[Flip]
else:
    _HealthCheckAdmin = _FlipAdmin = admin.ModelAdmin

# How much history a server's page shows; the full history is on the HealthCheck and Flip lists.
RECENT = 20
HISTORY = ("recent_flips", "recent_checks")


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> SafeString:
    """A small read-only table for a change page (escaped cell by cell)."""
    head = format_html_join("", "<th>{}</th>", ((h,) for h in headers))
    body = format_html_join(
        "",
        "<tr>{}</tr>",
        ((format_html_join("", "<td>{}</td>", ((c,) for c in row)),) for row in rows),
    )
    return format_html("<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>", head, body)


def queue_checks(request: HttpRequest, servers: QuerySet[Server]) -> None:
    """Queue a check of these servers on a worker and say where the results will show.

    The page never waits for a probe (a hung server used to hold it for the whole timeout): the
    results are written like any check and pushed to the pools' dashboard pages as they arrive.
    """
    chosen = list(servers.exclude(state=ServerState.DISABLED).select_related("pool"))
    if not chosen:
        messages.info(request, "Nothing to check (disabled servers are not checked).")
        return
    # Imported here, not at the top: the tasks pull in the checks, the engine's transports and
    # the mcp SDK (over a second of CPU), which every `mcppool` command would pay at start-up.
    from monitoring import tasks

    tasks.check_now.delay([s.pk for s in chosen])
    pools = sorted({s.pool.slug: s.pool for s in chosen}.values(), key=lambda p: p.slug)
    pages = ((reverse("dashboard:pool", args=[p.slug]), p.name) for p in pools)
    links = format_html_join(", ", '<a href="{}">{}</a>', pages)
    names = ", ".join(str(s) for s in chosen)
    text = "Check queued for {}: results appear live on the dashboard ({})."
    messages.info(request, format_html(text, names, links))


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
    """The server admin, plus "check now" and the server's recent health history.

    The history is shown as read-only fields, not inlines: an inline adds a formset whose
    management form every POST of the server form would then have to carry.
    """

    def get_fieldsets(self, request: HttpRequest, obj: Server | None = None) -> Any:
        fieldsets = list(super().get_fieldsets(request, obj))
        if obj is None:
            return fieldsets
        return [*fieldsets, (f"Health history (latest {RECENT})", {"fields": HISTORY})]

    def get_readonly_fields(self, request: HttpRequest, obj: Server | None = None) -> Any:
        return (*super().get_readonly_fields(request, obj), *HISTORY)

    @admin.display(description="health changes")
    def recent_flips(self, server: Server) -> SafeString | str:
        flips = Flip.objects.filter(server=server)[:RECENT]
        rows = [(f.at, f.old, f.new, f.get_source_display(), f.reason) for f in flips]
        return _table(("at", "from", "to", "by", "why"), rows) if rows else "none yet"

    @admin.display(description="health checks")
    def recent_checks(self, server: Server) -> SafeString | str:
        done = HealthCheck.objects.filter(server=server)[:RECENT]
        rows = [
            (
                c.at,
                "ok" if c.ok else "failed",
                f"{c.latency_ms:.1f} ms" if c.latency_ms is not None else "–",
                c.era or "–",
                c.tools_count if c.tools_count is not None else "–",
                Truncator(c.error).chars(120),
            )
            for c in done
        ]
        return (
            _table(("at", "result", "latency", "era", "tools", "error"), rows)
            if rows
            else "none yet"
        )

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        return with_check_now(self, request, super().get_actions(request))

    @admin.action(description="Check selected servers now")
    def check_now(self, request: HttpRequest, queryset: QuerySet[Server]) -> None:
        queue_checks(request, queryset)


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
        queue_checks(request, Server.objects.filter(pool__in=queryset))


@admin.register(HealthCheck)
class HealthCheckAdmin(_HealthCheckAdmin):
    """Every probe's result, newest first; written only by the checks."""

    list_display = ("at", "server", "ok", "latency", "era", "tools_count", "short_error")
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

    @admin.display(description="latency (ms)", ordering="latency_ms")
    def latency(self, check: HealthCheck) -> str:
        return "–" if check.latency_ms is None else f"{check.latency_ms:.1f}"

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


def _superuser_only(model_admin: type[admin.ModelAdmin[Any]]) -> type[admin.ModelAdmin[Any]]:
    """The same admin, off the app list, and open to superusers only."""

    def allowed(self: admin.ModelAdmin[Any], request: HttpRequest, *args: Any) -> bool:
        return bool(request.user.is_active and request.user.is_superuser)

    def hidden(self: admin.ModelAdmin[Any], request: HttpRequest) -> bool:
        return False

    return type(
        model_admin.__name__,
        (model_admin,),
        {
            "has_module_permission": hidden,
            "has_view_permission": allowed,
            "has_add_permission": allowed,
            "has_change_permission": allowed,
            "has_delete_permission": allowed,
        },
    )


# django-celery-beat's models (Clocked, Crontabs, Intervals, Periodic tasks, Solar events) are how
# the pools' check schedules are stored (monitoring/schedules.py keeps them in step with each
# pool); an operator changes a pool, not these. Off the app list; superusers reach them from the
# "Advanced" link on the admin index (templates/admin/index.html).
for _model in apps.get_app_config("django_celery_beat").get_models():
    if admin.site.is_registered(_model):
        _beat_admin = type(admin.site.get_model_admin(_model))
        admin.site.unregister(_model)
        admin.site.register(_model, _superuser_only(_beat_admin))
