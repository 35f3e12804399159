from django.apps import AppConfig


class ServersConfig(AppConfig):
    name = "servers"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from servers import secrets

        # A malformed MCPPOOL_SECRETS_KEY stops every process at start, not a call later.
        secrets.check_keys()
