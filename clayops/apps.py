from django.apps import AppConfig


class ClayopsConfig(AppConfig):
    name = "clayops"
    verbose_name = "clayops"
    default_auto_field = "django.db.models.BigAutoField"
