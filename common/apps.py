from django.apps import AppConfig
from django.db.models.signals import post_migrate, pre_migrate


def _refchecks_install(sender, using, **kwargs) -> None:
    from django.db import connections

    from common import refchecks

    refchecks.install(connections[using])


def _refchecks_uninstall(sender, using, **kwargs) -> None:
    from django.db import connections

    from common import refchecks

    if connections[using].vendor == "sqlite":  # it refuses to rename a rebuilt table while a trigger names it
        refchecks.uninstall(connections[using])


class CommonConfig(AppConfig):
    name = "common"
    verbose_name = "Common"

    def ready(self) -> None:
        # After every migrate, so that a migration rebuilding a table (SQLite does for most changes) cannot
        # leave its foreign keys unchecked (common.refchecks). Django sends post_migrate only for apps with
        # models, so on the exchange's behalf (once per migrate).
        from django.apps import apps

        exchange = apps.get_app_config("exchange")
        pre_migrate.connect(_refchecks_uninstall, sender=exchange, dispatch_uid="common.refchecks.pre")
        post_migrate.connect(_refchecks_install, sender=exchange, dispatch_uid="common.refchecks")
