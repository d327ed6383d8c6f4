"""Bank transfer (the offline provider, the default when Stripe is off): an operator confirms top-ups and
pays payouts; the ledger moves exactly once whatever is repeated."""

import pytest
from django.test import override_settings

from ledger.models import HoldStatus, JournalEntry, PayoutStatus, TopUp, TopUpStatus
from ledger.payments import services
from ledger.selectors import balances_get
from ledger.services import InsufficientFunds
from tests.ledger.payments_helpers import cast, clearing_balance, fund, ledger_snapshot

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("stripe_off")]
TOP_UPS = "/api/v1/ledger/top-ups/"
PAYOUTS = "/api/v1/ledger/payouts/"


@pytest.fixture
def stripe_off():
    with override_settings(STRIPE_SECRET_KEY=""):
        yield


@pytest.fixture
def people():
    return cast()


def wallet(available=0, held=0):
    return {"available": available, "held": held, "escrow": 0, "receivable": 0}


def test_a_declared_bank_transfer_is_credited_only_when_an_operator_confirms_it(api, people):
    # given a buyer declares a bank transfer of 2,000.00 CNY
    api.force_authenticate(people.buyer_admin)
    declared = api.post(TOP_UPS, {"amount": "2000.00", "bank_reference": "ICBC 20261129-0042"}, HTTP_IDEMPOTENCY_KEY="d-1")
    assert declared.status_code == 201, declared.json()
    body = declared.json()
    assert (body["provider"], body["status"], body["provider_reference"], body["checkout_url"]) == ("offline", "pending", "ICBC 20261129-0042", "")
    # then nothing is credited yet
    assert balances_get(organisation=people.buyer) == wallet()
    # when an operator confirms it, twice
    api.force_authenticate(people.operator)
    first = api.post(f"{TOP_UPS}{body['id']}/confirm/")
    second = api.post(f"{TOP_UPS}{body['id']}/confirm/")
    # then the wallet is credited once, from the bank clearing account
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.json()["status"] == "succeeded" and second.json() == first.json()
    assert balances_get(organisation=people.buyer) == wallet(available=200_000)
    assert clearing_balance("offline") == -200_000
    top_up = TopUp.objects.get()
    assert top_up.confirmed_by == people.operator
    assert JournalEntry.objects.filter(idempotency_key=f"topup:{top_up.pk}:credit", kind="top_up").count() == 1


def test_the_default_provider_is_offline_when_stripe_is_off_and_stripe_is_refused(api, people):
    api.force_authenticate(people.buyer_trader)
    refused = api.post(TOP_UPS, {"amount": "10", "provider": "stripe"}, HTTP_IDEMPOTENCY_KEY="s")
    assert refused.status_code == 400 and "Stripe is not configured" in refused.json()["provider"][0]
    assert not TopUp.objects.exists()
    default = api.post(TOP_UPS, {"amount": "10"}, HTTP_IDEMPOTENCY_KEY="o")
    assert default.status_code == 201 and default.json()["provider"] == "offline"


def test_a_rejected_transfer_credits_nothing_and_cannot_be_rejected_after_credit(api, people):
    top_up, _ = services.top_up_create(organisation=people.buyer, amount_fen=5_000, idempotency_key="r")
    api.force_authenticate(people.operator)
    rejected = api.post(f"{TOP_UPS}{top_up.pk}/reject/")
    assert rejected.status_code == 200 and rejected.json()["status"] == "failed"
    assert api.post(f"{TOP_UPS}{top_up.pk}/reject/").status_code == 200  # idempotent
    assert balances_get(organisation=people.buyer) == wallet()
    # an operator who later finds the transfer after all can still confirm it
    assert api.post(f"{TOP_UPS}{top_up.pk}/confirm/").json()["status"] == "succeeded"
    assert balances_get(organisation=people.buyer) == wallet(available=5_000)
    late = api.post(f"{TOP_UPS}{top_up.pk}/reject/")
    assert late.status_code == 400 and "refund it instead" in late.json()["status"][0]


def test_a_refunded_bank_top_up_debits_the_wallet(api, people):
    top_up, _ = services.top_up_create(organisation=people.buyer, amount_fen=5_000, idempotency_key="r")
    services.top_up_confirm(top_up=top_up, operator=people.operator)
    api.force_authenticate(people.operator)
    response = api.post(f"{TOP_UPS}{top_up.pk}/refund/", {"amount": "20.00"}, HTTP_IDEMPOTENCY_KEY="rf")
    assert response.status_code == 200 and response.json()["refunded"] == "20.00"
    assert balances_get(organisation=people.buyer) == wallet(available=3_000)
    assert clearing_balance("offline") == -3_000
    assert JournalEntry.objects.filter(kind="refund", reference__startswith=f"refund:topup:{top_up.pk}:").count() == 1
    # a pending top-up cannot be refunded
    pending, _ = services.top_up_create(organisation=people.buyer, amount_fen=5_000, idempotency_key="p")
    refused = api.post(f"{TOP_UPS}{pending.pk}/refund/", {}, HTTP_IDEMPOTENCY_KEY="rf2")
    assert refused.status_code == 400 and "succeeded" in refused.json()["status"][0]


