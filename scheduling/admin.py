from django.contrib import admin

from scheduling.models import Demand, DemandChild


class DemandChildInline(admin.TabularInline):
    model = DemandChild
    extra = 0
    readonly_fields = ["round", "index", "instrument", "client_order_id", "order", "planned_lots", "lots", "limit_fen_per_lot", "status", "filled_lots", "filled_cost_fen", "note"]


@admin.register(Demand)
class DemandAdmin(admin.ModelAdmin):
    list_display = ["id", "organisation", "client_demand_id", "quantity", "objective", "status", "created_at"]
    list_filter = ["status", "objective"]
    inlines = [DemandChildInline]
