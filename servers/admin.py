"""The operator's admin: pools (servers and rules inline), servers, affinity rules, API keys.

Every write goes through `servers.services`, so each save commits one config change (one version
bump, one `config.changed`); a pool saved with inline changes is still one change.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db.models import (
    Count,
    Field,
    FloatField,
    ForeignKey,
    IntegerField,
    Q,
    QuerySet,
    URLField,
)
from django.forms import ModelChoiceField, ModelForm
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import conditional_escape, format_html
from django.utils.safestring import SafeString
from django.utils.text import Truncator, capfirst
from django.utils.timesince import timesince

from servers import configfile, secrets, services
from servers.choices import Health, ServerState
from servers.models import AffinityRule, ApiKey, Pool, Server

if TYPE_CHECKING:
    # django-stubs makes the admin classes generic; at run time they take no type arguments.
    _PoolAdmin = admin.ModelAdmin[Pool]
    _ServerAdmin = admin.ModelAdmin[Server]
    _AffinityRuleAdmin = admin.ModelAdmin[AffinityRule]
    _ApiKeyAdmin = admin.ModelAdmin[ApiKey]
    _ServerInline = admin.TabularInline[Server, Pool]
    _AffinityRuleInline = admin.TabularInline[AffinityRule, Pool]
    _ServerForm = ModelForm[Server]
else:
    _PoolAdmin = _ServerAdmin = _AffinityRuleAdmin = _ApiKeyAdmin = admin.ModelAdmin
    _ServerInline = _AffinityRuleInline = admin.TabularInline
    _ServerForm = ModelForm

# The product's name on every admin page, not Django's.
admin.site.site_header = "mcppool administration"
admin.site.site_title = "mcppool admin"
admin.site.index_title = "Pools, servers and API keys"
# The app list down the left costs a 1366 px screen a quarter of its width, which the server list
# and the pool page's server inline need; the breadcrumbs and the index page do the navigating.
admin.site.enable_nav_sidebar = False

HEALTH_COLOURS = {
    Health.UP: "#1b7f3b",
    Health.DOWN: "#c62828",
    Health.EJECTED: "#d84315",
    Health.RECOVERING: "#b28704",
    Health.UNKNOWN: "#6b6b6b",
}

# Fields the runtime and the health checks record; the operator reads them, never edits them.
SERVER_RECORDED = (
    "health_badge",
    "health_changed_at",
    "health_reason",
    "consecutive_ok",
    "consecutive_failed",
    "last_checked_at",
    "last_error",
    "ejections",
    "negotiated_era",
    "protocol_version",
    "tools_count",
    "tools_hash",
    "tools_differ",
    "created_at",
    "updated_at",
)


# What the operator types a number in, shown in the field's label.
SECONDS, PERCENT = "seconds", "%"
UNITS = {
    "acquire_timeout": SECONDS,
    "call_timeout": SECONDS,
    "check_interval": SECONDS,
    "check_timeout": SECONDS,
    "ejection_base": SECONDS,
    "ejection_cap": SECONDS,
    "slow_start_window": SECONDS,
    "retry_budget_percent": PERCENT,
    "max_ejection_percent": PERCENT,
    "panic_threshold": PERCENT,
    "rate_limit_per_minute": "calls per minute",
    "max_in_flight": "calls",
    "calls_per_session": "calls in flight",
}


def bounds(db_field: Field[Any, Any]) -> tuple[float | None, float | None]:
    """The narrowest range the model field's validators allow (None: no bound that side)."""
    lows = [v.limit_value for v in db_field.validators if isinstance(v, MinValueValidator)]
    highs = [v.limit_value for v in db_field.validators if isinstance(v, MaxValueValidator)]
    return (max(lows) if lows else None), (min(highs) if highs else None)


