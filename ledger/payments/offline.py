"""Bank transfer, confirmed by an operator: the embedded default, and always available.

Nothing happens outside at request time. A buyer declares a top-up (with the bank reference of the
transfer) and an operator confirms it when the money shows on the platform's bank statement; a supplier
requests a payout and an operator marks it paid once the bank transfer has gone out (or failed). Refunds are
sent by the operator by bank and recorded here.
"""

from __future__ import annotations

from ledger.models import Payout, Provider, TopUp
from ledger.payments.base import CheckoutStarted, PaymentProvider


class OfflineProvider(PaymentProvider):
    name = Provider.OFFLINE
    pays_out_online = False
    confirms_top_ups = False

    def top_up_start(self, top_up: TopUp) -> CheckoutStarted:
        # The buyer's bank reference (if any) is already on the row; nothing to ask anyone.
        return CheckoutStarted(provider_reference=top_up.provider_reference)

    def payout_send(self, payout: Payout) -> str:
        raise AssertionError("offline payouts are marked paid by an operator")

    def refund_send(self, top_up: TopUp, *, amount_fen: int, key: str) -> str:
        return ""
