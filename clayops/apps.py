from django.apps import AppConfig


class ClayopsConfig(AppConfig):
    name = "clayops"
    verbose_name = "clayops"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from axes.signals import user_locked_out

        user_locked_out.connect(_audit_lockout, dispatch_uid="clayops-audit-lockout")


def _audit_lockout(sender, request=None, username=None, ip_address=None, **kwargs) -> None:
    """A login was locked out by django-axes: one audit entry, for the operators to see."""
    from .models import AuditEntry

    AuditEntry.objects.create(
        action="login_locked_out",
        target=f"user:{(username or '')[:100]}",
        detail={"ip_address": ip_address or ""},
    )
