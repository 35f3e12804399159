from django.apps import AppConfig


class BalancingConfig(AppConfig):
    name = "balancing"
    default_auto_field = "django.db.models.BigAutoField"