def test_a_payout_request_holds_the_funds_and_paying_it_captures_them(api, people):
    # given a supplier with 1,000.00 CNY available
    fund(people.supplier, 100_000)
    api.force_authenticate(people.supplier_admin)
    # when its admin requests a payout of 400.00 CNY to its bank account
    requested = api.post(PAYOUTS, {"amount": "400", "destination": "CCB 6217 0000 1234"}, HTTP_IDEMPOTENCY_KEY="po")
    # then the amount is held, not yet gone
    assert requested.status_code == 201, requested.json()
    body = requested.json()
    assert (body["provider"], body["status"], body["amount"]) == ("offline", "requested", "400.00")
    assert balances_get(organisation=people.supplier) == wallet(available=60_000, held=40_000)
    # when an operator marks it paid, twice
    api.force_authenticate(people.operator)
    paid = api.post(f"{PAYOUTS}{body['id']}/pay/", {"reference": "CCB-OUT-77"})
    again = api.post(f"{PAYOUTS}{body['id']}/pay/")
    # then the hold was captured once into the bank clearing account
    assert paid.status_code == 200 and paid.json()["status"] == "paid" and paid.json()["provider_reference"] == "CCB-OUT-77"
    assert again.status_code == 200
    assert balances_get(organisation=people.supplier) == wallet(available=60_000)
    assert clearing_balance("offline") == -100_000 + 40_000
    # and a paid payout cannot fail any more
    assert api.post(f"{PAYOUTS}{body['id']}/fail/").status_code == 400


def test_a_failed_payout_releases_the_hold(api, people):
    fund(people.supplier, 100_000)
    payout, _ = services.payout_request(organisation=people.supplier, amount_fen=40_000, destination="bank", idempotency_key="f")
    api.force_authenticate(people.operator)
    failed = api.post(f"{PAYOUTS}{payout.pk}/fail/", {"reason": "account closed"})
    assert failed.status_code == 200 and (failed.json()["status"], failed.json()["failure_reason"]) == ("failed", "account closed")
    assert api.post(f"{PAYOUTS}{payout.pk}/fail/").status_code == 200  # idempotent
    assert balances_get(organisation=people.supplier) == wallet(available=100_000)
    payout.hold.refresh_from_db()
    assert (payout.hold.status, payout.hold.released_fen) == (HoldStatus.CLOSED, 40_000)
    assert api.post(f"{PAYOUTS}{payout.pk}/pay/").status_code == 400


def test_a_supplier_admin_can_cancel_an_unpaid_payout(api, people):
    fund(people.supplier, 10_000)
    payout, _ = services.payout_request(organisation=people.supplier, amount_fen=10_000, destination="bank", idempotency_key="c")
    api.force_authenticate(people.supplier_trader)
    assert api.post(f"{PAYOUTS}{payout.pk}/cancel/").status_code == 403
    api.force_authenticate(people.supplier_admin)
    cancelled = api.post(f"{PAYOUTS}{payout.pk}/cancel/")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert balances_get(organisation=people.supplier) == wallet(available=10_000)


def test_an_overdrawn_payout_is_refused_and_writes_nothing(api, people):
    fund(people.supplier, 10_000)
    api.force_authenticate(people.supplier_admin)
    before = ledger_snapshot()
    response = api.post(PAYOUTS, {"amount": "100.01", "destination": "bank"}, HTTP_IDEMPOTENCY_KEY="x")
    assert response.status_code == 400 and "Insufficient funds" in response.json()["amount"][0]
    assert ledger_snapshot() == before and not people.supplier.payouts.exists()
    assert balances_get(organisation=people.supplier) == wallet(available=10_000)


def test_two_payouts_cannot_spend_the_same_money(people):
    fund(people.supplier, 10_000)
    services.payout_request(organisation=people.supplier, amount_fen=7_000, destination="bank", idempotency_key="1")
    with pytest.raises(InsufficientFunds) as exc:
        services.payout_request(organisation=people.supplier, amount_fen=7_000, destination="bank", idempotency_key="2")
    assert exc.value.field == "amount"
    assert balances_get(organisation=people.supplier) == wallet(available=3_000, held=7_000)


def test_stripe_rows_are_not_confirmed_or_paid_by_hand(api, people):
    # given a Stripe top-up row (as if Stripe had been configured when it was made)
    top_up = TopUp.objects.create(organisation=people.buyer, provider="stripe", amount_fen=100, idempotency_key="s")
    api.force_authenticate(people.operator)
    response = api.post(f"{TOP_UPS}{top_up.pk}/confirm/")
    assert response.status_code == 400 and "offline" in response.json()["provider"][0]
    top_up.refresh_from_db()
    assert top_up.status == TopUpStatus.PENDING and balances_get(organisation=people.buyer) == wallet()


def test_payout_states_follow_the_hold(people):
    fund(people.supplier, 5_000)
    payout, _ = services.payout_request(organisation=people.supplier, amount_fen=5_000, destination="bank", idempotency_key="h")
    assert payout.hold.reference.startswith(f"payout:{people.supplier.pk}:") and payout.hold.amount_fen == 5_000
    payout = services.payout_mark_paid(payout=payout)
    payout.hold.refresh_from_db()
    assert payout.status == PayoutStatus.PAID and payout.hold.captured_fen == 5_000 and payout.hold.status == HoldStatus.CLOSED
