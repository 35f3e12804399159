"""Admin pages for issuers, grants, server identity forwarding and per-user secrets; every save
goes through the service functions (one config change each), as in `servers.admin`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest

from servers import secrets
from servers.admin import ThroughServices
from servers.identity import services as identity_services
from servers.identity.models import AccessGrant, ServerIdentity, TrustedIssuer, UserSecret

if TYPE_CHECKING:
    _IssuerAdmin = admin.ModelAdmin[TrustedIssuer]
    _GrantAdmin = admin.ModelAdmin[AccessGrant]
    _IdentityAdmin = admin.ModelAdmin[ServerIdentity]
    _SecretAdmin = admin.ModelAdmin[UserSecret]
    _SecretForm = forms.ModelForm[UserSecret]
else:
    _IssuerAdmin = _GrantAdmin = _IdentityAdmin = _SecretAdmin = admin.ModelAdmin
    _SecretForm = forms.ModelForm


@admin.register(TrustedIssuer)
class TrustedIssuerAdmin(ThroughServices, _IssuerAdmin):
    list_display = ("name", "issuer", "algorithms", "enabled")
    list_filter = ("enabled",)
    search_fields = ("name", "issuer")


@admin.register(AccessGrant)
class AccessGrantAdmin(ThroughServices, _GrantAdmin):
    list_display = ("__str__", "allow_tools", "deny_tools", "tool_rate_limits")
    list_filter = ("issuer", "pool")
    list_select_related = ("api_key", "issuer", "pool")
    fieldsets = (
        ("Who", {"fields": ("api_key", "issuer", "claim", "value")}),
        ("Where", {"fields": ("pool",)}),
        ("What", {"fields": ("allow_tools", "deny_tools", "tool_rate_limits")}),
    )


@admin.register(ServerIdentity)
class ServerIdentityAdmin(ThroughServices, _IdentityAdmin):
    list_display = ("server", "identity_header", "identity_claim", "secret_header")
    list_select_related = ("server", "server__pool")


class UserSecretForm(_SecretForm):
    value = forms.CharField(
        widget=forms.PasswordInput(render_value=False),
        help_text="Stored encrypted; never shown again. Sent upstream in the server's secret "
        "header for this caller only.",
    )

    class Meta:
        model = UserSecret
        fields = ("server", "issuer", "subject")


@admin.register(UserSecret)
class UserSecretAdmin(ThroughServices, _SecretAdmin):
    form = UserSecretForm
    list_display = ("subject", "issuer", "server", "masked")
    list_select_related = ("server", "issuer")
    search_fields = ("subject",)

    @admin.display(description="secret")
    def masked(self, row: UserSecret) -> str:
        return secrets.masked({"v": row.secret})["v"]

    def save_model(self, request: HttpRequest, obj: UserSecret, form: Any, change: bool) -> None:
        saved = identity_services.set_user_secret(
            obj.server, obj.subject, form.cleaned_data["value"], issuer=obj.issuer
        )
        obj.pk = saved.pk
