from django.apps import AppConfig


class BalancingConfig(AppConfig):
    name = "balancing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from balancing import observe

        # Tracing from OTEL_*: a variable it cannot honour stops every process at start (web,
        # worker, manage.py), not a request later.
        observe.configure_from_environment()