class OperatorFields:
    """Form fields as the operator should see them, on every admin page and inline.

    - Numbers take their bounds from the model's validators, the ones YAML apply and the REST API
      enforce through `full_clean()`: the browser's min/max and the form's message give the
      same range (a PositiveIntegerField alone would let 0 through to a model that wants ≥ 1).
    - A unit in the label where a number has one.
    - Model help texts are plain text: escaped, so "/mcp/<slug>/" shows as written (the admin
      renders help text as HTML).
    """

    def formfield_for_dbfield(
        self, db_field: Field[Any, Any], request: HttpRequest, **kwargs: Any
    ) -> forms.Field | None:
        if isinstance(db_field, IntegerField | FloatField) and not db_field.choices:
            low, high = bounds(db_field)
            if low is not None:
                kwargs.setdefault("min_value", low)
            if high is not None:
                kwargs.setdefault("max_value", high)
        formfield: forms.Field | None = super().formfield_for_dbfield(  # type: ignore[misc]
            db_field, request, **kwargs
        )
        if formfield is None:
            return None
        if db_field.name in UNITS:
            formfield.label = f"{capfirst(db_field.verbose_name)} ({UNITS[db_field.name]})"
        if formfield.help_text:
            formfield.help_text = conditional_escape(formfield.help_text)
        return formfield


# A URL typed without a scheme becomes https:// (Django 6's default, chosen now, not by upgrade).
URL_FORM_FIELD: Mapping[type[Field[Any, Any]], Mapping[str, Any]] = {
    URLField: {"assume_scheme": "https"}
}


def health_badge(server: Server) -> SafeString:
    colour = HEALTH_COLOURS.get(Health(server.health), HEALTH_COLOURS[Health.UNKNOWN])
    return format_html(
        '<span style="background:{};color:#fff;padding:1px 7px;border-radius:8px;'
        'font-weight:600" title="{}">{}</span>',
        colour,
        server.health_reason,
        server.get_health_display(),
    )


def _object_id(request: HttpRequest) -> int | None:
    """The id of the object a change page is about (None on an add page)."""
    match = request.resolver_match
    raw = match.kwargs.get("object_id") if match else None
    return int(raw) if isinstance(raw, str) and raw.isdigit() else None


_MASKED_VALUES_HELP = (
    "Shown masked. Keep a masked value to keep what is stored, type a new value to replace it, "
    "leave a name out to remove it. Stored encrypted; never shown again."
)


class ServerForm(_ServerForm):
    """A server's form, with its secret values masked: the operator can set or replace a secret
    without ever seeing the stored one."""

    secret_headers = forms.JSONField(required=False, help_text=_MASKED_VALUES_HELP)
    secret_env = forms.JSONField(required=False, help_text=_MASKED_VALUES_HELP)

    class Meta:
        model = Server
        # The admin adds the other fields (with its own widgets and overrides) to this form.
        fields = ("secret_headers", "secret_env")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in ("secret_headers", "secret_env"):
            self.initial[name] = secrets.masked(getattr(self.instance, name) or {})
        stored = [
            name
            for field in secrets.SECRET_FIELDS
            for name in (getattr(self.instance, field) or {})
        ]
        if self.instance.pk and stored:
            # Said before saving: a new target drops the stored secrets (`drop_on_new_target`).
            warning = (
                f"Changing the transport, URL, command, arguments or working directory drops the "
                f"stored secret values ({', '.join(sorted(stored))}) unless you type them again "
                f"in this same save."
            )
            for name in secrets.TARGET_FIELDS:
                if name in self.fields:
                    help_text = self.fields[name].help_text
                    self.fields[name].help_text = f"{help_text} {warning}".strip()

    def clean_secret_headers(self) -> dict[str, str]:
        return self._sealed("secret_headers")

    def clean_secret_env(self) -> dict[str, str]:
        return self._sealed("secret_env")

    def _sealed(self, name: str) -> dict[str, str]:
        """The typed values as the token map to store (the model field gets tokens only)."""
        values = self.cleaned_data.get(name) or {}
        if not isinstance(values, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in values.items()
        ):
            raise ValidationError('Give a mapping of names to values, e.g. {"Name": "value"}.')
        try:
            return secrets.seal(values, getattr(self.instance, name) or {})
        except (secrets.MaskedWithoutValue, ImproperlyConfigured) as exc:
            raise ValidationError(str(exc)) from None


