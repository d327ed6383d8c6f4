"""Stripe: Checkout Sessions for top-ups, Connect transfers for payouts, Refunds on the payment intent.

Each call builds its own `StripeClient` from settings (no global `stripe.api_key`), so tests point
STRIPE_API_BASE at a local HTTP server. Every POST carries an idempotency key derived from our row (its id
and creation time, so a reset development database never collides with keys Stripe still remembers), so a
retried call never charges, pays or refunds twice.
"""

from __future__ import annotations

from typing import Any

import stripe
from django.conf import settings

from ledger.models import Payout, Provider, TopUp
from ledger.payments.base import CheckoutStarted, PaymentError, PaymentProvider, ProviderError

CURRENCY = "cny"


def stripe_client() -> stripe.StripeClient:
    base = {"api": settings.STRIPE_API_BASE} if settings.STRIPE_API_BASE else None
    return stripe.StripeClient(
        settings.STRIPE_SECRET_KEY, base_addresses=base, max_network_retries=settings.STRIPE_MAX_NETWORK_RETRIES
    )


def _row_key(kind: str, row: TopUp | Payout) -> str:
    return f"suanli-{kind}-{row.pk}-{row.created_at:%Y%m%d%H%M%S%f}"


def _error(exc: stripe.StripeError, action: str) -> ProviderError:
    """Translate a Stripe error. Connection errors and 5xx leave the outcome unknown (Stripe may have acted);
    any other error response means Stripe did nothing."""
    message = f"Stripe could not {action}: {exc.user_message or type(exc).__name__}"
    if isinstance(exc, stripe.APIConnectionError) or (exc.http_status or 0) >= 500:
        return ProviderError(message + " (outcome unknown: retry with the same Idempotency-Key)", outcome_known=False)
    if isinstance(exc, stripe.InvalidRequestError | stripe.CardError):
        # The request itself was refused (e.g. an amount below Stripe's minimum): the client can fix it.
        param = getattr(exc, "param", None) or ""
        return ProviderError(message, field="amount" if param.rstrip("]").endswith("amount") else "provider", status_code=400)
    return ProviderError(message)


class StripeProvider(PaymentProvider):
    name = Provider.STRIPE
    pays_out_online = True
    confirms_top_ups = True

    def top_up_start(self, top_up: TopUp) -> CheckoutStarted:
        metadata = {"top_up_id": str(top_up.pk), "organisation_id": str(top_up.organisation_id)}
        params: dict[str, Any] = {
            "mode": "payment",
            "client_reference_id": f"topup-{top_up.pk}",
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": CURRENCY,
                        "unit_amount": top_up.amount_fen,
                        "product_data": {"name": "Suanli wallet top-up"},
                    },
                }
            ],
            "metadata": metadata,
            # The payment intent carries the same metadata, so payment_intent.* events find the top-up too.
            "payment_intent_data": {"metadata": metadata},
            "success_url": settings.STRIPE_CHECKOUT_SUCCESS_URL,
            "cancel_url": settings.STRIPE_CHECKOUT_CANCEL_URL,
        }
        try:
            session = stripe_client().v1.checkout.sessions.create(
                params, options={"idempotency_key": _row_key("topup", top_up) + "-checkout"}  # type: ignore[arg-type]
            )
        except stripe.StripeError as exc:
            raise _error(exc, "start the checkout") from exc
        data = session.to_dict()
        payment_intent = data.get("payment_intent") or ""
        if isinstance(payment_intent, dict):  # expanded
            payment_intent = payment_intent.get("id", "")
        return CheckoutStarted(provider_reference=data["id"], checkout_url=data.get("url") or "", payment_intent=payment_intent)

    def payout_send(self, payout: Payout) -> str:
        params: dict[str, Any] = {
            "amount": payout.amount_fen,
            "currency": CURRENCY,
            "destination": payout.destination,
            "transfer_group": f"payout-{payout.pk}",
            "metadata": {"payout_id": str(payout.pk), "organisation_id": str(payout.organisation_id)},
        }
        try:
            transfer = stripe_client().v1.transfers.create(
                params, options={"idempotency_key": _row_key("payout", payout) + "-transfer"}  # type: ignore[arg-type]
            )
        except stripe.StripeError as exc:
            raise _error(exc, "send the payout") from exc
        return transfer.id

    def refund_check(self, top_up: TopUp) -> None:
        if not top_up.payment_intent:
            raise PaymentError("Stripe has not told us this top-up's payment intent; it cannot be refunded yet.", field="provider")

    def refund_send(self, top_up: TopUp, *, amount_fen: int, key: str) -> str:
        params: dict[str, Any] = {
            "payment_intent": top_up.payment_intent,
            "amount": amount_fen,
            "metadata": {"top_up_id": str(top_up.pk), "organisation_id": str(top_up.organisation_id)},
        }
        try:
            refund = stripe_client().v1.refunds.create(
                params, options={"idempotency_key": _row_key("topup", top_up) + f"-refund-{key}"}  # type: ignore[arg-type]
            )
        except stripe.StripeError as exc:
            raise _error(exc, "refund the payment") from exc
        return refund.id
