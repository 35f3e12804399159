import os

from django.apps import AppConfig


class BalancingConfig(AppConfig):
    name = "balancing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # OpenTelemetry's API is loaded at start in every process (web, worker, commands). Found
        # by bisecting, not yet explained: when a management command loaded it only later, config
        # events it published after Redis restarted never reached a web process
        # (tests/reliability/test_redis_restart.py). It is light (no mcp SDK, no aiohttp).
        from balancing.engine import tracing  # noqa: F401

        # Tracing from OTEL_*: a variable it cannot honour stops every process at start (web,
        # worker, manage.py), not a request later. Only when some OTEL_* is set: the check loads
        # the data plane, which a plain `mcppool` command must not pay for (tests/test_cli.py);
        # without them the observer configures itself on first use.
        if any(name.startswith("OTEL_") for name in os.environ):
            from balancing import observe

            observe.configure_from_environment()
