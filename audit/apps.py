from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = "Audit trail"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from audit import changes, schedule, writer
        from balancing.audit import trail

        trail.register(writer.database_sink())
        changes.connect()
        schedule.connect(self)
