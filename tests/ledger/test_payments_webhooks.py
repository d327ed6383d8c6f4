"""Stripe webhooks, signed exactly as Stripe signs them: only verified, succeeded payments credit, and each
top-up is credited once however many events say so."""

import time

import pytest
from django.test import override_settings

from ledger.models import Payout, PayoutStatus, ProviderEvent, TopUp, TopUpStatus
from ledger.payments import services
from ledger.selectors import balances_get
from tests.ledger.payments_helpers import (
    cast,
    clearing_balance,
    event,
    fake_stripe,
    fund,
    ledger_snapshot,
    paid_session,
    post_webhook,
    sign,
)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def stripe_api():
    with fake_stripe() as fake:
        yield fake


@pytest.fixture
def people():
    return cast()


@pytest.fixture
def top_up(people, stripe_api) -> TopUp:
    top_up, _ = services.top_up_create(organisation=people.buyer, amount_fen=20_000, idempotency_key="w", provider="stripe")
    return top_up


def deliver(api, event_type: str, obj: dict, event_id: str | None = None):
    payload = event(event_type, obj, event_id)
    return post_webhook(api, payload, sign(payload))


def test_a_paid_checkout_credits_the_wallet_once(api, people, top_up):
    # when Stripe says the checkout completed and was paid
    response = deliver(api, "checkout.session.completed", paid_session(top_up), "evt_paid")
    # then the wallet has exactly the top-up, from Stripe's clearing account, and the payment intent is kept
    assert response.status_code == 200 and response.json() == {"received": True, "event": "evt_paid", "duplicate": False}
    assert balances_get(organisation=people.buyer) == {"available": 20_000, "held": 0, "escrow": 0, "receivable": 0}
    assert clearing_balance("stripe") == -20_000
    top_up.refresh_from_db()
    assert (top_up.status, top_up.payment_intent) == (TopUpStatus.SUCCEEDED, "pi_test_1")
    assert top_up.entry.idempotency_key == f"topup:{top_up.pk}:credit" and top_up.entry.kind == "top_up"
    stored = ProviderEvent.objects.get()
    assert (stored.provider, stored.event_id, stored.event_type) == ("stripe", "evt_paid", "checkout.session.completed")


def test_the_same_event_replayed_writes_nothing_more(api, people, top_up):
    payload = event("checkout.session.completed", paid_session(top_up), "evt_once")
    assert post_webhook(api, payload, sign(payload)).status_code == 200
    before = ledger_snapshot()
    replay = post_webhook(api, payload, sign(payload))
    assert replay.status_code == 200 and replay.json()["duplicate"] is True
    assert ledger_snapshot() == before
    assert balances_get(organisation=people.buyer)["available"] == 20_000


def test_every_success_event_for_one_top_up_credits_it_once(api, people, top_up):
    # given three different events that each say the same payment succeeded
    deliver(api, "checkout.session.completed", paid_session(top_up))
    deliver(api, "checkout.session.async_payment_succeeded", paid_session(top_up))
    intent = {"id": "pi_test_1", "object": "payment_intent", "amount_received": 20_000, "currency": "cny", "status": "succeeded",
              "metadata": {"top_up_id": str(top_up.pk), "organisation_id": str(people.buyer.pk)}}
    deliver(api, "payment_intent.succeeded", intent)
    # then all three are stored, and the wallet was credited once
    assert ProviderEvent.objects.count() == 3
    assert balances_get(organisation=people.buyer)["available"] == 20_000
    assert clearing_balance("stripe") == -20_000


def test_a_payment_intent_alone_finds_its_top_up_by_metadata(api, people, top_up):
    intent = {"id": "pi_9", "object": "payment_intent", "amount_received": 20_000, "currency": "cny",
              "metadata": {"top_up_id": str(top_up.pk), "organisation_id": str(people.buyer.pk)}}
    deliver(api, "payment_intent.succeeded", intent)
    top_up.refresh_from_db()
    assert (top_up.status, top_up.payment_intent) == (TopUpStatus.SUCCEEDED, "pi_9")
    assert balances_get(organisation=people.buyer)["available"] == 20_000


@pytest.mark.parametrize("session_changes", [
    {"payment_status": "unpaid"},                      # an async method: not paid yet
    {"amount_total": 19_999},                          # not what we asked for
    {"currency": "usd"},
    {"metadata": {"top_up_id": "999999", "organisation_id": "1"}},  # no such top-up
])
def test_a_completed_checkout_that_is_not_a_matching_payment_credits_nothing(api, people, top_up, session_changes):
    response = deliver(api, "checkout.session.completed", {**paid_session(top_up), **session_changes})
    assert response.status_code == 200
    assert ProviderEvent.objects.count() == 1
    assert balances_get(organisation=people.buyer)["available"] == 0
    top_up.refresh_from_db()
    assert top_up.status == TopUpStatus.PENDING and top_up.entry is None


