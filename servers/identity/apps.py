from django.apps import AppConfig


class IdentityConfig(AppConfig):
    """Sign-in with an identity provider, per-tool grants and per-user upstream credentials."""

    name = "servers.identity"
    label = "identity"
    verbose_name = "Identity and tool access"
    default_auto_field = "django.db.models.BigAutoField"
