from django.contrib import admin

from metering.models import ContractDelivery, Dispute, UsageEvent


@admin.register(ContractDelivery)
class ContractDeliveryAdmin(admin.ModelAdmin):
    """Read-only: delivery state changes only through metering services (the ledger must follow)."""

    list_display = ["contract", "status", "delivered_micro", "quantity_micro", "released_fen", "fee_fen", "refunded_fen", "delivery_ratio"]
    list_filter = ["status"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(UsageEvent)
class UsageEventAdmin(ContractDeliveryAdmin):
    list_display = ["event_id", "contract", "supplier_id", "started_at", "ended_at", "device_count", "units_micro", "credited_micro"]
    list_filter = []
    search_fields = ["event_id"]
    raw_id_fields = ["contract"]


@admin.register(Dispute)
class DisputeAdmin(ContractDeliveryAdmin):
    list_display = ["id", "contract", "status", "opened_by", "opened_at", "resolved_by", "resolved_at"]
    list_filter = ["status"]
