from django.contrib import admin

from vouchers.models import Application, OrganisationProfile, Programme, Redemption, Voucher


class ReadOnly(admin.ModelAdmin):
    """Read-only: voucher state changes only through vouchers.services (the ledger must follow)."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Programme)
class ProgrammeAdmin(ReadOnly):
    list_display = ["code", "name", "rate_bps", "domestic_rate_bps", "startup_rate_bps", "org_cap_per_year_fen", "valid_from", "valid_until"]


@admin.register(Application)
class ApplicationAdmin(ReadOnly):
    list_display = ["pk", "programme", "organisation", "requested_fen", "eligible", "status", "approved_fen", "decided_at"]
    list_filter = ["status", "eligible", "programme"]


@admin.register(Voucher)
class VoucherAdmin(ReadOnly):
    list_display = ["pk", "programme", "organisation", "amount_fen", "status", "issued_at", "expires_at", "returned_fen"]
    list_filter = ["status", "programme"]


@admin.register(Redemption)
class RedemptionAdmin(ReadOnly):
    list_display = ["contract", "voucher", "status", "reason", "rate_bps", "committed_fen", "paid_fen", "released_fen"]
    list_filter = ["status", "reason"]


@admin.register(OrganisationProfile)
class OrganisationProfileAdmin(ReadOnly):
    list_display = ["organisation", "group_name", "industry", "updated_at"]
