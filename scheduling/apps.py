from django.apps import AppConfig


class SchedulingConfig(AppConfig):
    name = "scheduling"
    verbose_name = "Compute scheduling"
    default_auto_field = "django.db.models.BigAutoField"