class ThroughServices:
    """Admin saves and deletes go through the service functions: validation, one version bump
    and the config.changed event, exactly as the REST API and YAML apply do."""

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        services.save(obj)

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        services.delete(obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        services.delete_all(queryset)


def command_line(server: Server) -> str:
    """What a stdio server runs, arguments included, as a shell would read it."""
    return shlex.join([server.command, *server.args]) if server.command else ""


class ServerInline(OperatorFields, _ServerInline):
    model = Server
    fields = (
        "name",
        "transport",
        "url",
        "command",
        "arguments",
        "weight",
        "priority",
        "state",
        "health_badge",
    )
    readonly_fields = ("arguments", "health_badge")
    formfield_overrides = URL_FORM_FIELD  # inputs narrowed to fit 1366 px: admin/base_site.html
    extra = 0
    show_change_link = True  # headers, arguments and environment are on the server's own page

    @admin.display(description="arguments")
    def arguments(self, server: Server) -> str:
        return shlex.join(server.args) if server.args else "–"

    def formfield_for_dbfield(
        self, db_field: Field[Any, Any], request: HttpRequest, **kwargs: Any
    ) -> forms.Field | None:
        field = super().formfield_for_dbfield(db_field, request, **kwargs)
        if field is not None and db_field.name in secrets.TARGET_FIELDS:
            field.help_text = (
                "Changing it drops the server's stored secret values unless they are given "
                "again (on the server's own page, in the same save)."
            )
        return field

    @admin.display(description="health")
    def health_badge(self, server: Server) -> SafeString:
        return health_badge(server)


class AffinityRuleInline(OperatorFields, _AffinityRuleInline):
    model = AffinityRule
    fields = configfile.RULE_FIELDS
    extra = 0

    def formfield_for_foreignkey(
        self, db_field: ForeignKey[Any, Any], request: HttpRequest, **kwargs: Any
    ) -> ModelChoiceField[Any] | None:
        if db_field.name == "pin_server":
            # Only this pool's servers can be pinned; a new pool has none saved yet.
            pool_id = _object_id(request)
            servers = Server.objects.select_related("pool")
            kwargs["queryset"] = servers.filter(pool_id=pool_id) if pool_id else servers.none()
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


@admin.register(Pool)
class PoolAdmin(OperatorFields, _PoolAdmin):
    list_display = ("name", "slug", "strategy", "session_mode", "servers_up")
    list_filter = ("strategy", "session_mode")
    search_fields = ("name", "slug", "description")
    prepopulated_fields = {"slug": ("name",)}
    inlines = (ServerInline, AffinityRuleInline)
    fieldsets = (
        (None, {"fields": ("name", "slug", "description")}),
        (
            "Sessions",
            {
                "fields": (
                    "session_mode",
                    ("sessions_per_server", "calls_per_session"),
                    ("acquire_timeout", "call_timeout"),
                )
            },
        ),
        (
            "Retries",
            {"fields": ("retry_policy", ("retry_budget_percent", "retry_budget_min"))},
        ),
        (
            "Active checks",
            {
                "fields": (
                    ("check_interval", "check_timeout"),
                    "start_timeout",
                    ("fall", "rise"),
                )
            },
        ),
        (
            "Passive health (outlier detection)",
            {
                "fields": (
                    "consecutive_failures",
                    ("ejection_base", "ejection_cap"),
                    "max_ejection_percent",
                )
            },
        ),
        ("Balancing", {"fields": ("strategy", "panic_threshold", "slow_start_window")}),
        (
            "Admission",
            {
                "fields": (
                    "rate_limit_per_minute",
                    ("max_sticky_sessions", "max_sticky_sessions_per_key"),
                )
            },
        ),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Pool]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                server_count=Count("servers"),
                up_count=Count("servers", filter=Q(servers__health=Health.UP)),
            )
        )

    @admin.display(description="servers up", ordering="up_count")
    def servers_up(self, pool: Pool) -> str:
        return f"{getattr(pool, 'up_count', 0)}/{getattr(pool, 'server_count', 0)}"

    def save_model(self, request: HttpRequest, obj: Pool, form: Any, change: bool) -> None:
        # Saved in save_related together with the inline servers and rules: one config change.
        pass

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        pool = form.instance
        with services.config_change(f"{'change' if change else 'add'} pool {pool} (admin)"):
            pool.save()  # validated by the form's full_clean()
            form.save_m2m()
            for formset in formsets:
                self.save_formset(request, form, formset, change=change)

    def delete_model(self, request: HttpRequest, obj: Pool) -> None:
        services.delete(obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Pool]) -> None:
        services.delete_all(queryset)


