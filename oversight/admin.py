from django.contrib import admin

from oversight import models


@admin.register(models.OwnershipGroup)
class OwnershipGroupAdmin(admin.ModelAdmin):
    list_display = ("organisation", "group", "note")
    search_fields = ("organisation__name", "group")
    autocomplete_fields = ["organisation"]


@admin.register(models.Alert)
class AlertAdmin(admin.ModelAdmin):
    """Read-only here: regulators review alerts through the API, so each step is audited."""

    list_display = ("id", "kind", "severity", "status", "organisation", "instrument", "created_at")
    list_filter = ("kind", "severity", "status")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