def test_an_async_payment_that_completes_later_credits_then(api, people, top_up):
    deliver(api, "checkout.session.completed", paid_session(top_up, payment_status="unpaid", intent="pi_async"))
    top_up.refresh_from_db()
    assert (top_up.status, top_up.payment_intent) == (TopUpStatus.PENDING, "pi_async")
    deliver(api, "checkout.session.async_payment_succeeded", paid_session(top_up, intent="pi_async"))
    assert balances_get(organisation=people.buyer)["available"] == 20_000


@pytest.mark.parametrize("event_type", ["checkout.session.expired", "checkout.session.async_payment_failed"])
def test_an_expired_or_failed_checkout_fails_the_top_up(api, people, top_up, event_type):
    deliver(api, event_type, {**paid_session(top_up), "status": "expired", "payment_status": "unpaid"})
    top_up.refresh_from_db()
    assert top_up.status == TopUpStatus.FAILED
    assert balances_get(organisation=people.buyer)["available"] == 0


def test_a_late_failure_never_undoes_a_credit(api, people, top_up):
    deliver(api, "checkout.session.completed", paid_session(top_up))
    deliver(api, "checkout.session.async_payment_failed", paid_session(top_up))
    top_up.refresh_from_db()
    assert top_up.status == TopUpStatus.SUCCEEDED
    assert balances_get(organisation=people.buyer)["available"] == 20_000


def test_unknown_event_types_are_stored_and_acknowledged(api, people):
    response = deliver(api, "customer.created", {"id": "cus_1", "object": "customer"}, "evt_other")
    assert response.status_code == 200
    assert ProviderEvent.objects.get().event_type == "customer.created"


@pytest.mark.parametrize("tamper", ["payload", "wrong_secret", "stale", "future", "missing", "garbage", "no_v1"])
def test_unverified_deliveries_are_refused_and_write_nothing(api, people, top_up, tamper):
    payload = event("checkout.session.completed", paid_session(top_up))
    now = int(time.time())
    signature = {
        "payload": sign(payload),
        "wrong_secret": sign(payload, secret="whsec_someone_else"),
        "stale": sign(payload, timestamp=now - 301),
        "future": sign(payload, timestamp=now + 3600),
        "missing": None,
        "garbage": "nonsense",
        "no_v1": f"t={now},v0=abc",
    }[tamper]
    if tamper == "payload":
        payload = payload.replace('"amount_total": 20000', '"amount_total": 2000000')
    before = ledger_snapshot()
    response = post_webhook(api, payload, signature)
    assert response.status_code == 400
    assert "Stripe-Signature" in response.json()["detail"]
    assert ledger_snapshot() == before
    assert balances_get(organisation=people.buyer)["available"] == 0


def test_a_signature_within_tolerance_is_accepted(api, people, top_up):
    payload = event("checkout.session.completed", paid_session(top_up))
    response = post_webhook(api, payload, sign(payload, timestamp=int(time.time()) - 250))
    assert response.status_code == 200
    assert balances_get(organisation=people.buyer)["available"] == 20_000


def test_webhooks_are_refused_when_no_secret_is_configured(api, people, top_up):
    payload = event("checkout.session.completed", paid_session(top_up))
    with override_settings(STRIPE_WEBHOOK_SECRET=""):
        response = post_webhook(api, payload, sign(payload))
    assert response.status_code == 400 and "STRIPE_WEBHOOK_SECRET" in response.json()["detail"]
    assert ProviderEvent.objects.count() == 0


def test_a_signed_body_that_is_not_an_event_is_refused(api):
    payload = '{"hello": "world"}'
    response = post_webhook(api, payload, sign(payload))
    assert response.status_code == 400 and ProviderEvent.objects.count() == 0


def test_only_post_is_accepted(api):
    assert api.get("/api/v1/ledger/webhooks/stripe/").status_code == 405


def test_a_reversed_transfer_returns_a_paid_payout_to_the_wallet(api, people, stripe_api):
    # given a paid Stripe payout of 300.00 CNY from 800.00 CNY
    fund(people.supplier, 80_000)
    payout, _ = services.payout_request(organisation=people.supplier, amount_fen=30_000, destination="acct_1",
                                        idempotency_key="p", provider="stripe")
    assert payout.status == PayoutStatus.PAID
    transfer = {"id": payout.provider_reference, "object": "transfer", "amount": 30_000, "amount_reversed": 30_000,
                "reversed": True, "currency": "cny", "metadata": {"payout_id": str(payout.pk)}}
    # when Stripe reports the transfer reversed, twice under different event ids
    deliver(api, "transfer.reversed", transfer)
    deliver(api, "transfer.reversed", transfer)
    # then the money is back once and the payout is failed
    payout = Payout.objects.get()
    assert payout.status == PayoutStatus.FAILED and "reversed" in payout.failure_reason
    assert balances_get(organisation=people.supplier) == {"available": 80_000, "held": 0, "escrow": 0, "receivable": 0}
    assert clearing_balance("stripe") == 0
