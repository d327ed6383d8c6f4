"""PostgreSQL-only: concurrent webhook deliveries and retried requests credit and hold exactly once."""

import threading

import pytest
from django.db import connections
from django.test import Client

from ledger.models import Payout, ProviderEvent, TopUp, TopUpStatus
from ledger.payments import services
from ledger.selectors import balances_get
from tests.ledger.payments_helpers import cast, clearing_balance, event, fake_stripe, fund, paid_session, sign

pytestmark = pytest.mark.postgres


def _in_threads(n: int, work) -> list:
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except Exception as exc:  # reported by the assertions in the test
            results[i] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


@pytest.mark.django_db(transaction=True)
def test_concurrent_success_events_credit_a_top_up_once():
    people = cast()
    with fake_stripe():
        top_up, _ = services.top_up_create(organisation=people.buyer, amount_fen=30_000, idempotency_key="c", provider="stripe")
        session = paid_session(top_up)
        intent = {"id": "pi_test_1", "object": "payment_intent", "amount_received": 30_000, "currency": "cny",
                  "metadata": {"top_up_id": str(top_up.pk), "organisation_id": str(people.buyer.pk)}}
        # the same event delivered four times at once, plus four other events that say the same payment succeeded
        payloads = [event("checkout.session.completed", session, "evt_same")] * 4 + [
            event("checkout.session.completed", session), event("checkout.session.async_payment_succeeded", session),
            event("payment_intent.succeeded", intent), event("payment_intent.succeeded", intent),
        ]

        def deliver(i: int) -> int:
            return Client().post("/api/v1/ledger/webhooks/stripe/", data=payloads[i], content_type="application/json",
                                 HTTP_STRIPE_SIGNATURE=sign(payloads[i])).status_code

        statuses = _in_threads(len(payloads), deliver)
    assert statuses == [200] * len(payloads)
    assert ProviderEvent.objects.count() == 5
    assert TopUp.objects.get().status == TopUpStatus.SUCCEEDED
    assert balances_get(organisation=people.buyer)["available"] == 30_000
    assert clearing_balance("stripe") == -30_000


@pytest.mark.django_db(transaction=True)
def test_concurrent_retries_of_one_payout_hold_once_and_concurrent_payouts_never_overdraw():
    people = cast()
    fund(people.supplier, 10_000)
    retried = _in_threads(4, lambda i: services.payout_request(
        organisation=people.supplier, amount_fen=6_000, destination="bank", idempotency_key="same")[0].pk)
    assert len(set(retried)) == 1 and all(isinstance(pk, int) for pk in retried)
    assert balances_get(organisation=people.supplier) == {"available": 4_000, "held": 6_000, "escrow": 0, "receivable": 0}
    different = _in_threads(4, lambda i: services.payout_request(
        organisation=people.supplier, amount_fen=3_000, destination="bank", idempotency_key=f"k{i}")[0].pk)
    succeeded = [r for r in different if isinstance(r, int)]
    assert len(succeeded) == 1 and Payout.objects.count() == 2
    assert balances_get(organisation=people.supplier) == {"available": 1_000, "held": 9_000, "escrow": 0, "receivable": 0}