@admin.register(Server)
class ServerAdmin(OperatorFields, ThroughServices, _ServerAdmin):
    # What on-call looks for first comes first: which server, is it up, since when, why not.
    list_display = (
        "name",
        "pool",
        "health_badge",
        "state",
        "checked",
        "short_error",
        "tools",
        "target",
        "weight",
        "priority",
    )
    list_display_links = ("name",)
    list_filter = ("pool", "state", "health", "transport", "priority")
    search_fields = ("name", "url", "command", "pool__name")
    list_select_related = ("pool",)
    actions = ("drain", "enable", "disable")
    readonly_fields = SERVER_RECORDED
    form = ServerForm
    formfield_overrides = URL_FORM_FIELD
    fieldsets = (
        (None, {"fields": ("pool", "name", "transport")}),
        ("Streamable HTTP", {"fields": ("url", "headers", "secret_headers")}),
        ("stdio", {"fields": ("command", "args", "env", "secret_env", "cwd")}),
        ("Balancing", {"fields": (("weight", "priority"), "state", "max_in_flight", "era")}),
        ("Recorded by health checks and the runtime", {"fields": SERVER_RECORDED}),
    )

    @admin.display(description="health", ordering="health")
    def health_badge(self, server: Server) -> SafeString:
        return health_badge(server)

    @admin.display(description="URL or command")
    def target(self, server: Server) -> str:
        return server.url or command_line(server)  # in full: arguments matter

    @admin.display(description="last checked", ordering="last_checked_at")
    def checked(self, server: Server) -> str:
        if server.last_checked_at is None:
            return "never"
        seconds = (timezone.now() - server.last_checked_at).total_seconds()
        if seconds < 60:
            return f"{max(0, int(seconds))} s ago"
        return f"{timesince(server.last_checked_at, depth=1)} ago"

    @admin.display(description="last error")
    def short_error(self, server: Server) -> SafeString | str:
        if not server.last_error:
            return "–"
        return format_html(
            '<span title="{}">{}</span>', server.last_error, Truncator(server.last_error).chars(50)
        )

    @admin.display(description="tools")
    def tools(self, server: Server) -> str | SafeString:
        if server.tools_count is None:
            return "–"
        if server.tools_differ:
            return format_html(
                '{} <span style="color:#d84315" title="{}">differs</span>',
                server.tools_count,
                "This server's tools differ from other servers of the pool.",
            )
        return str(server.tools_count)

    @admin.action(description="Drain selected servers (finish calls in flight, take no new ones)")
    def drain(self, request: HttpRequest, queryset: QuerySet[Server]) -> None:
        self._set_state(request, queryset, ServerState.DRAINING)

    @admin.action(description="Enable selected servers")
    def enable(self, request: HttpRequest, queryset: QuerySet[Server]) -> None:
        self._set_state(request, queryset, ServerState.ENABLED)

    @admin.action(description="Disable selected servers")
    def disable(self, request: HttpRequest, queryset: QuerySet[Server]) -> None:
        self._set_state(request, queryset, ServerState.DISABLED)

    def _set_state(
        self, request: HttpRequest, queryset: QuerySet[Server], state: ServerState
    ) -> None:
        servers = list(queryset)
        changed = services.set_server_state(servers, state)
        already = len(servers) - changed
        note = f" ({already} already {state.label.lower()})" if already else ""
        self.message_user(
            request,
            f"{changed} server{'' if changed == 1 else 's'} now {state.label.lower()}{note}.",
            messages.SUCCESS,
        )


@admin.register(AffinityRule)
class AffinityRuleAdmin(OperatorFields, ThroughServices, _AffinityRuleAdmin):
    list_display = (
        "pool",
        "order",
        "match_on",
        "header",
        "match_type",
        "pattern",
        "action",
        "pin_server_name",
        "enabled",
        "description",
    )
    list_display_links = ("pool", "order")
    list_filter = ("pool", "match_on", "action", "enabled")
    search_fields = ("pattern", "header", "description", "pool__name")
    list_select_related = ("pool", "pin_server")
    ordering = ("pool__name", "order", "id")

    @admin.display(description="pinned to", ordering="pin_server__name")
    def pin_server_name(self, rule: AffinityRule) -> str:
        return rule.pin_server.name if rule.pin_server else "–"

    def formfield_for_foreignkey(
        self, db_field: ForeignKey[Any, Any], request: HttpRequest, **kwargs: Any
    ) -> ModelChoiceField[Any] | None:
        if db_field.name == "pin_server":  # labelled pool/server: one query, not one per option
            kwargs["queryset"] = Server.objects.select_related("pool")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


