from django.apps import AppConfig


class PaymentsConfig(AppConfig):
    """No models (they live in `ledger`); installed so that the process says once which providers are on."""

    name = "ledger.payments"
    label = "ledger_payments"
    verbose_name = "Payments"

    def ready(self) -> None:
        from ledger.payments.base import announce

        announce()
