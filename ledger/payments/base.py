"""The payment provider interface: how money gets in (top-ups), out (payouts) and back (refunds).

A provider only talks to the outside world; it never touches the ledger. The services in
`ledger.payments.services` create our rows, call the provider outside any database transaction, and then
post the ledger entries, so a provider failure never leaves a half-written movement behind.

Two providers exist: Stripe (on only when STRIPE_SECRET_KEY is set) and the offline provider (bank
transfer confirmed by an operator), which is always available and is the default when Stripe is off.
"""

from __future__ import annotations

import hashlib
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings

from common.errors import ServiceError
from ledger.models import Provider

if TYPE_CHECKING:
    from ledger.models import Payout, TopUp

log = logging.getLogger("ledger.payments")


class PaymentError(ServiceError):
    """A refused payment request (bad state, unavailable provider); the client can act on the message."""

    field = "non_field_errors"


class ProviderError(PaymentError):
    """The provider refused or failed a call. `outcome_known` is False when we cannot tell whether the
    provider acted (a timeout, a 5xx): the caller then keeps its reservation and the client retries with
    the same Idempotency-Key, which the provider answers from its own idempotency store."""

    status_code = 502
    field = "provider"

    def __init__(self, message: str, *, outcome_known: bool = True, field: str | None = None, status_code: int | None = None):
        super().__init__(message, field=field, status_code=status_code)
        self.outcome_known = outcome_known
        self.extra: dict[str, object] = {}  # e.g. {"top_up": 12}: the row the client's retry will find

    @property
    def detail(self) -> dict:  # type: ignore[override]
        return {**super().detail, **self.extra}


@dataclass(frozen=True)
class CheckoutStarted:
    """What a provider tells the buyer to do next to pay a top-up."""

    provider_reference: str = ""  # Checkout Session id (Stripe); empty offline
    checkout_url: str = ""
    payment_intent: str = ""


class PaymentProvider(ABC):
    name: str
    # True when the provider pays out at request time; False when an operator marks payouts paid.
    pays_out_online: bool
    # True when the provider confirms top-ups itself (webhooks); False when an operator confirms them.
    confirms_top_ups: bool

    @abstractmethod
    def top_up_start(self, top_up: TopUp) -> CheckoutStarted:
        """Ask the provider to collect `top_up.amount_fen`. Raises ProviderError."""

    @abstractmethod
    def payout_send(self, payout: Payout) -> str:
        """Send the money; returns the provider's reference. Only called when `pays_out_online`."""

    def refund_check(self, top_up: TopUp) -> None:
        """Raise PaymentError if this top-up cannot be refunded through the provider (checked before any
        money is reserved). Nothing to check by default."""
        return None

    @abstractmethod
    def refund_send(self, top_up: TopUp, *, amount_fen: int, key: str) -> str:
        """Return part or all of a succeeded top-up to the payer; returns the provider's reference.
        `key` is stable across retries of the same refund."""


def stripe_enabled() -> bool:
    return bool(settings.STRIPE_SECRET_KEY)


def provider_default_name() -> str:
    return Provider.STRIPE if stripe_enabled() else Provider.OFFLINE


def provider_get(name: str | None = None) -> PaymentProvider:
    """The provider called `name` (default: Stripe when configured, else offline). A provider that is not
    configured is refused with a field error, not silently replaced."""
    name = name or provider_default_name()
    if name == Provider.STRIPE:
        if not stripe_enabled():
            raise PaymentError("Stripe is not configured on this exchange; pay by bank transfer (offline).", field="provider")
        from ledger.payments.stripe_provider import StripeProvider

        return StripeProvider()
    if name == Provider.OFFLINE:
        from ledger.payments.offline import OfflineProvider

        return OfflineProvider()
    raise PaymentError(f"Unknown payment provider {name!r}.", field="provider")


def key_digest(key: str, length: int = 24) -> str:
    """A short, fixed-length stand-in for a client's idempotency key inside our own keys and references
    (which have length limits)."""
    return hashlib.sha256(key.encode()).hexdigest()[:length]


_announced = False


def announce() -> None:
    """Say once per process which payment providers are on (STYLE: an integration that is not configured is
    off, and says so once)."""
    global _announced
    if _announced:
        return
    _announced = True
    if stripe_enabled():
        webhooks = "webhooks verified" if settings.STRIPE_WEBHOOK_SECRET else "STRIPE_WEBHOOK_SECRET unset: webhooks refused"
        log.info("Payments: Stripe on (default provider; %s); bank transfer (offline) also accepted.", webhooks)
    else:
        log.info("Payments: Stripe off (STRIPE_SECRET_KEY unset); top-ups and payouts use bank transfer (offline), confirmed by an operator.")
