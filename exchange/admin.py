"""Operators' risk controls in the Django admin. Every change goes through exchange.risk, so the matchers
hear of it at once and the audit log records it (the admin's own log entries are chained too)."""

from django.contrib import admin, messages
from django.utils import timezone

from exchange import risk
from exchange.models import KillSwitch, RiskLimit


def _operator(request) -> bool:
    return bool(request.user.is_active and (request.user.is_superuser or getattr(request.user, "is_operator", False)))


@admin.register(RiskLimit)
class RiskLimitAdmin(admin.ModelAdmin):
    list_display = ("organisation", "max_open_orders", "max_open_notional_fen", "max_order_notional_fen", "order_rate", "updated_by", "updated_at")
    search_fields = ("organisation__name",)
    autocomplete_fields = ["organisation"]
    readonly_fields = ("updated_by", "updated_at")
    fields = ("organisation", "max_open_orders", "max_open_notional_fen", "max_order_notional_fen", "order_rate", "note", "updated_by", "updated_at")

    def has_change_permission(self, request, obj=None):
        return _operator(request)

    def has_add_permission(self, request):
        return _operator(request)

    def has_delete_permission(self, request, obj=None):
        return _operator(request)

    def save_model(self, request, obj, form, change):
        obj.updated_by = request.user
        super().save_model(request, obj, form, change)

    def response_change(self, request, obj):
        self._sync(request)
        return super().response_change(request, obj)

    def response_add(self, request, obj, post_url_continue=None):
        self._sync(request)
        return super().response_add(request, obj, post_url_continue)

    def delete_model(self, request, obj):
        super().delete_model(request, obj)
        self._sync(request)

    def _sync(self, request) -> None:
        risk.caches_clear()
        if not risk.matchers_sync().confirmed:
            messages.warning(request, "A matcher did not answer; it picks the change up within a second.")


@admin.register(KillSwitch)
class KillSwitchAdmin(admin.ModelAdmin):
    """Pull with "Add"; release with the action (a switch is never edited or deleted: it is the record)."""

    list_display = ("id", "scope", "organisation", "instrument", "reason", "pulled_by", "pulled_at", "released_at", "released_by")
    list_filter = ("scope", ("released_at", admin.EmptyFieldListFilter))
    fields = ("scope", "organisation", "instrument", "reason")
    autocomplete_fields = ["organisation"]
    raw_id_fields = ["instrument"]
    actions = ["release"]

    def has_add_permission(self, request):
        return _operator(request)

    def has_change_permission(self, request, obj=None):
        return _operator(request) and obj is None  # the list and its action; one switch is read-only

    def has_view_permission(self, request, obj=None):
        return _operator(request) or getattr(request.user, "is_regulator", False)

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        switch, created, sync = risk.kill_switch_pull(user=request.user, scope=obj.scope, reason=obj.reason,
                                                      organisation=obj.organisation, instrument=obj.instrument)
        obj.pk, obj.pulled_by, obj.pulled_at = switch.pk, switch.pulled_by, switch.pulled_at
        note = f"{sync.cancelled} resting orders cancelled." if sync.confirmed else "A matcher did not answer; it applies the switch within a second."
        messages.info(request, ("Kill switch pulled. " if created else "That switch was already active. ") + note)

    def log_addition(self, request, obj, message):
        return None  # kill_switch_pull records it (with the scope and reason)

    @admin.action(description="Release the selected kill switches")
    def release(self, request, queryset):
        done = 0
        for switch in queryset.filter(released_at__isnull=True):
            risk.kill_switch_release(user=request.user, switch=switch, reason=f"released in the admin at {timezone.now():%Y-%m-%d %H:%M:%S}")
            done += 1
        messages.info(request, f"{done} kill switches released.")
