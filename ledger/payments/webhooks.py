"""Stripe webhooks: verify the signature, store the event once under (provider, event id), then act.

The event row and whatever it causes are written in one transaction: if acting fails, nothing is stored and
Stripe's retry finds the event new. A replayed event id finds the row and does nothing. Money is credited
only for a succeeded payment whose amount and currency match the top-up; everything else is stored and
acknowledged.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction

from common.api import id_of
from ledger.models import Payout, Provider, ProviderEvent, TopUp
from ledger.payments.base import PaymentError
from ledger.payments.services import payout_reverse, top_up_credit, top_up_fail
from ledger.payments.stripe_provider import CURRENCY

log = logging.getLogger("ledger.payments")


class WebhookRejected(PaymentError):
    field = "detail"


def stripe_event_receive(*, payload: bytes, signature: str | None) -> tuple[ProviderEvent, bool]:
    """Verify and process one Stripe webhook delivery; returns (event, is_new). Raises WebhookRejected
    (nothing written) for a missing, wrong or stale signature or a body that is not an event."""
    secret = settings.STRIPE_WEBHOOK_SECRET
    if not secret:
        raise WebhookRejected("Stripe webhooks are off: STRIPE_WEBHOOK_SECRET is not set.")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WebhookRejected("The body is not UTF-8.") from exc
    tolerance = settings.STRIPE_WEBHOOK_TOLERANCE
    try:
        stripe.WebhookSignature.verify_header(text, signature, secret, tolerance)
    except stripe.SignatureVerificationError as exc:
        raise WebhookRejected(f"Bad Stripe-Signature: {exc.user_message or exc}") from exc
    # The library refuses old timestamps only; a timestamp far in the future is as suspect.
    timestamp = int(dict(part.split("=", 1) for part in (signature or "").split(",") if "=" in part).get("t", "0"))
    if timestamp > time.time() + tolerance:
        raise WebhookRejected("Bad Stripe-Signature: timestamp is in the future.")
    try:
        event = json.loads(text)
    except ValueError as exc:
        raise WebhookRejected("The body is not JSON.") from exc
    if not (isinstance(event, dict) and isinstance(event.get("id"), str) and isinstance(event.get("type"), str)
            and isinstance((event.get("data") or {}).get("object"), dict)):
        raise WebhookRejected("The body is not a Stripe event.")

    with transaction.atomic():
        try:
            with transaction.atomic():
                stored = ProviderEvent.objects.create(
                    provider=Provider.STRIPE, event_id=event["id"][:255], event_type=event["type"][:100], payload=event
                )
        except IntegrityError:
            return ProviderEvent.objects.get(provider=Provider.STRIPE, event_id=event["id"][:255]), False
        handler = HANDLERS.get(event["type"])
        if handler is not None:
            handler(event["data"]["object"])
    return stored, True


def _id(value: Any) -> str:
    """An id field that may be expanded into an object."""
    if isinstance(value, dict):
        return str(value.get("id") or "")
    return str(value or "")


def _top_up_for(obj: dict) -> TopUp | None:
    metadata = obj.get("metadata") or {}
    top_ups = TopUp.objects.filter(provider=Provider.STRIPE).select_related("organisation")
    top_up_id = id_of(str(metadata.get("top_up_id") or ""))
    if top_up_id:
        top_up = top_ups.filter(pk=top_up_id).first()
    elif obj.get("object") == "checkout.session":
        top_up = top_ups.filter(provider_reference=_id(obj.get("id"))).first() if obj.get("id") else None
    elif obj.get("object") == "payment_intent":
        top_up = top_ups.filter(payment_intent=_id(obj.get("id"))).first() if obj.get("id") else None
    else:
        top_up = None
    if top_up is None:
        log.warning("Stripe %s %s matches no top-up; stored and ignored.", obj.get("object"), obj.get("id"))
        return None
    organisation_id = str(metadata.get("organisation_id") or "")
    if organisation_id and organisation_id != str(top_up.organisation_id):
        log.error("Stripe %s %s names organisation %s but top-up %s belongs to %s; ignored.",
                  obj.get("object"), obj.get("id"), organisation_id, top_up.pk, top_up.organisation_id)
        return None
    return top_up


def _credit_if_matches(top_up: TopUp, *, amount: Any, currency: Any, payment_intent: str) -> None:
    if amount != top_up.amount_fen or str(currency or "").lower() != CURRENCY:
        # Never credit what was not paid: leave it to an operator, who sees the stored event.
        log.error("Stripe paid %s %s for top-up %s of %s fen; not credited.", amount, currency, top_up.pk, top_up.amount_fen)
        return
    try:
        top_up_credit(top_up=top_up, payment_intent=payment_intent)
    except PaymentError as exc:
        # A state we never expect a paid top-up to be in: store the event for an operator rather than make
        # Stripe retry for days.
        log.error("Stripe says top-up %s was paid, but it cannot be credited: %s", top_up.pk, exc)


def _session_completed(session: dict) -> None:
    top_up = _top_up_for(session)
    if top_up is None:
        return
    payment_intent = _id(session.get("payment_intent"))
    if session.get("payment_status") == "paid":
        _credit_if_matches(top_up, amount=session.get("amount_total"), currency=session.get("currency"), payment_intent=payment_intent)
    elif payment_intent and not top_up.payment_intent:
        # An asynchronous payment method: the money has not arrived yet; async_payment_succeeded will say so.
        TopUp.objects.filter(pk=top_up.pk, payment_intent="").update(payment_intent=payment_intent)


def _session_paid_later(session: dict) -> None:
    top_up = _top_up_for(session)
    if top_up is not None:
        _credit_if_matches(top_up, amount=session.get("amount_total"), currency=session.get("currency"),
                           payment_intent=_id(session.get("payment_intent")))


def _session_failed(session: dict) -> None:
    top_up = _top_up_for(session)
    if top_up is not None:
        top_up_fail(top_up=top_up)


def _payment_intent_succeeded(intent: dict) -> None:
    top_up = _top_up_for(intent)
    if top_up is not None:
        _credit_if_matches(top_up, amount=intent.get("amount_received"), currency=intent.get("currency"), payment_intent=_id(intent.get("id")))


def _transfer_reversed(transfer: dict) -> None:
    payouts = Payout.objects.filter(provider=Provider.STRIPE)
    payout_id = id_of(str((transfer.get("metadata") or {}).get("payout_id") or ""))
    payout = payouts.filter(pk=payout_id).first() if payout_id else payouts.filter(provider_reference=_id(transfer.get("id"))).first()
    if payout is None or payout.provider_reference != _id(transfer.get("id")):
        log.warning("Stripe transfer %s matches no payout; stored and ignored.", transfer.get("id"))
        return
    if transfer.get("reversed") or transfer.get("amount_reversed") == payout.amount_fen:
        payout_reverse(payout=payout, reason=f"Stripe transfer {payout.provider_reference} reversed")
    else:
        # A partial reversal: the money split between the supplier and the platform needs a person.
        log.error("Stripe transfer %s partly reversed (%s of %s fen); payout %s left for an operator.",
                  transfer.get("id"), transfer.get("amount_reversed"), payout.amount_fen, payout.pk)


HANDLERS: dict[str, Callable[[dict], None]] = {
    "checkout.session.completed": _session_completed,
    "checkout.session.async_payment_succeeded": _session_paid_later,
    "checkout.session.async_payment_failed": _session_failed,
    "checkout.session.expired": _session_failed,
    "payment_intent.succeeded": _payment_intent_succeeded,
    "transfer.reversed": _transfer_reversed,
}