@admin.register(ApiKey)
class ApiKeyAdmin(OperatorFields, _ApiKeyAdmin):
    """The secret exists only in the response that creates the key; the hash is never shown."""

    list_display = (
        "name",
        "prefix",
        "owner",
        "scope",
        "admin_reach",
        "rate_limit_per_minute",
        "expires_at",
        "status",
        "created_at",
    )
    list_filter = ("is_admin", "all_pools", ("revoked_at", admin.EmptyFieldListFilter))
    search_fields = ("name", "prefix", "owner__username")
    list_select_related = ("owner",)
    filter_horizontal = ("pools",)
    actions = ("revoke",)
    fields = (
        "name",
        "owner",
        "pools",
        "all_pools",
        "is_admin",
        "rate_limit_per_minute",
        "expires_at",
        "prefix",
        "revoked_at",
        "created_at",
    )
    readonly_fields = ("prefix", "revoked_at", "created_at")

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApiKey]:
        return super().get_queryset(request).prefetch_related("pools")

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> Any:
        # An add form has nothing recorded to show yet.
        return self.fields if obj else [f for f in self.fields if f not in self.readonly_fields]

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        return {"owner": request.user.pk, **super().get_changeform_initial_data(request)}

    @admin.display(description="pools")
    def scope(self, key: ApiKey) -> str:
        if key.all_pools:
            return "all pools"
        return ", ".join(pool.slug for pool in key.pools.all()) or "none"

    @admin.display(description="config through the API")
    def admin_reach(self, key: ApiKey) -> str:
        """What an admin key may configure, said plainly (docs/security.md)."""
        if not key.is_admin:
            return "none"
        return "every pool; may create pools" if key.all_pools else "its pools only"

    @admin.display(description="status")
    def status(self, key: ApiKey) -> str:
        if key.revoked_at:
            return "revoked"
        return "active" if key.is_active else "expired"

    @admin.action(description="Revoke selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = services.revoke_api_keys(queryset)
        self.message_user(
            request, f"{revoked} key{'' if revoked == 1 else 's'} revoked.", messages.SUCCESS
        )

    def save_model(
        self, request: HttpRequest, obj: ApiKey, form: ModelForm[ApiKey], change: bool
    ) -> None:
        pools = list(form.cleaned_data.get("pools", []))
        if change:
            services.update_api_key(obj, pools=pools)
            return
        key, secret = services.create_api_key(
            obj.name,
            pools=pools,
            all_pools=obj.all_pools,
            is_admin=obj.is_admin,
            rate_limit_per_minute=obj.rate_limit_per_minute,
            expires_at=obj.expires_at,
            owner_id=obj.owner_id,
        )
        # The admin goes on with `obj` (history entry, response): make it the saved key.
        obj.pk = key.pk
        obj.refresh_from_db()
        messages.success(
            request,
            f"API key “{key.name}” created. Its secret, shown only this once: {secret}",
        )

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        pass  # the pools were saved with the key, in the same config change

    def response_add(
        self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None
    ) -> HttpResponse:
        # Rendered here rather than redirected, so the secret goes out in this response only and
        # is never parked in the session or a messages cookie on the way to the next page.
        opts = self.opts
        context = {
            **self.admin_site.each_context(request),
            "title": f"API key “{obj.name}” created",
            "opts": opts,
            "key": obj,
            "change_url": reverse(
                f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk]
            ),
            "add_url": reverse(f"admin:{opts.app_label}_{opts.model_name}_add"),
            "changelist_url": reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"),
        }
        return TemplateResponse(request, "admin/servers/apikey/created.html", context)

    def delete_model(self, request: HttpRequest, obj: ApiKey) -> None:
        services.delete(obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        services.delete_all(queryset)
