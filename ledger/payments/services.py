"""Payments in and out of the wallet. These services never write balances: they post through the ledger
(`transfer`, `hold_place`, `hold_capture`, `hold_release`), each under a key derived from our row, so every
movement happens at most once however often a call, a webhook or an operator's click is repeated.

Money flows (the clearing account is platform `provider_clearing` named after the provider):
- top-up credited:  clearing -> available             key topup:{id}:credit          (once per top-up)
- payout requested: available -> held (a hold)        reference payout:{org}:{key digest}
- payout paid:      held -> clearing                  key payout:{id}:paid
- payout failed:    held -> available                 key payout:{id}:release
- refund:           available -> held -> clearing     key topup:{id}:refund:{key digest}

Calls to a provider (Stripe) are made outside database transactions: the row is stored first (pending, or
with the funds held), then the provider is called, then the outcome is recorded. A refused call releases
what was reserved; a call whose outcome is unknown (timeout, 5xx) keeps the reservation so that a retry with
the same Idempotency-Key resumes it, and the provider's own idempotency key makes that retry harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from django.db import IntegrityError, models, transaction
from django.utils import timezone

from common.money import format_cny
from ledger.models import (
    Account,
    AccountKind,
    EntryKind,
    Hold,
    HoldStatus,
    Payout,
    PayoutStatus,
    Provider,
    TopUp,
    TopUpStatus,
)
from ledger.payments.base import PaymentError, PaymentProvider, ProviderError, key_digest, provider_get
from ledger.services import (
    IdempotencyConflict,
    account_for,
    hold_capture,
    hold_place,
    hold_release,
    platform_account,
    transfer,
)
from marketplace.models import Organisation, User

log = logging.getLogger("ledger.payments")
M = TypeVar("M", bound=models.Model)


def clearing_account(provider: str) -> Account:
    return platform_account(kind=AccountKind.PROVIDER_CLEARING, name=provider)


def _check_amount(amount_fen: int) -> None:
    if not isinstance(amount_fen, int) or isinstance(amount_fen, bool) or amount_fen <= 0:
        raise PaymentError("The amount must be a positive number of fen.", field="amount")


def _check_key(key: str) -> None:
    if not key or len(key) > 200:
        raise PaymentError("An idempotency key of 1 to 200 characters is required.", field="idempotency_key")


def _get_or_create_once(find: Callable[[], M | None], same: Callable[[M], bool], create: Callable[[], M]) -> tuple[M, bool]:
    """The row stored under an idempotency key, or a new one. The same key with a different request is a
    conflict. A concurrent creator that wins the unique constraint is answered as a replay."""
    for attempt in range(2):
        try:
            with transaction.atomic():
                existing = find()
                if existing is not None:
                    if not same(existing):
                        raise IdempotencyConflict("This Idempotency-Key was already used for a different request.")
                    return existing, False
                return create(), True
        except IntegrityError:
            if attempt:
                raise
    raise AssertionError("unreachable")


def _lock(model: type[M], pk: int) -> M:
    return model.objects.select_for_update().get(pk=pk)


# --- Top-ups ---------------------------------------------------------------------------------------------

def top_up_create(
    *,
    organisation: Organisation,
    amount_fen: int,
    idempotency_key: str,
    provider: str | None = None,
    bank_reference: str = "",
    requested_by: User | None = None,
) -> tuple[TopUp, bool]:
    """Record a top-up as pending and start the payment with the provider; credits nothing (the wallet is
    credited only by `top_up_credit`, when the provider or an operator confirms the money arrived).
    Idempotent on (organisation, idempotency_key); returns (top-up, created)."""
    _check_amount(amount_fen)
    _check_key(idempotency_key)
    payments = provider_get(provider)
    if bank_reference and payments.confirms_top_ups:
        raise PaymentError(f"A bank reference is only for bank transfers, not {payments.name}.", field="bank_reference")
    top_up, created = _get_or_create_once(
        find=lambda: TopUp.objects.filter(organisation=organisation, idempotency_key=idempotency_key).first(),
        same=lambda t: (t.amount_fen, t.provider) == (amount_fen, payments.name)
        and (payments.confirms_top_ups or t.provider_reference == bank_reference),
        create=lambda: TopUp.objects.create(
            organisation=organisation, provider=payments.name, amount_fen=amount_fen, idempotency_key=idempotency_key,
            provider_reference=bank_reference, requested_by=requested_by,
        ),
    )
    # A pending online top-up without a checkout is new, or one whose start crashed or timed out: (re)start
    # it; the provider's idempotency key returns the same checkout if the first call did reach it.
    if payments.confirms_top_ups and top_up.status == TopUpStatus.PENDING and not top_up.provider_reference:
        _top_up_start(top_up, payments)
    return top_up, created


def _top_up_start(top_up: TopUp, payments: PaymentProvider) -> None:
    try:
        started = payments.top_up_start(top_up)
    except ProviderError as exc:
        if exc.outcome_known:
            TopUp.objects.filter(pk=top_up.pk, status=TopUpStatus.PENDING).update(status=TopUpStatus.FAILED, updated_at=timezone.now())
        exc.extra = {"top_up": top_up.pk}
        raise
    changes: dict[str, object] = {"provider_reference": started.provider_reference, "checkout_url": started.checkout_url, "updated_at": timezone.now()}
    if started.payment_intent:
        changes["payment_intent"] = started.payment_intent
    TopUp.objects.filter(pk=top_up.pk).update(**changes)
    top_up.refresh_from_db()


@transaction.atomic
def top_up_credit(*, top_up: TopUp, confirmed_by: User | None = None, payment_intent: str = "") -> TopUp:
    """Credit the wallet with the top-up's amount: provider clearing -> available, exactly once per top-up
    (key topup:{id}:credit; the top-up row is locked, so concurrent confirmations wait and then see it
    succeeded). A failed top-up can still be credited: the provider says the money did arrive."""
    top_up = _lock(TopUp, top_up.pk)
    if top_up.status == TopUpStatus.SUCCEEDED or top_up.entry_id:
        return top_up
    if top_up.status not in (TopUpStatus.PENDING, TopUpStatus.FAILED):
        raise PaymentError(f"Top-up {top_up.pk} is {top_up.status}; it cannot be credited.", field="status")
    top_up.entry = transfer(
        source=clearing_account(top_up.provider), destination=account_for(organisation=top_up.organisation, kind=AccountKind.AVAILABLE),
        amount_fen=top_up.amount_fen, idempotency_key=f"topup:{top_up.pk}:credit", kind=EntryKind.TOP_UP,
        memo=f"top-up {top_up.pk} ({top_up.get_provider_display()})", reference=f"topup:{top_up.pk}", created_by=confirmed_by,
    )
    top_up.status = TopUpStatus.SUCCEEDED
    top_up.confirmed_by = confirmed_by
    if payment_intent and not top_up.payment_intent:
        top_up.payment_intent = payment_intent
    top_up.save(update_fields=["entry", "status", "confirmed_by", "payment_intent", "updated_at"])
    return top_up


@transaction.atomic
def top_up_fail(*, top_up: TopUp) -> TopUp:
    """The payment did not happen (checkout expired, async payment failed, operator found no transfer). Only a
    pending top-up fails; one already credited is left alone (refund it instead)."""
    top_up = _lock(TopUp, top_up.pk)
    if top_up.status == TopUpStatus.PENDING:
        top_up.status = TopUpStatus.FAILED
        top_up.save(update_fields=["status", "updated_at"])
    return top_up


def _offline_only(row: TopUp | Payout, action: str) -> None:
    if row.provider != Provider.OFFLINE:
        raise PaymentError(f"Only bank-transfer (offline) {action}; {row.get_provider_display()} reports its own outcome.", field="provider")


def top_up_confirm(*, top_up: TopUp, operator: User) -> TopUp:
    """An operator saw the bank transfer arrive: credit the wallet (idempotent)."""
    _offline_only(top_up, "top-ups are confirmed by an operator")
    return top_up_credit(top_up=top_up, confirmed_by=operator)


@transaction.atomic
def top_up_reject(*, top_up: TopUp, operator: User) -> TopUp:
    """An operator found no matching bank transfer: the top-up fails and credits nothing (idempotent)."""
    _offline_only(top_up, "top-ups are rejected by an operator")
    top_up = _lock(TopUp, top_up.pk)
    if top_up.status not in (TopUpStatus.PENDING, TopUpStatus.FAILED):
        raise PaymentError(f"Top-up {top_up.pk} is {top_up.status}; refund it instead.", field="status")
    top_up.status = TopUpStatus.FAILED
    top_up.confirmed_by = operator
    top_up.save(update_fields=["status", "confirmed_by", "updated_at"])
    return top_up


def top_up_refund(*, top_up: TopUp, idempotency_key: str, amount_fen: int | None = None, refunded_by: User | None = None) -> TopUp:
    """Return part (or by default all that is left) of a succeeded top-up to the payer, debiting the
    organisation's available balance (InsufficientFunds if it was spent). The amount is held first, the
    provider refunds, then the hold is captured into the provider's clearing account; a refused refund
    releases the hold. `refunded_fen` counts refunds in flight too, so concurrent refunds never exceed the
    top-up. Idempotent on (top-up, idempotency_key)."""
    _check_key(idempotency_key)
    if amount_fen is not None:
        _check_amount(amount_fen)
    payments = provider_get(top_up.provider)
    payments.refund_check(top_up)
    digest = key_digest(idempotency_key)
    reference = f"refund:topup:{top_up.pk}:{digest}"
    top_up, hold, done = _refund_reserve(top_up=top_up, reference=reference, amount_fen=amount_fen)
    if done:
        return top_up
    try:
        payments.refund_send(top_up, amount_fen=hold.amount_fen, key=digest)
    except ProviderError as exc:
        if exc.outcome_known:
            _refund_abandon(top_up=top_up, hold=hold)
        exc.extra = {"top_up": top_up.pk}
        raise
    return _refund_complete(top_up=top_up, hold=hold, key=f"topup:{top_up.pk}:refund:{digest}", refunded_by=refunded_by)


@transaction.atomic
def _refund_reserve(*, top_up: TopUp, reference: str, amount_fen: int | None) -> tuple[TopUp, Hold, bool]:
    top_up = _lock(TopUp, top_up.pk)
    hold = Hold.objects.filter(reference=reference).first()
    if hold is not None:  # a replay of this refund
        if amount_fen is not None and amount_fen != hold.amount_fen:
            raise IdempotencyConflict("This Idempotency-Key was already used to refund a different amount.")
        if hold.status == HoldStatus.CLOSED:
            if hold.captured_fen == hold.amount_fen:
                return top_up, hold, True
            raise PaymentError("This refund was refused by the provider; retry with a new Idempotency-Key.", status_code=409, field="idempotency_key")
        return top_up, hold, False
    if top_up.status != TopUpStatus.SUCCEEDED:
        raise PaymentError(f"Only a succeeded top-up can be refunded; top-up {top_up.pk} is {top_up.status}.", field="status")
    refundable = top_up.amount_fen - top_up.refunded_fen
    amount = refundable if amount_fen is None else amount_fen
    if amount > refundable:
        raise PaymentError(f"At most {format_cny(refundable)} CNY of this top-up can still be refunded.", field="amount")
    hold = hold_place(organisation=top_up.organisation, amount_fen=amount, reference=reference, memo=f"refund of top-up {top_up.pk}")
    top_up.refunded_fen += amount
    top_up.save(update_fields=["refunded_fen", "updated_at"])
    return top_up, hold, False


@transaction.atomic
def _refund_abandon(*, top_up: TopUp, hold: Hold) -> None:
    top_up = _lock(TopUp, top_up.pk)
    hold_release(hold=hold, idempotency_key=f"{hold.reference}:release")
    top_up.refunded_fen -= hold.amount_fen
    if top_up.status == TopUpStatus.REFUNDED:
        top_up.status = TopUpStatus.SUCCEEDED
    top_up.save(update_fields=["refunded_fen", "status", "updated_at"])


@transaction.atomic
def _refund_complete(*, top_up: TopUp, hold: Hold, key: str, refunded_by: User | None) -> TopUp:
    top_up = _lock(TopUp, top_up.pk)
    hold_capture(
        hold=hold, amount_fen=hold.amount_fen, destination=clearing_account(top_up.provider), idempotency_key=key,
        kind=EntryKind.REFUND, memo=f"refund of top-up {top_up.pk}" + (f" by {refunded_by.username}" if refunded_by else ""),
    )
    if top_up.refunded_fen >= top_up.amount_fen and top_up.status == TopUpStatus.SUCCEEDED:
        top_up.status = TopUpStatus.REFUNDED
        top_up.save(update_fields=["status", "updated_at"])
    return top_up


# --- Payouts ---------------------------------------------------------------------------------------------

def payout_request(
    *,
    organisation: Organisation,
    amount_fen: int,
    destination: str,
    idempotency_key: str,
    provider: str | None = None,
    requested_by: User | None = None,
) -> tuple[Payout, bool]:
    """Hold the amount (available -> held; InsufficientFunds writes nothing) and record the payout. Stripe
    pays at once (a Connect transfer to `destination`, a connected account id); offline payouts wait for an
    operator. Idempotent on (organisation, idempotency_key); returns (payout, created).

    The hold's reference is payout:{organisation}:{key digest}, not payout:{id}: Payout.hold is required,
    so the hold exists before the payout has an id."""
    _check_amount(amount_fen)
    _check_key(idempotency_key)
    destination = destination.strip()
    payments = provider_get(provider)
    if not destination:
        raise PaymentError("Say where to pay: a bank account, or a Stripe connected account id.", field="destination")
    if payments.name == Provider.STRIPE and not destination.startswith("acct_"):
        raise PaymentError("A Stripe payout goes to a connected account id (acct_...).", field="destination")

    def create() -> Payout:
        hold = hold_place(
            organisation=organisation, amount_fen=amount_fen, reference=f"payout:{organisation.pk}:{key_digest(idempotency_key)}",
            memo=f"payout to {destination}"[:300],
        )
        return Payout.objects.create(
            organisation=organisation, provider=payments.name, amount_fen=amount_fen, idempotency_key=idempotency_key,
            hold=hold, destination=destination, requested_by=requested_by,
        )

    payout, created = _get_or_create_once(
        find=lambda: Payout.objects.filter(organisation=organisation, idempotency_key=idempotency_key).first(),
        same=lambda p: (p.amount_fen, p.destination, p.provider) == (amount_fen, destination, payments.name),
        create=create,
    )
    if payments.pays_out_online and payout.status == PayoutStatus.REQUESTED:
        _payout_send(payout, payments)
        payout.refresh_from_db()
    return payout, created


def _payout_send(payout: Payout, payments: PaymentProvider) -> None:
    try:
        reference = payments.payout_send(payout)
    except ProviderError as exc:
        if exc.outcome_known:
            payout_fail(payout=payout, reason=str(exc))
        exc.extra = {"payout": payout.pk}
        raise
    payout_pay(payout=payout, provider_reference=reference)


@transaction.atomic
def payout_pay(*, payout: Payout, provider_reference: str = "") -> Payout:
    """The money left: capture the whole hold into the provider's clearing account (held -> clearing).
    Locks the payout; paying twice is a no-op; a failed or cancelled payout cannot be paid."""
    payout = _lock(Payout, payout.pk)
    if payout.status == PayoutStatus.PAID:
        return payout
    if payout.status != PayoutStatus.REQUESTED:
        raise PaymentError(f"Payout {payout.pk} is {payout.status}; it cannot be paid.", field="status")
    hold_capture(
        hold=payout.hold, amount_fen=payout.amount_fen, destination=clearing_account(payout.provider),
        idempotency_key=f"payout:{payout.pk}:paid", kind=EntryKind.PAYOUT, memo=f"payout {payout.pk} to {payout.destination}"[:300],
    )
    payout.status = PayoutStatus.PAID
    if provider_reference:
        payout.provider_reference = provider_reference[:255]
    payout.save(update_fields=["status", "provider_reference", "updated_at"])
    return payout


@transaction.atomic
def payout_fail(*, payout: Payout, reason: str = "", status: str = PayoutStatus.FAILED) -> Payout:
    """The payout will not happen (failed, or cancelled by the supplier): release the hold (held ->
    available). Locks the payout; repeating it is a no-op; a paid payout cannot fail this way."""
    payout = _lock(Payout, payout.pk)
    if payout.status == status:
        return payout
    if payout.status != PayoutStatus.REQUESTED:
        raise PaymentError(f"Payout {payout.pk} is {payout.status}; it cannot become {status}.", field="status")
    hold_release(hold=payout.hold, idempotency_key=f"payout:{payout.pk}:release")
    payout.status = status
    payout.failure_reason = reason[:300]
    payout.save(update_fields=["status", "failure_reason", "updated_at"])
    return payout


def payout_mark_paid(*, payout: Payout, provider_reference: str = "") -> Payout:
    """An operator sent the bank transfer."""
    _offline_only(payout, "payouts are marked paid by an operator")
    return payout_pay(payout=payout, provider_reference=provider_reference)


def payout_mark_failed(*, payout: Payout, reason: str = "") -> Payout:
    """An operator's bank transfer failed (or will not be made)."""
    _offline_only(payout, "payouts are marked failed by an operator")
    return payout_fail(payout=payout, reason=reason or "marked failed by an operator")


def payout_cancel(*, payout: Payout) -> Payout:
    """The supplier withdraws a payout an operator has not paid yet."""
    _offline_only(payout, "payouts can be cancelled")
    return payout_fail(payout=payout, reason="cancelled by the supplier", status=PayoutStatus.CANCELLED)


@transaction.atomic
def payout_reverse(*, payout: Payout, reason: str) -> Payout:
    """The provider sent a paid payout back (a reversed Stripe transfer): clearing -> available, once
    (key payout:{id}:reversed), and the payout is failed."""
    payout = _lock(Payout, payout.pk)
    if payout.status != PayoutStatus.PAID:
        return payout
    transfer(
        source=clearing_account(payout.provider), destination=account_for(organisation=payout.organisation, kind=AccountKind.AVAILABLE),
        amount_fen=payout.amount_fen, idempotency_key=f"payout:{payout.pk}:reversed", kind=EntryKind.REVERSAL,
        memo=f"payout {payout.pk} returned: {reason}"[:300], reference=payout.hold.reference,
    )
    payout.status = PayoutStatus.FAILED
    payout.failure_reason = reason[:300]
    payout.save(update_fields=["status", "failure_reason", "updated_at"])
    return payout
