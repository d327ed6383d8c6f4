from django.apps import AppConfig


class VouchersConfig(AppConfig):
    name = "vouchers"

    def ready(self) -> None:
        # Vouchers plug into settlement as a funding source; metering never imports vouchers.
        from metering import funding
        from vouchers.services import escrow_moves_fund

        funding.source_register("vouchers", escrow_moves_fund)
